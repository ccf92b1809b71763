"""anomaly-mlops: the steps that keep the isolation-forest anomaly detector trained,
validated, published and served. Each step is a plain function here, reached also
through the CLI (``anomaly-mlops STEP``) and a thin KFP component."""

__version__ = "0.1.0"
