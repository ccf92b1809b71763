"""The Self-Healing Platform's contract: its 45-feature schema, built the way its
coordination engine builds each request, from the engine's own PromQL.

For each base metric (in this order) the engine sends 9 statistics (in this order), named
``<metric>_<stat>``, metric-major:

    value     q at t
    mean_5m   avg_over_time((q)[5m:])      std_5m  stddev_over_time((q)[5m:])  (population)
    min_5m    min_over_time((q)[5m:])      max_5m  max_over_time((q)[5m:])
    lag_1     q one minute earlier         lag_5   q five minutes earlier
              (the design writes ``(q) offset 1m``, which PromQL refuses on an aggregation;
              asked as ``last_over_time((q)[1m:] offset 1m)``)
    diff      value - lag_1                pct_change  (value - lag_1) / lag_1, 0 when lag_1 is 0

What the engine really sends differs (KubeHeal/openshift-coordination-engine@afb58056
pkg/api/v1/anomaly.go l.326-330, 356-357, 400-410, 472-487): Prometheus refuses its lag
queries, so lag_1 = lag_5 = value and diff = pct_change = 0 for every metric; a request scoped
by namespace/pod/deployment gets no node data and sends ENGINE_DEFAULT_FRAGMENT for both node
metrics; with Prometheus down the whole row is that fragment five times. ``engine_view`` turns
training or holdout rows into what the engine sends (the default for this schema's models;
``fixed_engine`` keeps the computed features), and ``EngineDefaultRows`` spots the all-default
row at serving time, which carries no information and is answered normal.

Two ways to the same numbers:
- ``fetch_platform_frame`` asks Prometheus for exactly the engine's expressions (the 7
  queried statistics of each metric; diff and pct_change are computed as the engine does),
  one entity per pod for the ``by (pod)`` metrics;
- ``engine_features`` computes them from a one-minute series of q, for the synthetic
  generator. Its window is the subquery's at a 1-minute resolution on Prometheus 2.x:
  t-5m..t, both ends included (6 samples); tests/test_self_healing.py checks it against a
  real Prometheus. (Prometheus 3 makes ranges left-open: 5 samples.)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from anomaly_mlops.errors import DataError
from anomaly_mlops.model.platform import (
    BASE_METRICS,
    FEATURES,
    NODE_COLUMNS,
    NODE_DEFAULTS,
    NODE_METRICS,
    SCHEMA_NAME,
    engine_lag_fallback,
)
from anomaly_mlops.model.schema import ENTITY_COLUMN, LABEL_COLUMN, TIMESTAMP_COLUMN

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# The engine's PromQL for q (DESIGN.md); units: ratios 0-1, CPU cores, a cumulative counter.
ENGINE_QUERIES = {
    "node_cpu_utilization": 'avg(1 - rate(node_cpu_seconds_total{mode="idle"}[5m]))',
    "node_memory_utilization": "1 - (node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes)",
    "pod_cpu_usage": 'sum(rate(container_cpu_usage_seconds_total{container!=""}[5m])) by (pod)',
    "pod_memory_usage": 'sum(container_memory_working_set_bytes{container!=""}) by (pod) '
    '/ sum(kube_pod_container_resource_limits{resource="memory"}) by (pod)',
    "container_restart_count": "sum(kube_pod_container_status_restarts_total{}) by (pod)",
}
SCOPED_ENTITY_SUFFIX = "@scoped"  # training copies of rows as a scoped request sends them
WINDOW_SAMPLES = 6  # [5m:] at 1-minute resolution, both ends included (Prometheus 2.x)
HISTORY_MINUTES = 5  # lag_5 needs five earlier minutes


def stat_queries(metric: str) -> dict[str, str]:
    """The engine's expression for each queried statistic of one base metric."""
    q = ENGINE_QUERIES[metric]
    return {
        "value": q,
        "mean_5m": f"avg_over_time(({q})[5m:])",
        "std_5m": f"stddev_over_time(({q})[5m:])",
        "min_5m": f"min_over_time(({q})[5m:])",
        "max_5m": f"max_over_time(({q})[5m:])",
        # PromQL refuses `(q) offset 1m` on an aggregation; q one minute earlier is the last
        # point of q's 1-minute subquery shifted by 1m.
        "lag_1": f"last_over_time(({q})[1m:] offset 1m)",
        "lag_5": f"last_over_time(({q})[1m:] offset 5m)",
    }


