"""What makes an entity's rows one series, for both history stores (history.py in process,
shared_history.py in Redis/Valkey): the sample interval, the gap after which history starts
again, the order of timestamped rows, and which rows count as scored with full history."""

from __future__ import annotations

import numpy as np

from anomaly_mlops.model.artifacts import LoadedModel
from anomaly_mlops.model.features import DEFAULT_SAMPLE_INTERVAL_S
from anomaly_mlops.serving.problems import InputProblem

# Rows further apart than this many sample intervals are a gap: history starts again after it.
GAP_INTERVALS = 1.5


def sample_interval_s(model: LoadedModel) -> float:
    return float((model.metadata.get("feature_transform") or {}).get("sample_interval_s") or DEFAULT_SAMPLE_INTERVAL_S)


def max_gap_s(model: LoadedModel) -> float:
    """The most time between two rows of an entity that still counts as one series."""
    return GAP_INTERVALS * sample_interval_s(model)


def history_marks(seen: int, n_rows: int, history_rows: int, times, max_gap: float) -> np.ndarray:
    """Which of a request's rows have the full history: ``seen`` rows of the entity before
    them, and no gap above ``max_gap`` seconds between its rows since (a split stream, or
    missed samples, makes a window span more time than the model was trained on)."""
    if n_rows == 1:
        return np.array([seen >= history_rows])
    run = seen + np.arange(n_rows)
    if times is not None:
        for start in np.flatnonzero(np.diff(times) > max_gap) + 1:
            run[start:] = np.arange(n_rows - start)
    return run >= history_rows


def not_newer(entity: str, first: float, newest: float) -> InputProblem:
    return InputProblem(
        f"entity {entity!r}: the request's first row is at {first:g}, not after the entity's newest row "
        f"({newest:g}); an entity's rows must come oldest first, and these were not scored"
    )


def run_after(seen: int, n_rows: int, times, max_gap: float) -> int:
    """Rows of the entity's current run (since its last gap) once these rows are in."""
    if times is not None and n_rows > 1:
        breaks = np.flatnonzero(np.diff(times) > max_gap)
        if breaks.size:
            return n_rows - int(breaks[-1]) - 1
    return seen + n_rows
