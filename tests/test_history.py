"""Per-entity serving history (history.py): parity with offline scoring, bounds, expiry."""

import numpy as np

from anomaly_mlops.model.artifacts import features_of
from anomaly_mlops.serving.history import APPEND_ROWS, EntityHistory


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_streaming_in_any_chunking_equals_offline_scoring(windowed):
    model, X = windowed
    series = X[:200]
    labels, offline = model.score(series)
    for chunk in (1, 3, 16, APPEND_ROWS, APPEND_ROWS + 1, 200):  # appended in place, or joined
        history = EntityHistory(model)
        parts = [history.score("node", series[i : i + chunk]) for i in range(0, len(series), chunk)]
        np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), offline, rtol=0, atol=1e-12)
        assert np.concatenate([p[0] for p in parts]).tolist() == labels.tolist()
        marks = np.concatenate([p[2] for p in parts])
        assert marks.tolist() == [i >= model.history_rows for i in range(200)]


def test_a_rows_raw_score_does_not_depend_on_the_rows_scored_with_it(windowed):
    """The same bits for a row's raw score (features, the metric basis's projection, the
    forest, the reconstruction error) whether it is scored alone or among rows of any number,
    as when a stream's first rows are scored one by one and later recomputed together by
    another replica (shared_history): a BLAS product's result for a row can change with the
    matrix's row count (one row against several), and a served score would then depend on
    which requests shared a tick, or on which replica computed it."""
    model, X = windowed
    assert model.transform.basis is not None and model.reconstruction is not None
    for start in range(0, 600, 20):  # a stream's first rows, each with what history it has
        rows = X[start : start + 20]
        whole = model.raw_scores(model.transform.apply(rows))
        for size in (1, 2, 3, 5):
            for first in range(0, len(rows) - size, size):
                part = model.raw_scores(model.transform.apply(rows[: first + size], last=size))
                np.testing.assert_array_equal(part, whole[first : first + size])


def test_entities_do_not_mix_and_memory_is_bounded(windowed):
    model, X = windowed
    history = EntityHistory(model, max_entities=2)
    a = np.concatenate([history.score("a", X[i : i + 1])[1] for i in range(40)])
    b = np.concatenate([history.score("b", X[100 + i : 101 + i])[1] for i in range(40)])
    np.testing.assert_allclose(a, model.score(X[:40])[1], atol=1e-12)
    np.testing.assert_allclose(b, model.score(X[100:140])[1], atol=1e-12)
    history.score("c", X[:1])  # a third entity pushes out the least recently seen ("a")
    assert len(history) == 2
    assert history.score("a", X[40:41])[2].tolist() == [False]  # "a" starts again
    # the rows and raw scores the model needs, and room to append small requests in place
    assert (
        history.bytes_per_entity() < 8 * ((model.history_rows + APPEND_ROWS) * X.shape[1] + model.history_rows) + 1000
    )


def test_history_expires_after_a_gap(windowed):
    model, X = windowed
    clock = Clock()
    history = EntityHistory(model, clock=clock)
    assert history.ttl_s == 300  # five missed one-minute samples
    for i in range(30):
        clock.now += 60
        history.score("a", X[i : i + 1])
    clock.now += 60
    assert history.score("a", X[30:31])[2].tolist() == [True]
    clock.now += 301
    fresh = history.score("a", X[31:32])
    assert fresh[2].tolist() == [False]
    np.testing.assert_allclose(fresh[1], model.score(X[31:32])[1], atol=1e-12)


def test_a_large_request_leaves_only_the_bounded_history_behind(windowed):
    """What is kept per entity owns its memory: a view into a large request would keep the
    whole request alive and break the memory bound bytes_per_entity states."""
    model, X = windowed
    history = EntityHistory(model)
    history.score("a", X[:2000])
    state = history._states["a"]
    keep = model.transform.window - 1
    assert state.rows.shape == (keep + APPEND_ROWS, X.shape[1]) and state.rows.base is None
    np.testing.assert_array_equal(state.rows[: state.filled], X[2000 - keep : 2000])
    raw = model.raw_scores(model.transform.apply(X[:2000]))
    assert state.raw == raw[2000 - (model.smoothing - 1) :].tolist()  # the smoothing's raw scores, no more


def test_rows_handed_out_stay_intact_while_later_requests_are_appended(windowed):
    """Requests of one entity begun before any is scored (one event-loop tick under load):
    each keeps its own rows while later ones are appended and the buffer is replaced."""
    model, X = windowed
    labels, offline = model.score(X[:300])
    history = EntityHistory(model)
    history.score("node", X[:150])
    pending = [history.begin("node", X[i : i + 1]) for i in range(150, 300)]  # > APPEND_ROWS: replaced
    raw = model.raw_scores(features_of(pending))
    scores = np.concatenate([p.finish(raw[i : i + 1])[1] for i, p in enumerate(pending)])
    np.testing.assert_allclose(scores, offline[150:], rtol=0, atol=1e-12)
