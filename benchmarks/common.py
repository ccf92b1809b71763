"""Helpers shared by the benchmark scripts."""

import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def percentiles(samples_ms) -> str:
    a = np.asarray(samples_ms)
    return f"p50 {np.percentile(a, 50):8.3f}  p95 {np.percentile(a, 95):8.3f}  p99 {np.percentile(a, 99):8.3f} ms"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train_default_model(rows: int = 20_160, seed: int = 42, params=None) -> Path:
    """The default model (100 trees; or ``params``' TrainParams) on synthetic data, in a temporary directory."""
    from anomaly_mlops.steps.data import prepare_data
    from anomaly_mlops.steps.train import train

    root = Path(tempfile.mkdtemp(prefix="anomaly-bench-"))
    prepared = prepare_data(root / "data", rows=rows, seed=seed)
    return train(str(prepared.train_path), root / "model", params).model_dir, prepared


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
