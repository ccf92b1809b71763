"""Large inputs on several threads (model/chunks.py): the figures are the same bits as on
one thread, and the work is spread only where a step asks for it."""

import threading

import numpy as np

from anomaly_mlops.model.chunks import map_chunks, threads
from anomaly_mlops.model.fastforest import CHUNK_ROWS
from anomaly_mlops.model.features import FeatureTransform, MetricBasis


def long_series(rows: int = 30_000, metrics: int = 6) -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.cumsum(rng.normal(size=(rows, metrics)), axis=0) + rng.normal(0, 50, metrics)


def test_window_columns_are_the_same_bits_on_any_number_of_threads():
    X = long_series()
    for transform in (
        FeatureTransform(120),
        FeatureTransform(30, ("delta", "deviation")),
        FeatureTransform(60, basis=MetricBasis.fit(X[:10_000])),
    ):
        alone = transform.apply(X)
        for count in (2, 3):
            with threads(count):
                assert np.array_equal(transform.apply(X), alone), (transform, count)
        # the served row: its own window, whatever the chunks were
        assert np.array_equal(transform.apply(X[-transform.window - 5 :], last=1)[0], alone[-1])


def test_forest_scores_are_the_same_bits_on_any_number_of_threads(windowed):
    model, X = windowed
    features = model.transform.apply(np.tile(X, (4, 1)))
    assert len(features) > 2 * CHUNK_ROWS
    alone = model.fast.anomaly_scores(features)
    with threads(3):
        assert np.array_equal(model.fast.anomaly_scores(features), alone)


def test_chunks_use_threads_only_inside_a_threads_block():
    def where(_):
        return threading.current_thread().name

    assert set(map_chunks(where, range(8))) == {threading.current_thread().name}
    with threads(2) as count:
        assert count == 2
        names = set(map_chunks(where, range(8)))
        assert names and all(name.startswith("chunk") for name in names)
    assert set(map_chunks(where, range(8))) == {threading.current_thread().name}
