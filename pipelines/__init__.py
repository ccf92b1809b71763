"""KFP pipeline definitions; compiled IR lives in pipelines/compiled/ (``anomaly-mlops compile``)."""
