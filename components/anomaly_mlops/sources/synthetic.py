"""The synthetic generator: node metrics at one row a minute with daily and weekly
seasonality and labelled injected anomalies of six kinds, deterministic by seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from anomaly_mlops.errors import DataError
from anomaly_mlops.model.schema import ANOMALY_KIND_COLUMN, LABEL_COLUMN, TIMESTAMP_COLUMN

ANOMALY_KINDS = ("spike", "dip", "level_shift", "slow_leak", "stuck", "contention")


def daily_load(minutes: int) -> np.ndarray:
    """0-1 load, one value a minute: busy in the afternoon, quiet at night; weekends quieter."""
    t = np.arange(minutes)
    return 0.5 * (1 - np.cos(2 * np.pi * (t % 1440) / 1440 - np.pi / 6)) * np.where((t // 1440) % 7 >= 5, 0.7, 1.0)


def generate_synthetic(
    rows: int = 20_160,
    seed: int = 42,
    anomaly_rate: float = 0.03,
    start: str = "2026-01-05T00:00:00Z",
) -> pd.DataFrame:
    """Node metrics at one row a minute with daily seasonality and labelled anomalies.

    Anomalies are events of several minutes of one of ANOMALY_KINDS, placed without
    overlap until about ``anomaly_rate`` of the rows are labelled. Same seed, same frame.
    """
    if rows < 60:
        raise DataError(f"synthetic data needs at least 60 rows, got {rows}")
    if not 0.0 <= anomaly_rate < 0.5:
        raise DataError(f"anomaly_rate must be in [0, 0.5), got {anomaly_rate}")
    rng = np.random.default_rng(seed)
    load = daily_load(rows)

    cpu = 20 + 45 * load + rng.normal(0, 3.0, rows)
    memory = 50 + 12 * load + np.cumsum(rng.normal(0, 0.05, rows)).clip(-5, 5) + rng.normal(0, 1.0, rows)
    disk = 15 + 25 * load + rng.gamma(2.0, 2.0, rows)
    rx = 40 + 80 * load + 0.5 * (cpu - 40) + rng.normal(0, 5.0, rows)
    tx = 0.6 * rx + rng.normal(0, 3.0, rows)
    restarts = rng.poisson(0.005, rows).astype(float)
    frame = {
        "cpu_usage_pct": cpu,
        "memory_usage_pct": memory,
        "disk_io_mbps": disk,
        "network_rx_mbps": rx,
        "network_tx_mbps": tx,
        "restart_count": restarts,
    }
    labels = np.zeros(rows, dtype=np.int8)
    kinds = np.full(rows, "", dtype=object)

    target = int(anomaly_rate * rows)
    attempts = 0
    while labels.sum() < target and attempts < 10_000:
        attempts += 1
        kind = ANOMALY_KINDS[rng.integers(len(ANOMALY_KINDS))]
        length = {
            "spike": rng.integers(1, 6),
            "dip": rng.integers(5, 16),
            "level_shift": rng.integers(30, 91),
            "slow_leak": rng.integers(60, 181),
            "stuck": rng.integers(30, 61),
            "contention": rng.integers(10, 31),
        }[kind]
        length = int(min(length, max(1, target - labels.sum()) + 5, rows // 10))
        begin = int(rng.integers(0, rows - length))
        window = slice(begin, begin + length)
        # Keep one normal minute on each side so events stay distinct.
        if labels[max(0, begin - 1) : begin + length + 1].any():
            continue
        _inject(frame, kind, window, length, rng)
        labels[window] = 1
        kinds[window] = kind

    for name in ("cpu_usage_pct", "memory_usage_pct"):
        frame[name] = np.clip(frame[name], 0, 100)
    for name in ("disk_io_mbps", "network_rx_mbps", "network_tx_mbps", "restart_count"):
        frame[name] = np.clip(frame[name], 0, None)

    df = pd.DataFrame(frame)
    df.insert(0, TIMESTAMP_COLUMN, pd.date_range(start=start, periods=rows, freq="min"))
    df[LABEL_COLUMN] = labels
    df[ANOMALY_KIND_COLUMN] = kinds.astype(str)
    return df


def _inject(frame: dict, kind: str, window: slice, length: int, rng: np.random.Generator) -> None:
    if kind == "spike":
        name = ("cpu_usage_pct", "disk_io_mbps", "network_rx_mbps")[rng.integers(3)]
        frame[name][window] += rng.uniform(3, 6) * frame[name].std()
    elif kind == "dip":
        frame["network_rx_mbps"][window] *= rng.uniform(0.0, 0.1)
        frame["network_tx_mbps"][window] *= rng.uniform(0.0, 0.1)
        frame["cpu_usage_pct"][window] *= 0.3
    elif kind == "level_shift":
        frame["memory_usage_pct"][window] += rng.uniform(15, 30)
    elif kind == "slow_leak":
        frame["memory_usage_pct"][window] += np.linspace(0, rng.uniform(25, 40), length)
    elif kind == "stuck":
        name = ("cpu_usage_pct", "network_rx_mbps")[rng.integers(2)]
        frame[name][window] = frame[name][window.start]
        # A stuck exporter also reports zero traffic on its twin metric.
        frame["network_tx_mbps"][window] = 0.0
    elif kind == "contention":
        frame["cpu_usage_pct"][window] += rng.uniform(30, 50)
        frame["disk_io_mbps"][window] += rng.uniform(40, 80)
        frame["network_rx_mbps"][window] *= 0.5
        frame["restart_count"][window] += rng.poisson(1.0, length)
    else:  # pragma: no cover - ANOMALY_KINDS is closed
        raise ValueError(kind)


# --------------------------------------------------------------------------- loading
