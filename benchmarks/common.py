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


def shared_options(default_seeds: str = "42,7,1") -> tuple[Path, list[int]]:
    """The command line of the scripts that score the shared labelled data (--data-dir,
    --seeds): (the data directory, the forest seeds)."""
    import argparse
    import logging

    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--seeds", default=default_seeds)
    opts = parser.parse_args()
    logging.disable(logging.WARNING)
    return Path(opts.data_dir), [int(s) for s in opts.seeds.split(",")]


def shared_series(default_seeds: str = "42,7,1") -> tuple[list, list[int]]:
    """Every shared SMD machine and NAB series as evaluate loads them, and the forest seeds
    (shared_options)."""
    from anomaly_mlops.steps.evaluate import _load

    data_dir, seeds = shared_options(default_seeds)
    return _load(data_dir, ("smd", "nab"), 0), seeds


def versus_static(results: dict, name: str, keys: list) -> tuple[dict, str]:
    """One rule's seed means per series (``results[name][series]``: per seed, F1 first) and
    the cells a comparison table starts with: the rule, its mean F1, its worst series, and
    the series it loses on against ``results["static"]``."""
    means = {k: np.mean(results[name][k], axis=0) for k in keys}
    static = {k: np.mean(results["static"][k], axis=0) for k in keys}
    f1 = np.array([means[k][0] for k in keys])
    lost = "-" if name == "static" else sum(means[k][0] < static[k][0] - 1e-9 for k in keys)
    return means, f"| {name} | {f1.mean():.3f} | {f1.min():.3f} ({keys[int(np.argmin(f1))][1]}) | {lost} |"


def print_per_series(results: dict, keys: list) -> None:
    """A Markdown table of each series' seed-mean F1 (flagged share) under every rule of
    ``results`` (``results[rule][series]``: per seed, F1 and flagged share first)."""
    print("| machine | " + " | ".join(results) + " |")
    print("|---" * (len(results) + 1) + "|")
    for k in keys:
        cells = [np.mean(results[rule][k], axis=0) for rule in results]
        print(f"| {k[1]} | " + " | ".join(f"{c[0]:.3f} ({c[1]:.0%})" for c in cells) + " |")
    print()
