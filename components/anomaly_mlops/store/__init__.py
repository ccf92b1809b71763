"""Where models are kept: S3 settings from the data connection, and the immutable release protocol (S3 or a mounted PVC)."""
