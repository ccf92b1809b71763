"""Causal time-series features and score smoothing: the same code for training,
validation, evaluation and serving.

With a window of w rows (w >= 2), each metric x keeps its column and gains window columns
(``WINDOW_COLUMNS``, all three by default): its change from the previous row ("delta"), its
deviation from the mean of the last w rows ("deviation"), and the standard deviation of the
last w rows ("std"; 0 while only one row is known). Row t uses rows <= t only,
so a model sees at serving time exactly what it saw in training when it is given the
preceding rows (oldest first), by the client or by the server's per-entity history. With
w = 0 the metrics pass through unchanged.

With a ``MetricBasis`` the metrics are first turned onto their principal axes over the
training rows (standardized, then rotated; nothing dropped), and the window columns are
computed on those components. Isolation trees cut one column at a time: a row that breaks
how metrics move together (CPU up, requests flat) is extreme along a minor axis, and on no
single metric.

Windows are set in minutes and turned into rows with the data's sample interval, so
1-minute and 5-minute data look back over the same time (``window_rows``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from anomaly_mlops.model.chunks import map_chunks, thread_count
from anomaly_mlops.params import WINDOW_COLUMNS, parse_window_columns

try:  # built by setup.py where a C compiler is; the numpy path gives the same figures
    from anomaly_mlops.model import _window_stats as window_stats_c
except ImportError:  # pragma: no cover - installs without a compiler
    window_stats_c = None

CHUNK_ROWS = 8192  # bounds the (rows x metrics x window) view
THREAD_CHUNK_ROWS = 1024  # the same, per thread (model/chunks.py)
DEFAULT_SAMPLE_INTERVAL_S = 60.0


def window_rows(minutes: float, sample_interval_s: float) -> int:
    """Rows covering ``minutes`` at one row per ``sample_interval_s``: 0 for 0 minutes,
    else at least 2 (a window of one row has no history)."""
    if minutes <= 0:
        return 0
    return max(2, round(minutes * 60.0 / sample_interval_s))


def smoothing_rows(minutes: float, sample_interval_s: float) -> int:
    """Rows averaged by the score smoothing: 1 (none) for 0 minutes."""
    return max(1, round(minutes * 60.0 / sample_interval_s)) if minutes > 0 else 1


def smooth_scores(raw: np.ndarray, rows: int) -> np.ndarray:
    """Causal moving mean over the last ``rows`` scores (fewer at the start)."""
    raw = np.asarray(raw, dtype=np.float64)
    if rows <= 1 or raw.size == 0:
        return raw
    total = np.concatenate([[0.0], np.cumsum(raw)])
    end = np.arange(1, raw.size + 1)
    start = np.maximum(end - rows, 0)
    return (total[end] - total[start]) / (end - start)


def smooth_after(earlier: np.ndarray | list[float], raw: np.ndarray, rows: int) -> np.ndarray:
    """The smoothed scores of ``raw``, the series' next raw scores after ``earlier`` (at least
    the last ``rows - 1`` before them, or all there are; an array or a list of floats): what
    a server answers while streaming. One score (a single-row request, the serving norm) is
    the exactly rounded mean of its window (math.fsum), without numpy's per-call cost; several
    go through smooth_scores. Either agrees with smooth_scores of the whole series to about 1e-16."""
    if rows <= 1:
        return raw
    if len(raw) == 1:
        window = earlier[max(len(earlier) - rows + 1, 0) :]
        window = window.tolist() if isinstance(window, np.ndarray) else list(window)
        window.append(float(raw[0]))
        return np.array([math.fsum(window) / len(window)])
    joined = np.concatenate([earlier, raw]) if len(earlier) else raw
    return smooth_scores(joined, rows)[len(joined) - len(raw) :]


def smooth_by_entity(raw: np.ndarray, entities: np.ndarray | None, rows: int) -> np.ndarray:
    """smooth_scores within each entity's rows (all rows are one series without entities)."""
    if rows <= 1:
        return raw
    out = np.empty_like(raw)
    for group in entity_groups(entities, len(raw)):
        out[group] = smooth_scores(raw[group], rows)
    return out


