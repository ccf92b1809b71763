"""The pipeline steps, one module each, plain functions: data, train, validate, evaluate, publish (store.releases), deploy, verify."""
