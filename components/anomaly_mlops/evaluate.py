"""Detection quality on real labelled server metrics (../shared/data): SMD machines and
NAB series. The detector is fitted on training data only, the threshold is the training
score quantile (as in train), labels only measure; no point adjustment.

Feature sets:
  raw  the metrics as they are
  ts   per metric, causal (past-only) time-series features: the value, its change from the
       previous row, its deviation from the rolling mean, and the rolling standard deviation
       over ``window`` rows — cheap to keep up to date per row at serving time
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .features import FeatureTransform
from .train import TrainParams, fit_detector

log = logging.getLogger(__name__)

NAB_TRAIN_FRACTION = 0.15  # NAB's probationary period: the detector may learn from it


@dataclass
class SeriesResult:
    dataset: str
    series: str
    roc_auc: float
    pr_auc: float
    precision: float
    recall: float
    f1: float
    test_rows: int
    anomalies: int


def load_smd(root: Path):
    """(name, train X, test X, test labels) per machine."""
    smd = root / "smd"
    machines = sorted(p.name.removesuffix(".txt.gz") for p in (smd / "test").glob("*.txt.gz"))
    if not machines:
        raise DataError(f"no SMD machines under {smd}/test")
    for machine in machines:

        def read(part, machine=machine):
            with gzip.open(smd / part / f"{machine}.txt.gz", "rt") as handle:
                return np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)

        labels = np.loadtxt(smd / "test_label" / f"{machine}.txt", dtype=np.int8)
        yield machine, read("train"), read("test"), labels


def load_nab(root: Path):
    """(name, train X, test X, test labels) per NAB series: the probationary first 15% trains."""
    nab = root / "nab"
    windows = json.loads((nab / "labels" / "combined_windows.json").read_text())
    for path in sorted(nab.glob("real*/*.csv")):
        key = f"{path.parent.name}/{path.name}"
        if key not in windows:
            continue
        frame = pd.read_csv(path, parse_dates=["timestamp"])
        labels = np.zeros(len(frame), dtype=np.int8)
        for start, end in windows[key]:
            labels[(frame.timestamp >= pd.Timestamp(start)) & (frame.timestamp <= pd.Timestamp(end))] = 1
        cut = int(len(frame) * NAB_TRAIN_FRACTION)
        X = frame[["value"]].to_numpy(dtype=np.float64)
        yield key.removesuffix(".csv"), X[:cut], X[cut:], labels[cut:]


def time_features(X: np.ndarray, window: int = 30) -> np.ndarray:
    """Causal per-metric features (features.py: the code train and the predictor use)."""
    return FeatureTransform(window).apply(X)


def evaluate_series(
    train: np.ndarray, test: np.ndarray, labels: np.ndarray, features: str, params: TrainParams, window: int = 30
) -> dict:
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    if features == "ts":
        # Features over the joined sequence so the first test rows see their history.
        both = time_features(np.vstack([train, test]), window)
        train, test = both[: len(train)], both[len(train) :]
    pipeline, threshold, _ = fit_detector(train, params)
    scores = -pipeline.score_samples(test)
    flagged = scores > threshold
    precision, recall, f1, _ = precision_recall_fscore_support(labels, flagged, average="binary", zero_division=0)
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "pr_auc": float(average_precision_score(labels, scores)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def evaluate(
    data_dir: str | Path,
    datasets=("smd", "nab"),
    features: str = "raw",
    params: TrainParams | None = None,
    window: int = 30,
) -> dict:
    params = params or TrainParams()
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"labelled data not found at {root} (expected smd/ and nab/ as in ../shared/data)")
    loaders = {"smd": load_smd, "nab": load_nab}
    results: list[SeriesResult] = []
    for dataset in datasets:
        for name, train, test, labels in loaders[dataset](root):
            if labels.sum() == 0 or labels.sum() == len(labels):
                log.warning("skipping %s: its test part has one class only", name)
                continue
            m = evaluate_series(train, test, labels, features, params, window)
            results.append(
                SeriesResult(
                    dataset,
                    name,
                    **{k: round(v, 4) for k, v in m.items()},
                    test_rows=len(test),
                    anomalies=int(labels.sum()),
                )
            )
            log.info("%s %-55s ROC-AUC %.3f PR-AUC %.3f F1 %.3f", dataset, name, m["roc_auc"], m["pr_auc"], m["f1"])
    means = {}
    for dataset in datasets:
        rows = [r for r in results if r.dataset == dataset]
        if rows:
            means[dataset] = {
                k: round(float(np.mean([getattr(r, k) for r in rows])), 4) for k in ("roc_auc", "pr_auc", "f1")
            } | {"series": len(rows)}
    return {
        "features": features,
        "window": window,
        "params": asdict(params),
        "mean": means,
        "series": [asdict(r) for r in results],
    }