def entity_groups(entities: np.ndarray | None, n_rows: int) -> list[np.ndarray]:
    """Row indices per entity, each in the given (time) order; one group without entities."""
    if entities is None:
        return [np.arange(n_rows)]
    codes = np.unique(np.asarray(entities), return_inverse=True)[1]
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)


def _window_stats_numpy(
    X: np.ndarray, begin: int, end: int, w: int, spread: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (None without ``spread``) over each of rows begin..end-1's windows. The series is
    laid out metrics x time, so every window is one contiguous run (numpy's fast reductions),
    with zeros ahead of the first row: they add nothing to a sum and are left out of the
    deviations. A row's figures depend on its window alone, not on where a call starts."""
    lo = max(begin - w + 1, 0)
    pad = w - 1 - (begin - lo)
    series = np.ascontiguousarray(X[lo:end].T)
    if pad:
        series = np.concatenate([np.zeros((X.shape[1], pad)), series], axis=1)
    # metrics x rows x window, as sliding_window_view builds it (without its 10 us of checks)
    step = series.strides[1]
    windows = np.ndarray((series.shape[0], end - begin, w), series.dtype, series, 0, (series.strides[0], step, step))
    count = np.minimum(np.arange(begin, end) + 1, w)
    mean = windows.sum(axis=2) / count
    if not spread:
        return mean.T, None
    centered = windows - mean[:, :, None]
    short = min(pad, end - begin)  # rows whose window starts before the series
    if short:
        centered[:, :short] *= np.arange(w) >= pad - np.arange(short)[:, None]
    # squared, then numpy's pairwise sum over each window: the order _window_stats.c sums in
    var = np.square(centered, out=centered).sum(axis=2) / np.maximum(count - 1, 1)
    return mean.T, np.where(count > 1, np.sqrt(var), 0.0).T


def _fill_window_columns_numpy(X, w: int, first: int, start: int, stop: int, out: np.ndarray, slot: dict) -> None:
    """Rows first+start..first+stop-1's deviation and spread columns, into out[start:stop]."""
    mean, std = _window_stats_numpy(X, first + start, first + stop, w, "std" in slot)
    if "deviation" in slot:
        np.subtract(X[first + start : first + stop], mean, out=out[start:stop, slot["deviation"]])
    if "std" in slot:
        out[start:stop, slot["std"]] = std


def _fill_window_columns_c(X, w: int, first: int, start: int, stop: int, out: np.ndarray, slot: dict) -> None:
    """The same in C (_window_stats.c), the same bits, without the work arrays."""
    dev = slot["deviation"].start if "deviation" in slot else -1
    std = slot["std"].start if "std" in slot else -1
    window_stats_c.window_columns(
        X, len(X), X.shape[1], first + start, first + stop, w, out[start:stop], out.shape[1], dev, std
    )


def row_products(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``X @ W`` (rows, or series x rows) with each row's result independent of the other
    rows: a BLAS product can change a row's last bits with the matrix's row count, which
    would make a served score depend on how requests were batched (or which replica
    recomputed it); einsum sums every row the same way, and is no slower at these widths."""
    return np.einsum("...j,jk->...k", X, W)


# eq=False: compared and hashed by identity, as features_of groups requests by their
# model's transform and a matrix would make every hash cost a pass over it.
@dataclass(frozen=True, eq=False)
class MetricBasis:
    """Standardized metrics on their principal axes: ``(X - center) / scale @ axes``. Fitted
    on the rows the forest is fitted on; every component is kept (a rotation, not a reduction)."""

    center: np.ndarray
    scale: np.ndarray
    axes: np.ndarray = field(repr=False)  # metrics x components, strongest first
    # project() as one product and one subtraction: X @ weights - offset (row_products)
    weights: np.ndarray = field(init=False, repr=False)
    offset: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "weights", self.axes / self.scale[:, None])
        object.__setattr__(self, "offset", self.center @ self.weights)

    @classmethod
    def fit(cls, X: np.ndarray) -> MetricBasis:
        X = np.asarray(X, dtype=np.float64)
        center = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale == 0] = 1.0  # a constant metric stays 0 in training, and moves a minor axis when it changes
        Z = (X - center) / scale
        axes = np.linalg.eigh(Z.T @ Z)[1][:, ::-1]  # metrics x metrics, whatever the row count
        # an axis's sign is arbitrary: its largest loading is made positive, so a refit of the same rows agrees
        signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
        return cls(center, scale, axes * np.where(signs == 0, 1.0, signs))

    def project(self, X: np.ndarray) -> np.ndarray:
        """Rows (or series x rows) of metrics -> the same of components."""
        return row_products(X, self.weights) - self.offset

    def to_dict(self) -> dict:
        return {
            "kind": "principal",
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "axes": self.axes.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> MetricBasis:
        center, scale, axes = (np.asarray(data[k], dtype=np.float64) for k in ("center", "scale", "axes"))
        m = center.shape
        usable = center.ndim == 1 and scale.shape == m and axes.shape == m * 2
        if data.get("kind") != "principal" or not usable or not np.all(scale > 0) or not np.isfinite(axes).all():
            raise ValueError(
                "a metric basis needs kind 'principal', a center and a positive scale per metric, and a finite "
                "square axes matrix"
            )
        return cls(center, scale, axes)


@dataclass(frozen=True)
class FeatureTransform:
    window: int = 0
    columns: tuple[str, ...] = WINDOW_COLUMNS
    basis: MetricBasis | None = None  # None: the metrics as they come

    def __post_init__(self):
        if self.window < 0 or self.window == 1:
            raise ValueError(f"feature window must be 0 (raw metrics) or at least 2 rows, got {self.window}")
        object.__setattr__(self, "columns", parse_window_columns(self.columns))

    def width(self, n_metrics: int) -> int:
        """Columns out for ``n_metrics`` metrics in."""
        return n_metrics * (1 + len(self.columns)) if self.window else n_metrics

    def names(self, features: tuple[str, ...]) -> list[str]:
        if self.basis is not None:
            features = tuple(f"pc{i + 1}" for i in range(len(features)))
        if not self.window:
            return list(features)
        suffix = {"delta": "delta", "deviation": f"dev_mean{self.window}", "std": f"std{self.window}"}
        return [*features, *(f"{f}:{suffix[c]}" for c in self.columns for f in features)]

    def _reach(self, X: np.ndarray, last: int | None) -> np.ndarray:
        """The rows the features of the last ``last`` rows (all without it) depend on."""
        return X if last is None else X[max(len(X) - last - self.window, 0) :]

    def apply(self, X: np.ndarray, last: int | None = None) -> np.ndarray:
        """Features of one series (rows oldest first); of its ``last`` rows only when given
        (the earlier rows serve as their history: what the server does per request)."""
        X = np.asarray(X, dtype=np.float64)
        if last is not None and 0 < last <= THREAD_CHUNK_ROWS and self.stacks_in_c:
            return self.apply_stacked([X], last)
        if self.basis is not None:
            X = self.basis.project(self._reach(X, last))
        return self._windowed(X, last)

    def _windowed(self, X: np.ndarray, last: int | None) -> np.ndarray:
        if not self.window:
            return X if last is None else X[len(X) - last :]
        first = 0 if last is None else len(X) - last
        n, m = len(X) - first, X.shape[1]
        # Written block by block into the result: full-size mean, deviation and spread
        # matrices beside it were most of train's peak memory.
        out = np.empty((n, m * (1 + len(self.columns))))
        out[:, :m] = X[first:]
        slot = {c: slice(m * (i + 1), m * (i + 2)) for i, c in enumerate(self.columns)}
        if "delta" in slot:
            delta = np.diff(X[max(first - 1, 0) :], axis=0, prepend=X[max(first - 1, 0) : max(first, 1)])
            out[:, slot["delta"]] = delta[len(delta) - n :]
        if "deviation" in slot or "std" in slot:
            # Threads take smaller chunks: each chunk's (rows x metrics x window) work array (numpy)
            # is freed into its thread's own heap, so the sum in flight is kept below one-thread's.
            rows = CHUNK_ROWS if thread_count() == 1 else THREAD_CHUNK_ROWS
            fill = _fill_window_columns_c if window_stats_c is not None else _fill_window_columns_numpy
            X = np.ascontiguousarray(X, dtype=np.float64)
            map_chunks(
                lambda start: fill(X, self.window, first, start, min(start + rows, n), out, slot), range(0, n, rows)
            )
        return out

    @property
    def stacks_in_c(self) -> bool:
        """Whether ``apply_stacked`` computes in one C call (the default columns, no basis)."""
        return window_stats_c is not None and self.window >= 2 and self.basis is None and "delta" not in self.columns

    def apply_stacked(self, series: list[np.ndarray], last: int) -> np.ndarray:
        """``apply(X, last)`` of each of several series (any lengths of at least ``last`` rows),
        stacked in one matrix: the features of a tick of requests for one forest walk, with
        the figures each gets alone."""
        if not self.stacks_in_c:
            if len({X.shape for X in series}) == 1:
                return np.vstack(self.apply_each(series, last))
            return np.vstack([self.apply(X, last) for X in series])
        m = series[0].shape[1]
        out = np.empty((len(series) * last, self.width(m)))
        dev = m * (1 + self.columns.index("deviation")) if "deviation" in self.columns else -1
        std = m * (1 + self.columns.index("std")) if "std" in self.columns else -1
        series = [np.ascontiguousarray(X, dtype=np.float64) for X in series]
        window_stats_c.stacked_window_features(series, last, m, self.window, out, out.shape[1], dev, std)
        return out

    def apply_each(self, series: list[np.ndarray], last: int) -> list[np.ndarray]:
        """``apply(X, last)`` for each of several series of the same shape, in one pass: set
        side by side, their metrics are separate columns to every statistic, so each series
        gets exactly the figures ``apply`` gives it alone (the lean server's tick of requests)."""
        if len(series) == 1 or not self.window:
            return [self.apply(X, last) for X in series]
        n_metrics = series[0].shape[1]
        if self.basis is None:
            wide = self._windowed(np.hstack(series), last)
        else:  # one product for every series: series x rows x metrics, then side by side
            reached = self.basis.project(np.stack([self._reach(X, last) for X in series]))
            wide = self._windowed(reached.transpose(1, 0, 2).reshape(reached.shape[1], -1), last)
        # last x (blocks x series x metrics)
        per_series = wide.reshape(last, 1 + len(self.columns), len(series), n_metrics).transpose(2, 0, 1, 3)
        return list(per_series.reshape(len(series), last, self.width(n_metrics)))

    def apply_by_entity(self, X: np.ndarray, entities: np.ndarray | None = None) -> np.ndarray:
        """Features of several series stacked in one matrix: each entity's rows only see
        that entity's earlier rows."""
        X = np.asarray(X, dtype=np.float64)
        if not self.window or entities is None:
            return self.apply(X)
        out = np.empty((X.shape[0], self.width(X.shape[1])))
        for rows in entity_groups(entities, len(X)):
            out[rows] = self.apply(X[rows])
        return out

    def to_dict(self) -> dict:
        basis = {} if self.basis is None else {"basis": self.basis.to_dict()}
        if not self.window:
            return {"kind": "raw", "window": 0, **basis}
        return {"kind": "causal-rolling", "window": self.window, "columns": list(self.columns), **basis}

    @classmethod
    def from_dict(cls, data: dict | None) -> FeatureTransform:
        # Models written before "columns" existed carry all three; before "basis", none.
        data = data or {}
        basis = MetricBasis.from_dict(data["basis"]) if data.get("basis") else None
        return cls(int(data.get("window", 0)), tuple(data.get("columns") or WINDOW_COLUMNS), basis)
