"""What training and serving share: the feature schema, features, the forest walk, artifacts, drift checks. Imports nothing above it."""
