#!/usr/bin/env bash
# On a GPU node: the validate step as the training pipeline runs it there (synthetic data,
# default model), the parity tests of the torch path on CUDA, and the GPU batch benchmark.
# Usage: benchmarks/gpu_node.sh OUT_DIR (metrics.json and report.html land in OUT_DIR/validate).
# Needs the package importable by $PYTHON (default python3): pip install -e '.[dev,gpu]', or
# PYTHONPATH=components where the dependencies and torch are already installed.
set -euo pipefail
out=${1:?usage: benchmarks/gpu_node.sh OUT_DIR}
py=${PYTHON:-python3}
work=$(mktemp -d)
mkdir -p "$out"
nvidia-smi -L || echo "nvidia-smi: not found"
"$py" -m anomaly_mlops.adapters.cli data --out "$work/data"
"$py" -m anomaly_mlops.adapters.cli train --data "$work/data/train.parquet" --out "$work/model"
"$py" -m anomaly_mlops.adapters.cli validate --model "$work/model" --holdout "$work/data/holdout.parquet" \
    --out "$out/validate"
"$py" -m pytest -q -p no:cacheprovider -rs tests/test_fastforest.py -k gpu
"$py" benchmarks/gpu_path.py
