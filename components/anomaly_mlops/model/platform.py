"""The Self-Healing Platform engine's request contract: the 45 feature names it sends, and
what it really sends (KubeHeal/openshift-coordination-engine@afb58056 pkg/api/v1/anomaly.go
l.326-330, 356-357, 400-410, 472-487): its lag queries are PromQL errors, so lag_1 = lag_5 =
value and diff = pct_change = 0; a request scoped by namespace/pod/deployment carries
ENGINE_DEFAULT_FRAGMENT for both node metrics; with Prometheus down the whole row is that
fragment. Training (sources.self_healing.engine_view) and both servers read these."""

from __future__ import annotations

import numpy as np

SCHEMA_NAME = "self-healing-platform"
BASE_METRICS = (
    "node_cpu_utilization",
    "node_memory_utilization",
    "pod_cpu_usage",
    "pod_memory_usage",
    "container_restart_count",
)
STATISTICS = ("value", "mean_5m", "std_5m", "min_5m", "max_5m", "lag_1", "lag_5", "diff", "pct_change")
FEATURES = tuple(f"{metric}_{stat}" for metric in BASE_METRICS for stat in STATISTICS)
NODE_METRICS = ("node_cpu_utilization", "node_memory_utilization")
# The engine's fallback for a metric it could not query, in STATISTICS order (anomaly.go l.472-487).
ENGINE_DEFAULT_FRAGMENT = (0.5, 0.5, 0.1, 0.3, 0.7, 0.5, 0.5, 0.0, 0.0)
ENGINE_DEFAULT_ROW = np.tile(np.asarray(ENGINE_DEFAULT_FRAGMENT, dtype=np.float64), len(BASE_METRICS))
NODE_DEFAULTS = np.tile(np.asarray(ENGINE_DEFAULT_FRAGMENT, dtype=np.float64), len(NODE_METRICS))


def _columns(metrics, stats) -> list[int]:
    return [i for i, name in enumerate(FEATURES) for m in metrics for st in stats if name == f"{m}_{st}"]


LAG_COLUMNS = _columns(BASE_METRICS, ("lag_1", "lag_5"))
CHANGE_COLUMNS = _columns(BASE_METRICS, ("diff", "pct_change"))
VALUE_COLUMNS = [FEATURES.index(f"{m}_value") for m in BASE_METRICS for _ in range(2)]
NODE_COLUMNS = _columns(NODE_METRICS, STATISTICS)


def engine_lag_fallback(X: np.ndarray) -> np.ndarray:
    """The rows as the engine sends them when Prometheus refuses its lag queries (always):
    lag_1 = lag_5 = value, diff = pct_change = 0."""
    out = np.array(X, dtype=np.float64, copy=True)
    out[:, LAG_COLUMNS] = out[:, VALUE_COLUMNS]
    out[:, CHANGE_COLUMNS] = 0.0
    return out


def is_engine_scoped_row(X: np.ndarray) -> np.ndarray:
    """Rows whose node metrics are the engine's defaults (a scoped request, or Prometheus down)."""
    return np.all(X[:, NODE_COLUMNS] == NODE_DEFAULTS, axis=1)


def is_engine_default_row(X: np.ndarray) -> np.ndarray:
    """Rows that are the engine's all-default row (Prometheus down): one bool per row."""
    return np.all(X == ENGINE_DEFAULT_ROW, axis=1)
