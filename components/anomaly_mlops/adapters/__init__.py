"""Entry points that call the steps: the CLI, the KFP components, pipeline submission, the local run."""
