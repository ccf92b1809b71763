"""Training data from Prometheus: one PromQL query per feature, ``query_range`` over a
lookback window at a fixed step, aligned onto one time grid in schema order.

Each query must yield exactly one series (aggregate with sum/avg/max ... by nothing). A
query with no data, several series, NaN/Inf samples, or more missing steps than allowed is
a DataError naming the feature, the query and the first bad timestamp.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError
from .redact import redact
from .schema import TIMESTAMP_COLUMN, FeatureSchema

log = logging.getLogger(__name__)

MAX_POINTS = 11_000  # Prometheus refuses more points per series in one query_range
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    match = _DURATION.match(str(text).strip())
    if not match:
        raise ConfigError(f"durations look like 60s, 5m, 6h, 7d; got {text!r}")
    return int(match.group(1)) * _SECONDS[match.group(2)]


def load_queries(path: str | Path) -> dict[str, str]:
    """A YAML/JSON mapping ``feature: PromQL``, in schema order."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"query file not found: {path}") from exc
    queries = data.get("queries", data) if isinstance(data, dict) else None
    if not isinstance(queries, dict) or not queries or not all(isinstance(v, str) for v in queries.values()):
        raise ConfigError(f"{path} must map each feature name to one PromQL string (optionally under 'queries:')")
    return {str(k): v for k, v in queries.items()}


class PrometheusClient:
    """``query_range`` with a bearer token and one-line errors."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 60.0):
        import requests

        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def range(self, promql: str, start: int, end: int, step_s: int, what: str) -> list[dict]:
        """Every series the query returns (``metric`` labels and ``values``)."""
        import requests

        try:
            response = self.session.get(f"{self.url}/api/v1/query_range", timeout=self.timeout_s,
                                        params={"query": promql, "start": start, "end": end, "step": step_s})
        except requests.RequestException as exc:
            raise DataError(f"cannot reach Prometheus at {redact(self.url)}: {redact(str(exc))}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or body.get("status") != "success":
            raise DataError(f"Prometheus refused the query for {what} ({response.status_code} "
                            f"{body.get('errorType', '')}: {body.get('error', response.text[:200])}): {promql}")
        series = body["data"]["result"]
        if not series:
            raise DataError(f"the query for {what} returned no data between {_iso(start)} and {_iso(end)}: {promql}")
        return series


def time_grid(lookback_s: int, step_s: int, end: float | None) -> np.ndarray:
    """Step-aligned Unix times ending at ``end`` (default now), checked against Prometheus' limits."""
    if step_s <= 0 or lookback_s < step_s:
        raise ConfigError(f"need step > 0 and lookback >= step, got step {step_s}s and lookback {lookback_s}s")
    points = lookback_s // step_s + 1
    if points > MAX_POINTS:
        raise ConfigError(f"{points} points per series exceed Prometheus' limit of {MAX_POINTS}; raise the step")
    end = math.floor((end if end is not None else time.time()) / step_s) * step_s
    return end - step_s * np.arange(points - 1, -1, -1, dtype=np.int64)


def fetch_range(
    url: str,
    queries: dict[str, str],
    *,
    lookback_s: int,
    step_s: int = 60,
    end: float | None = None,
    max_gap_steps: int = 0,
    token: str | None = None,
    timeout_s: float = 60.0,
) -> pd.DataFrame:
    """A frame with ``timestamp`` and one column per feature, one row per step."""
    FeatureSchema(tuple(queries))  # validates the names
    grid = time_grid(lookback_s, step_s, end)
    client = PrometheusClient(url, token, timeout_s)
    columns = {}
    for feature, promql in queries.items():
        series = client.range(promql, int(grid[0]), int(grid[-1]), step_s, repr(feature))
        if len(series) > 1:
            labels = [s.get("metric", {}) for s in series[:3]]
            raise DataError(f"the query for {feature!r} returned {len(series)} series (e.g. {labels}); "
                            f"aggregate it to one, e.g. avg(...) or sum(...): {promql}")
        columns[feature] = _align(feature, promql, series[0]["values"], grid, step_s, max_gap_steps)
        log.info("prometheus: %s: %d points", feature, len(grid))
    frame = pd.DataFrame(columns)
    frame.insert(0, TIMESTAMP_COLUMN, pd.to_datetime(grid, unit="s", utc=True))
    return frame


def _align(feature, promql, values, grid, step_s, max_gap_steps) -> np.ndarray:
    stamps = np.array([int(round(float(t))) for t, _ in values], dtype=np.int64)
    samples = np.array([float(v) for _, v in values], dtype=np.float64)  # "NaN", "+Inf" parse too
    bad = ~np.isfinite(samples)
    if bad.any():
        raise DataError(f"the query for {feature!r} returned {int(bad.sum())} NaN/Inf samples, first at "
                        f"{_iso(stamps[bad][0])}: {promql}")
    series = pd.Series(samples, index=stamps).reindex(grid)
    missing = series.isna().to_numpy()
    if missing.any():
        runs = _longest_run(missing)
        if runs > max_gap_steps:
            raise DataError(f"the query for {feature!r} has {int(missing.sum())} missing steps of {len(grid)} "
                            f"(longest gap {runs} steps of {step_s}s, first at {_iso(grid[missing][0])}); "
                            f"allowed gap: {max_gap_steps} steps: {promql}")
        series = series.ffill().bfill()
    return series.to_numpy()


def _longest_run(mask: np.ndarray) -> int:
    longest = current = 0
    for value in mask:
        current = current + 1 if value else 0
        longest = max(longest, current)
    return longest


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(epoch)))
