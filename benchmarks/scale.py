"""Training and validation at scale: 1M rows x 16 metrics (or the 6 default ones) through the
CLI steps (as containers run them), with wall time and peak memory of each step's process,
and beside train the reference it is held to: a plain StandardScaler + IsolationForest fit of
the same training rows (benchmarks/plain_fit.py), with scikit-learn's default trees and with
train's tree size.
Usage: .venv/bin/python benchmarks/scale.py [--rows 1000000] [--metrics 16|6]"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from anomaly_mlops.model.schema import DEFAULT_FEATURES
from anomaly_mlops.sources.synthetic import generate_synthetic


def sixteen_metrics(rows: int, seed: int):
    """The 6 synthetic node metrics plus 10 more per-node signals derived from them
    (smoothed, lagged, ratios, noisy siblings), so the forest sees 16 correlated metrics."""
    frame = generate_synthetic(rows=rows, seed=seed)
    rng = np.random.default_rng(seed)
    base = frame[list(DEFAULT_FEATURES)]
    extra = {
        "cpu_rolling_15m": base.cpu_usage_pct.rolling(15, min_periods=1).mean(),
        "memory_rolling_60m": base.memory_usage_pct.rolling(60, min_periods=1).mean(),
        "disk_io_lag_5m": base.disk_io_mbps.shift(5).bfill(),
        "rx_tx_ratio": base.network_rx_mbps / (base.network_tx_mbps + 1.0),
        "load_1m": base.cpu_usage_pct / 25 + rng.normal(0, 0.2, rows),
        "load_5m": (base.cpu_usage_pct / 25).rolling(5, min_periods=1).mean(),
        "open_files": 2000 + 30 * base.network_rx_mbps + rng.normal(0, 100, rows),
        "threads": 400 + 3 * base.cpu_usage_pct + rng.normal(0, 10, rows),
        "gc_pause_ms": rng.gamma(2, 3, rows) + base.memory_usage_pct / 10,
        "http_5xx_rate": rng.poisson(0.2, rows) + 5 * (frame.anomaly_kind == "contention"),
    }
    for name, values in extra.items():
        frame[name] = np.asarray(values, dtype=np.float64)
    return frame, [*DEFAULT_FEATURES, *extra]


def run_step(args, log):
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "anomaly_mlops.adapters.cli", *args], stdout=subprocess.PIPE, stderr=log, text=True
    )
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{args[0]} failed with {process.returncode}; see {log.name}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, json.loads(out)


HERE = Path(__file__).parent


def run_script(args, log):
    """Wall seconds and peak RSS (MiB) of a Python script in its own process."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.DEVNULL, stderr=log)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{args[0]} failed; see {log.name}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--metrics", type=int, choices=(6, 16), default=16)
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="anomaly-scale-"))
    start = time.perf_counter()
    frame, features = sixteen_metrics(opts.rows, seed=1)
    if opts.metrics == 6:
        features = list(DEFAULT_FEATURES)
        frame = frame[["timestamp", *features, "is_anomaly"]]
    source = root / "metrics.parquet"
    frame.to_parquet(source, index=False)
    print(
        f"generated {opts.rows} rows x {len(features)} metrics in {time.perf_counter() - start:.1f}s "
        f"({source.stat().st_size / 1e6:.0f} MB Parquet)"
    )
    with open(root / "steps.log", "w") as log:
        steps = [
            ("data", ["data", "--source", str(source), "--out", str(root / "data"), "--features", ",".join(features)]),
            (
                "train",
                [
                    "train",
                    "--data",
                    str(root / "data/train.parquet"),
                    "--out",
                    str(root / "model"),
                    "--features",
                    ",".join(features),
                ],
            ),
            (
                "validate",
                [
                    "validate",
                    "--model",
                    str(root / "model"),
                    "--holdout",
                    str(root / "data/holdout.parquet"),
                    "--out",
                    str(root / "validation"),
                    "--no-fail-on-gate",
                ],
            ),
        ]
        print(f"{'step':40s} {'wall s':>8s} {'peak RSS MiB':>13s}")
        for name, args in steps:
            seconds, rss, result = run_step(args, log)
            print(f"{name:40s} {seconds:8.1f} {rss:13.0f}")
            if name == "train":
                tree_rows = json.loads((root / "model/metadata.json").read_text())["params"]["max_samples"]
                for label, size in (("plain fit, scikit-learn's default trees", "auto"),
                                    (f"plain fit, train's trees ({tree_rows} rows)", str(tree_rows))):  # fmt: skip
                    seconds, rss = run_script([HERE / "plain_fit.py", root / "data/train.parquet", ",".join(features),
                                               size], log)  # fmt: skip
                    print(f"{label:40s} {seconds:8.1f} {rss:13.0f}")
        print(f"\nvalidate: ROC-AUC {result['roc_auc']}, PR-AUC {result['pr_auc']}, F1 {result['f1']}")
    metrics = json.loads((root / "validation/metrics.json").read_text())["metrics"]
    print(
        f"single-row p99 {metrics['latency']['single_row_ms']['p99']} ms; "
        f"batch 1000 {metrics['latency']['batches']['1000']['rows_per_second']:.0f} rows/s"
    )
    print(f"artifacts in {root}")


if __name__ == "__main__":
    main()
