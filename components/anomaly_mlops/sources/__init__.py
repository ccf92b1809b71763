"""Where training rows come from: files (local or s3://), the synthetic generator, Prometheus, the Self-Healing Platform's engine features."""