def derived(value: np.ndarray, lag_1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """diff and pct_change exactly as the engine computes them."""
    diff = value - lag_1
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(lag_1 == 0, 0.0, diff / np.where(lag_1 == 0, 1.0, lag_1))
    return diff, pct


def engine_features(base: np.ndarray) -> np.ndarray:
    """45 columns from one entity's 1-minute series of the 5 base metrics (rows oldest
    first). Rows without five earlier minutes hold NaN in their lag_5 columns."""
    base = np.asarray(base, dtype=np.float64)
    if base.ndim != 2 or base.shape[1] != len(BASE_METRICS):
        raise DataError(f"expected rows of {len(BASE_METRICS)} base metrics {list(BASE_METRICS)}, got {base.shape}")
    rows = len(base)
    padded = np.vstack([np.full((WINDOW_SAMPLES - 1, base.shape[1]), np.nan), base])
    windows = np.lib.stride_tricks.sliding_window_view(padded, WINDOW_SAMPLES, axis=0)  # rows x metrics x window
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(windows, axis=2)
        std = np.sqrt(np.nanmean((windows - mean[:, :, None]) ** 2, axis=2))
    low, high = np.nanmin(windows, axis=2), np.nanmax(windows, axis=2)
    lag_1 = np.vstack([np.full((1, base.shape[1]), np.nan), base[:-1]])[:rows]
    lag_5 = np.vstack([np.full((HISTORY_MINUTES, base.shape[1]), np.nan), base[:-HISTORY_MINUTES]])[:rows]
    columns = []
    for j in range(base.shape[1]):
        diff, pct = derived(base[:, j], lag_1[:, j])
        columns += [base[:, j], mean[:, j], std[:, j], low[:, j], high[:, j], lag_1[:, j], lag_5[:, j], diff, pct]
    return np.column_stack(columns)


def engine_view(dataset, scoped_copies: bool = True):
    """(``dataset`` as the engine sends it, copies mask): ``dataset`` (a data.Dataset of this
    schema) with the lag fallback on every row, plus (``scoped_copies``) each row again as a
    scoped request sends it, node metrics replaced by the engine's default fragment, under the
    entity ``<entity>@scoped``; the mask marks those copies (None without them). Training fits
    the copies but sets the threshold on the rows alone: the copies' dense node block scores
    low, and counted among the held-back rows it would pull the threshold down."""
    from dataclasses import replace

    X = engine_lag_fallback(dataset.X)
    if not scoped_copies:
        return replace(dataset, X=X), None
    scoped = X.copy()
    scoped[:, NODE_COLUMNS] = NODE_DEFAULTS
    entities = dataset.entities if dataset.entities is not None else np.full(len(X), "series", dtype=object)
    copies = np.r_[np.zeros(len(X), dtype=bool), np.ones(len(X), dtype=bool)]
    return (
        replace(
            dataset,
            X=np.vstack([X, scoped]),
            y=None if dataset.y is None else np.concatenate([dataset.y, dataset.y]),
            entities=np.concatenate([entities, np.char.add(entities.astype(str), SCOPED_ENTITY_SUFFIX).astype(object)]),
        ),
        copies,
    )


# --------------------------------------------------------------------------- synthetic

ENGINE_INCIDENTS = ("cpu_runaway", "node_memory_pressure")


def engine_request_rows(rng, n: int, incident: str | None = None, scoped: bool = False) -> np.ndarray:
    """``n`` rows as the engine sends them for a pod on an ordinary midday node (the last row
    of 15 minutes of metrics; lag fallback; ``scoped``: node defaults), optionally with an
    incident in the final minutes: ``cpu_runaway`` (a pod at ten times its usual cores) or
    ``node_memory_pressure`` (the node at ~88% memory). For contract tests and benchmarks."""
    if incident not in (None, *ENGINE_INCIDENTS):
        raise ValueError(f"incident must be one of {ENGINE_INCIDENTS}, got {incident!r}")
    minutes = 15
    rows = []
    for _ in range(n):
        base = np.column_stack(
            [
                0.42 + rng.normal(0, 0.02, minutes),
                0.53 + rng.normal(0, 0.01, minutes),
                0.3 + rng.normal(0, 0.01, minutes),
                0.45 + rng.normal(0, 0.01, minutes),
                np.full(minutes, 2.0),
            ]
        )
        if incident == "cpu_runaway":
            base[-3:, 2] += 3.0
            base[-3:, 0] += 0.3
        elif incident == "node_memory_pressure":
            base[-6:, 1] += 0.35
        rows.append(engine_features(base)[-1])
    out = engine_lag_fallback(np.array(rows))
    if scoped:
        out[:, NODE_COLUMNS] = NODE_DEFAULTS
    return out


ANOMALY_KINDS = ("cpu_spike", "memory_leak", "crash_loop", "node_cpu_pressure", "node_memory_pressure", "hung_pod")


def generate_platform_synthetic(
    rows: int = 20_160, seed: int = 42, anomaly_rate: float = 0.03, pods: int = 3, start: str = "2026-01-05T00:00:00Z"
) -> pd.DataFrame:
    """Labelled rows of the 45 engine features for ``pods`` pods on one node, one row a
    minute per pod (``rows`` in all), from base series in the engine's units.

    Anomalies are events of several minutes (ANOMALY_KINDS); node-level ones mark every
    pod's rows. The first five minutes of each pod (no lag_5 yet) are left out."""
    if pods < 1:
        raise DataError(f"need at least one pod, got {pods}")
    minutes = rows // pods + HISTORY_MINUTES
    if minutes < 60:
        raise DataError(f"synthetic data needs at least 60 minutes per pod, got {minutes} ({rows} rows, {pods} pods)")
    if not 0.0 <= anomaly_rate < 0.5:
        raise DataError(f"anomaly_rate must be in [0, 0.5), got {anomaly_rate}")
    import pandas as pd  # here, not at the top: the model servers import this module

    from anomaly_mlops.sources.synthetic import daily_load

    rng = np.random.default_rng(seed)
    load = daily_load(minutes)
    node_cpu = 0.15 + 0.45 * load + rng.normal(0, 0.02, minutes)
    node_memory = (
        0.45 + 0.15 * load + np.cumsum(rng.normal(0, 0.0005, minutes)).clip(-0.05, 0.05) + rng.normal(0, 0.01, minutes)
    )
    node_labels = np.zeros(minutes, dtype=np.int8)
    pod_series, pod_labels = [], []
    for _ in range(pods):
        scale = rng.uniform(0.3, 1.5)
        cpu = scale * (0.1 + 0.5 * load) + rng.normal(0, 0.01 * scale, minutes)
        memory = rng.uniform(0.3, 0.5) + 0.1 * load + rng.normal(0, 0.01, minutes)
        restarts = rng.integers(0, 5) + np.cumsum(rng.random(minutes) < 0.0003).astype(float)
        pod_series.append({"cpu": cpu, "memory": memory, "restarts": restarts, "scale": scale})
        pod_labels.append(np.zeros(minutes, dtype=np.int8))

    target = anomaly_rate * minutes
    attempts = 0
    while np.mean([labels.sum() for labels in pod_labels]) + node_labels.sum() < target and attempts < 10_000:
        attempts += 1
        kind = ANOMALY_KINDS[rng.integers(len(ANOMALY_KINDS))]
        length = int(
            {
                "cpu_spike": rng.integers(2, 11),
                "memory_leak": rng.integers(30, 121),
                "crash_loop": rng.integers(15, 46),
                "node_cpu_pressure": rng.integers(10, 31),
                "node_memory_pressure": rng.integers(20, 61),
                "hung_pod": rng.integers(10, 31),
            }[kind]
        )
        length = min(length, minutes // 10)
        begin = int(rng.integers(HISTORY_MINUTES + 1, minutes - length))
        window = slice(begin, begin + length)
        busy = node_labels[max(0, begin - 1) : begin + length + 1].any() or any(
            labels[max(0, begin - 1) : begin + length + 1].any() for labels in pod_labels
        )
        if busy:
            continue
        if kind.startswith("node_"):
            if kind == "node_cpu_pressure":
                node_cpu[window] += rng.uniform(0.3, 0.45)
            else:
                node_memory[window] += rng.uniform(0.2, 0.35)
            node_labels[window] = 1
            continue
        pod = int(rng.integers(pods))
        series = pod_series[pod]
        if kind == "cpu_spike":
            series["cpu"][window] += rng.uniform(1.0, 2.5)
            node_cpu[window] += 0.15
        elif kind == "memory_leak":
            series["memory"][window] += np.linspace(0, rng.uniform(0.3, 0.5), length)
        elif kind == "crash_loop":
            series["restarts"][begin:] += np.cumsum(np.arange(minutes - begin) % int(rng.integers(2, 6)) == 0).clip(
                max=length // 2
            )
            series["cpu"][window] *= 0.2
        elif kind == "hung_pod":
            series["cpu"][window] = 0.0
        pod_labels[pod][window] = 1

    stamps = pd.date_range(start=start, periods=minutes, freq="min")
    frames = []
    for number, (series, labels) in enumerate(zip(pod_series, pod_labels)):
        base = np.column_stack(
            [
                np.clip(node_cpu, 0, 1),
                np.clip(node_memory, 0, 1),
                np.clip(series["cpu"], 0, None),
                np.clip(series["memory"], 0, None),
                series["restarts"],
            ]
        )
        frame = pd.DataFrame(engine_features(base), columns=list(FEATURES))
        frame.insert(0, ENTITY_COLUMN, f"pod-{number}")
        frame.insert(0, TIMESTAMP_COLUMN, stamps)
        frame[LABEL_COLUMN] = np.maximum(labels, node_labels)
        frames.append(frame.iloc[HISTORY_MINUTES:])
    result = pd.concat(frames).sort_values([TIMESTAMP_COLUMN, ENTITY_COLUMN], kind="stable").reset_index(drop=True)
    return result.iloc[:rows] if len(result) > rows else result


# --------------------------------------------------------------------------- Prometheus


def fetch_platform_frame(client, *, grid: np.ndarray, step_s: int, max_gap_steps: int = 0) -> pd.DataFrame:
    """The 45 columns from Prometheus with the engine's PromQL: one row per pod and step.

    Node metrics (one series each) join every pod's rows. Each pod keeps the steps where
    all its pod metrics have samples (pods start and stop inside a window); a pod with
    none of a metric is left out, and every left-out pod and step is logged with the
    reason. ``client`` is a prometheus.PrometheusClient."""
    import pandas as pd

    from anomaly_mlops.sources.prometheus import _align

    start, end = int(grid[0]), int(grid[-1])
    node: dict[str, np.ndarray] = {}
    pods: dict[str, dict[str, np.ndarray]] = {}
    for metric in BASE_METRICS:
        for stat, promql in stat_queries(metric).items():
            column = f"{metric}_{stat}"
            series = client.range(promql, start, end, step_s, f"{column!r}")
            if metric in NODE_METRICS:
                if len(series) != 1:
                    raise DataError(
                        f"the query for {column!r} returned {len(series)} series; the engine's node "
                        f"queries aggregate to one: {promql}"
                    )
                node[column] = _align(column, promql, series[0]["values"], grid, step_s, max_gap_steps)
                continue
            for one in series:
                pod = one.get("metric", {}).get("pod")
                if not pod:
                    raise DataError(
                        f"the query for {column!r} returned a series without a pod label "
                        f"({one.get('metric')}): {promql}"
                    )
                stamps, samples = one["values"]
                values = pd.Series(samples, index=stamps)
                values = values[~values.index.duplicated(keep="last")].reindex(grid)
                pods.setdefault(pod, {})[column] = values.to_numpy(dtype=np.float64)
    pod_columns = [f"{m}_{s}" for m in BASE_METRICS if m not in NODE_METRICS for s in stat_queries(m)]
    frames, left_out = [], []
    for pod in sorted(pods):
        missing = [c for c in pod_columns if c not in pods[pod]]
        if missing:
            left_out.append(f"{pod} (no data for {missing[0]}{' and more' if len(missing) > 1 else ''})")
            continue
        columns = {**node, **pods[pod]}
        for metric in BASE_METRICS:
            diff, pct = derived(columns[f"{metric}_value"], columns[f"{metric}_lag_1"])
            columns[f"{metric}_diff"], columns[f"{metric}_pct_change"] = diff, pct
        matrix = np.column_stack([columns[f] for f in FEATURES])
        complete = np.isfinite(matrix).all(axis=1)
        if not complete.any():
            left_out.append(f"{pod} (no step with every metric)")
            continue
        if not complete.all():
            log.info(
                "prometheus: pod %s: %d of %d steps lack a metric (pod not running, no limit, or before the metrics begin); left out",
                pod,
                int((~complete).sum()),
                len(grid),
            )
        frame = pd.DataFrame(matrix[complete], columns=list(FEATURES))
        frame.insert(0, ENTITY_COLUMN, pod)
        frame.insert(0, TIMESTAMP_COLUMN, pd.to_datetime(grid[complete], unit="s", utc=True))
        frames.append(frame)
    if left_out:
        log.warning("prometheus: %d pod(s) left out: %s", len(left_out), "; ".join(left_out))
    if not frames:
        raise DataError(
            f"no pod has every metric of the {SCHEMA_NAME} schema between the window's ends"
            + (f"; left out: {'; '.join(left_out)}" if left_out else "")
        )
    result = pd.concat(frames).sort_values([TIMESTAMP_COLUMN, ENTITY_COLUMN], kind="stable").reset_index(drop=True)
    log.info("prometheus: %d rows for %d pod(s) x %d features", len(result), len(frames), len(FEATURES))
    result.attrs["left_out"] = left_out
    return result
