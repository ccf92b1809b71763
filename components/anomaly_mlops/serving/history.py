"""Per-entity history for serving windowed models.

A client that sends one row at a time names the series it belongs to (``entity``); the
server keeps the last rows and raw scores of each entity, so a row is scored with the same
features and smoothing as in training (offline scoring of the whole series gives the same
scores; tests/test_history.py streams a series to check). Memory is bounded: at most
``max_entities`` entities (the least recently seen is dropped first), each holding
``model.history_rows`` rows; an entity not seen for ``ttl_s`` starts again from nothing,
since a window that spans a gap would mix unrelated times. A new model gets a new history.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from anomaly_mlops.model.artifacts import LoadedModel, PendingScores
from anomaly_mlops.model.features import smooth_after
from anomaly_mlops.params import DEFAULT_MAX_ENTITIES
from anomaly_mlops.serving.series import history_marks, max_gap_s, not_newer, run_after, sample_interval_s

log = logging.getLogger(__name__)

MAX_ENTITY_ID_CHARS = 256
# Rows an entity's buffer takes beyond its window before its kept rows are copied to a fresh
# buffer: small requests are appended in place, without a copy of the window each time.
APPEND_ROWS = 32


@dataclass
class _State:
    rows: np.ndarray  # a buffer: its first ``filled`` rows end with the last (window - 1) metric rows
    raw: list[float]  # the last (smoothing - 1) raw scores (Python floats: no numpy call per row)
    seen: int  # rows received so far (since a gap)
    last_seen: float
    newest: float | None = None  # the newest row's timestamp, when requests carry them
    filled: int = 0


def history_for(
    model: LoadedModel,
    max_entities: int = DEFAULT_MAX_ENTITIES,
    url: str | None = None,
    model_name: str = "",
    version: str | None = None,
):
    """The per-entity history a model needs: None for one whose scores depend on each row
    alone; in the store at ``url`` (shared_history.SharedHistory) when given, else in process."""
    if not model.history_rows:
        return None
    if url:
        from anomaly_mlops.serving.shared_history import SharedHistory

        return SharedHistory(model, url, model_name, version, max_entities=max_entities)
    return EntityHistory(model, max_entities)


class EntityHistory:
    def __init__(
        self, model: LoadedModel, max_entities: int = DEFAULT_MAX_ENTITIES, ttl_s: float | None = None, clock=None
    ):
        self.model = model
        self.max_entities = max_entities
        # Five missed samples end a series: its window would otherwise span the gap.
        self.ttl_s = ttl_s if ttl_s is not None else 5 * sample_interval_s(model)
        self.max_gap_s = max_gap_s(model)
        self.clock = clock or time.monotonic
        self._states: OrderedDict[str, _State] = OrderedDict()
        self._lock = threading.Lock()
        self._keep_rows = max(model.transform.window - 1, 0)
        self._keep_raw = model.smoothing - 1
        log.info(
            "keeping the last %d rows of up to %d entities (at most %.1f MiB), each forgotten after %.0f s unseen",
            model.history_rows,
            max_entities,
            max_entities * self.bytes_per_entity() / 2**20,
            self.ttl_s,
        )

    def __len__(self) -> int:
        return len(self._states)

    def bytes_per_entity(self) -> int:
        return 8 * (self._keep_rows + APPEND_ROWS) * len(self.model.schema) + 32 * self._keep_raw + 200

    def _append(self, state: _State, X: np.ndarray) -> np.ndarray:
        """The entity's kept rows followed by ``X``, as one array, and ``X`` kept after them.
        A small request is written into the entity's buffer and the result is a view of it:
        rows already handed out are never written again (a full buffer is replaced, not
        reused), so a request still on its way to the forest keeps its rows. A large one is
        joined in a new array and only the window's rows are kept (an owned copy: a view
        would keep the whole request alive and break the memory bound)."""
        keep = self._keep_rows
        start = max(state.filled - keep, 0)
        if len(X) > APPEND_ROWS:
            rows = np.concatenate([state.rows[start : state.filled], X])
            self._refill(state, rows[max(len(rows) - keep, 0) :])
            return rows
        if state.filled + len(X) > len(state.rows):
            self._refill(state, state.rows[start : state.filled])
            start = 0
        end = state.filled + len(X)
        state.rows[state.filled : end] = X
        state.filled = end
        return state.rows[start:end]

    def _refill(self, state: _State, kept: np.ndarray) -> None:
        """A fresh buffer for the entity holding ``kept`` (its last rows, at most the window's)."""
        state.rows = np.empty((self._keep_rows + APPEND_ROWS, kept.shape[1]))
        state.rows[: len(kept)] = kept
        state.filled = len(kept)

    def score(self, entity: str, X: np.ndarray, times=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Score ``X`` (the entity's next rows, oldest first; ``times`` their timestamps, or
        None) after its kept history: (predictions, scores, complete), where complete marks
        rows scored with the full history the model was trained with. Rows not after the
        entity's newest are refused (InputProblem); after a gap, history starts again."""
        return self.begin(entity, X, times).score_alone(self.model)

    def begin(self, entity: str, X: np.ndarray, times=None) -> PendingScores:
        """``score`` in two steps, so the forest can walk several requests' rows at once:
        the features of ``X`` after the entity's kept rows now; the smoothing over its kept
        raw scores in ``finish``. Requests of one entity must finish in the order they began."""
        model = self.model
        now = self.clock()
        with self._lock:
            state = self._states.get(entity)
            if state is not None and times is not None and state.newest is not None and times[0] <= state.newest:
                raise not_newer(entity, times[0], state.newest)  # nothing kept changes
            self._states.pop(entity, None)
            gap = state is not None and times is not None and state.newest is not None
            if (
                state is None
                or now - state.last_seen > self.ttl_s
                or (gap and times[0] - state.newest > self.max_gap_s)
            ):
                state = _State(np.empty((0, X.shape[1])), [], 0, now)
            rows = self._append(state, X) if self._keep_rows else X
            complete = history_marks(state.seen, len(X), model.history_rows, times, self.max_gap_s)
            state.seen = run_after(state.seen, len(X), times, self.max_gap_s)
            state.last_seen = now
            if times is not None:
                state.newest = float(times[-1])
            self._states[entity] = state
            while len(self._states) > self.max_entities:
                self._states.popitem(last=False)

        def finish(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            with self._lock:
                kept = state.raw
                if self._keep_raw:
                    scores = smooth_after(kept, raw, model.smoothing)
                    kept.extend(raw.tolist())
                    del kept[: max(len(kept) - self._keep_raw, 0)]
                else:
                    scores = raw
            return model.label(scores), scores, complete

        # Features outside the lock, and for a tick of requests together (artifacts.features_of).
        return PendingScores(rows, finish, model.transform, last=len(X))
