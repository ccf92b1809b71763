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


def test_window_columns_in_c_are_numpys_figures_bit_for_bit():
    """The C window columns (model/_window_stats.c) sum in numpy's pairwise order: installs
    with and without a C compiler train and serve the same features. Windows around numpy's
    8-term unroll and 128-term block, rows inside the first window (zeros ahead), one row
    after its history (the served request) and whole series."""
    import pytest

    from anomaly_mlops.model import features

    if features.window_stats_c is None:
        pytest.skip("the C window columns were not built (no C compiler at install): numpy computes them")
    rng = np.random.default_rng(8)
    checked = 0
    for window in (2, 7, 8, 9, 120, 128, 129, 257, 600):
        for columns in (("delta", "deviation", "std"), ("deviation",), ("std",)):
            transform = FeatureTransform(window, columns)
            X = rng.normal(size=(2 * window + 37, 4)) * rng.uniform(1e-3, 1e4) + rng.uniform(-1e5, 1e5)
            X[::5, 2] = 0.0
            for last in (None, 1, 3, window):
                in_c = transform.apply(X, last)
                features.window_stats_c, saved = None, features.window_stats_c
                try:
                    in_numpy = transform.apply(X, last)
                finally:
                    features.window_stats_c = saved
                assert np.array_equal(in_c.view(np.uint64), in_numpy.view(np.uint64)), (window, columns, last)
                checked += 1
    assert checked == 108
    # Sizes that do not match are an error, never a write outside the arrays.
    out = np.empty((3, 8))
    with pytest.raises(ValueError, match="buffer sizes"):
        features.window_stats_c.window_columns(np.zeros((10, 4)), 10, 4, 7, 10, 5, out, 8, 6, -1)
    with pytest.raises(ValueError, match="out of range"):
        features.window_stats_c.window_columns(np.zeros((10, 4)), 10, 4, 7, 11, 5, out, 8, 4, -1)


def test_a_tick_of_series_stacked_in_c_is_each_series_alone_bit_for_bit():
    """The lean server's tick: several series of any lengths, their last rows' features in one
    C call (FeatureTransform.apply_stacked), each the figures numpy gives that series alone.
    Arrays it cannot read as float64 rows x metrics are refused, never read past."""
    import pytest

    from anomaly_mlops.model import features

    if features.window_stats_c is None:
        pytest.skip("the C window columns were not built (no C compiler at install): numpy computes them")
    rng = np.random.default_rng(9)
    for window in (2, 9, 120, 129):
        for columns in (("deviation", "std"), ("std", "deviation"), ("deviation",), ("std",)):
            transform = FeatureTransform(window, columns)
            for last in (1, 2, 5):
                lengths = rng.integers(last, window + last + 5, size=7)
                series = [rng.normal(size=(n, 4)) * rng.uniform(1e-3, 1e4) for n in lengths]
                stacked = transform.apply_stacked(series, last)
                features.window_stats_c, saved = None, features.window_stats_c
                try:
                    alone = np.vstack([transform.apply(X, last) for X in series])
                finally:
                    features.window_stats_c = saved
                assert np.array_equal(stacked.view(np.uint64), alone.view(np.uint64)), (window, columns, last)
    float32 = [rng.normal(size=(130, 4)).astype(np.float32)]  # converted, as apply converts
    transform = FeatureTransform(120, ("deviation", "std"))
    assert transform.stacks_in_c
    assert np.array_equal(transform.apply_stacked(float32, 1), transform.apply(float32[0].astype(np.float64), 1))
    stacked_c = features.window_stats_c.stacked_window_features
    out = np.empty((1, 12))
    with pytest.raises(ValueError, match="not a float64 matrix of 4 metrics and at least 1 rows"):
        stacked_c([np.zeros((0, 4))], 1, 4, 5, out, 12, 4, 8)
    for dtype in (np.float32, ">f8"):  # another width, or float64 in the other byte order
        with pytest.raises(ValueError, match="not a float64 matrix"):
            stacked_c([np.zeros((9, 4), dtype=dtype)], 1, 4, 5, out, 12, 4, 8)
    with pytest.raises(ValueError, match="C-contiguous"):
        stacked_c([np.zeros((9, 8))[:, ::2]], 1, 4, 5, out, 12, 4, 8)
    with pytest.raises(ValueError, match="out does not hold"):
        stacked_c([np.zeros((9, 4)), np.zeros((9, 4))], 1, 4, 5, out, 12, 4, 8)
    with pytest.raises(ValueError, match="out of range"):
        stacked_c([np.zeros((9, 4))], 1, 4, 5, out, 12, 10, 8)
