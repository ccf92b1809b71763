"""The flattened forest against scikit-learn, the parity reference."""

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from anomaly_mlops.model.artifacts import FAST_SCORING_MAX_ROWS, load_model_dir
from anomaly_mlops.model.fastforest import CHUNK_ROWS, CompiledForest, compile_forest


def fitted(X, **params):
    params = {"random_state": 0, **params}
    return Pipeline([("scaler", StandardScaler()), ("iforest", IsolationForest(**params))]).fit(X)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"n_estimators": 1},
        {"max_features": 0.5},
        {"max_samples": 64, "n_estimators": 37},
        {"max_samples": 1.0, "bootstrap": True},
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_scores_equal_sklearn(params, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(3000, 7)) * rng.uniform(0.1, 50, 7) + rng.uniform(-100, 100, 7)
    X[:, 3] = rng.integers(0, 3, 3000)  # a discrete metric, like restarts: many ties at thresholds
    pipeline = fitted(X, **params)
    probe = np.vstack([X[:500], rng.normal(size=(500, 7)) * 1e3, X[:50] + 1e-7])
    np.testing.assert_allclose(
        CompiledForest(pipeline).anomaly_scores(probe), -pipeline.score_samples(probe), rtol=0, atol=1e-12
    )


def test_the_c_walk_is_scikit_learns_arithmetic_bit_for_bit_and_numpy_agrees():
    """The C walk sums the trees in scikit-learn's order: equal bit for bit, one row or many
    (few rows walk 16 trees in lockstep, many rows 16 rows; 60 trees and 1,000 rows leave some
    over for the single walk); the numpy walk (installs without a C compiler) to 1e-15."""
    from anomaly_mlops.model import fastforest

    if fastforest._forest_walk is None:
        pytest.skip("the C walk was not built (no C compiler at install): the numpy walk serves")
    rng = np.random.default_rng(4)
    X = rng.normal(size=(4000, 9))
    X[:, 2] = rng.integers(0, 3, 4000)
    pipeline = fitted(X, n_estimators=60, max_features=0.7)
    forest = CompiledForest(pipeline)
    probe = np.vstack([X[:700], rng.normal(size=(300, 9)) * 40])
    expected = -pipeline.score_samples(probe)
    np.testing.assert_array_equal(forest.anomaly_scores(probe), expected)
    np.testing.assert_array_equal(np.concatenate([forest.anomaly_scores(r[None]) for r in probe[:50]]), expected[:50])
    numpy_walk = 2.0 ** (-forest._depths_numpy(probe) / forest.denominator)
    np.testing.assert_allclose(numpy_walk, expected, rtol=0, atol=1e-15)
    # A damaged node array is an error, never a read outside the arrays.
    intact = forest._nodes.copy()
    for damage in ({"right": 10**9, "left": 10**9}, {"right": -5, "left": -5}, {"feature": 99}):
        forest._nodes[:] = intact
        for field, value in damage.items():
            forest._nodes[field][forest.roots[1]] = value
        for rows in (probe[:3], probe[:40]):  # trees in lockstep, then rows in lockstep
            with pytest.raises(ValueError, match="node or feature indices leave its arrays"):
                forest.anomaly_scores(rows)
    forest._nodes[:] = intact
    np.testing.assert_array_equal(forest.anomaly_scores(probe[:3]), expected[:3])


def test_trees_grown_on_the_raw_metrics_join_one_forest_that_every_reader_scores_alike():
    """raw_tree_share: one IsolationForest whose score averages path lengths over the trees
    that saw every column and those grown on the raw metrics alone (a weighted geometric
    mean of the two forests' scores); scikit-learn, the flattened forest and skops agree."""
    import skops.io as skops_io

    from anomaly_mlops.model.features import FeatureTransform
    from anomaly_mlops.params import TrainParams
    from anomaly_mlops.steps.train import _isolation_forest, fit_forest

    rng = np.random.default_rng(4)
    X = rng.normal(size=(2000, 4)) * [1, 5, 20, 0.1]
    F = FeatureTransform(20).apply(X)  # 4 raw metrics, then 12 window columns
    for max_features, widths in ((1.0, [16] * 18 + [4] * 12), (0.5, [8] * 18 + [2] * 12)):
        params = TrainParams(n_estimators=30, max_samples=256, raw_tree_share=0.4, max_features=max_features)
        pipeline = fit_forest(F, params, raw_columns=4)
        forest = pipeline.named_steps["iforest"]
        assert [len(f) for f in forest.estimators_features_] == widths
        Z = pipeline.named_steps["scaler"].transform(F)
        every = -_isolation_forest(params, 18, len(F), params.seed).fit(Z).score_samples(Z)
        raw = -_isolation_forest(params, 12, len(F), params.seed + 1).fit(Z[:, :4]).score_samples(Z[:, :4])
        expected = 2 ** ((18 * np.log2(every) + 12 * np.log2(raw)) / 30)
        np.testing.assert_allclose(-pipeline.score_samples(F), expected, rtol=1e-12)
        np.testing.assert_allclose(CompiledForest(pipeline).anomaly_scores(F), expected, rtol=1e-12)
        blob = skops_io.dumps(pipeline)
        loaded = skops_io.loads(blob, trusted=skops_io.get_untrusted_types(data=blob))
        np.testing.assert_allclose(-loaded.score_samples(F), expected, rtol=1e-12)
    # Share 0 (and raw metrics alone) is the plain forest train always fitted.
    for share, columns in ((0.0, 4), (0.5, None), (0.5, 16)):
        plain = fit_forest(F, TrainParams(n_estimators=30, max_samples=256, raw_tree_share=share), raw_columns=columns)
        reference = fitted(F, n_estimators=30, max_samples=256, random_state=42)
        np.testing.assert_array_equal(plain.score_samples(F), reference.score_samples(F))


def test_extreme_but_finite_inputs_behave_like_sklearn():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 4))
    pipeline = fitted(X)
    probe = np.array([[1e300, -1e300, 0, 0], [3e38, 5e-324, -0.0, 1.0], [0, 0, 0, 0]])  # float32 overflow too
    np.testing.assert_allclose(
        CompiledForest(pipeline).anomaly_scores(probe), -pipeline.score_samples(probe), atol=1e-12
    )


def test_constant_feature_and_chunking():
    rng = np.random.default_rng(4)
    X = np.column_stack([rng.normal(size=CHUNK_ROWS * 2 + 17), np.full(CHUNK_ROWS * 2 + 17, 5.0)])
    pipeline = fitted(X, n_estimators=10)
    np.testing.assert_allclose(CompiledForest(pipeline).anomaly_scores(X), -pipeline.score_samples(X), atol=1e-12)


def test_unknown_pipelines_fall_back_to_sklearn(caplog):
    assert compile_forest(object()) is None
    assert "using scikit-learn" in caplog.text


def test_loaded_model_walks_the_flat_forest_in_c_at_any_size_and_with_numpy_for_small_batches(model_dir, prepared):
    import pandas as pd

    model = load_model_dir(model_dir)
    assert model.fast is not None
    X = pd.read_parquet(prepared.holdout_path)[list(model.schema.features)].to_numpy()
    small, large = X[:FAST_SCORING_MAX_ROWS], X[: FAST_SCORING_MAX_ROWS + 1]
    np.testing.assert_allclose(model.raw_scores(small), -model.pipeline.score_samples(small), atol=1e-12)
    np.testing.assert_allclose(model.raw_scores(large), -model.pipeline.score_samples(large), atol=1e-12)
    calls = []
    walk = model.fast.anomaly_scores
    model.fast.anomaly_scores = lambda rows: calls.append(len(rows)) or walk(rows)
    model.raw_scores(small)
    model.raw_scores(large)
    assert calls == (
        [FAST_SCORING_MAX_ROWS, FAST_SCORING_MAX_ROWS + 1] if model.fast.walks_in_c else [FAST_SCORING_MAX_ROWS]
    )
    model.fast._nodes = None  # installed without a C compiler: the numpy walk, small batches only
    calls.clear()
    model.raw_scores(small)
    model.raw_scores(large)
    assert calls == [FAST_SCORING_MAX_ROWS]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_gpu_path_code_matches_scikit_learn(model_dir, prepared, windowed, device):
    """The torch path on torch's CPU device (same code as on CUDA) and, on a GPU node, on
    CUDA; also for a windowed model whose raw-metric trees see only the first columns."""
    import pandas as pd

    torch = pytest.importorskip(
        "torch", reason="torch is not installed: pip install -e '.[dev,gpu]' runs this parity test"
    )
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch: the CUDA parity test runs on a GPU node")
    from anomaly_mlops.model.gpu_scoring import TorchForest, measure_gpu_path

    model = load_model_dir(model_dir)
    X = pd.read_parquet(prepared.holdout_path)[list(model.schema.features)].to_numpy()
    reference = -model.pipeline.score_samples(X)
    np.testing.assert_allclose(TorchForest(model.fast, device).anomaly_scores(X), reference, atol=1e-12)
    measured = measure_gpu_path(model.fast, X, reference, batch_sizes=(1, 100), repeats=3, device=device)
    assert measured["measured"] and measured["max_abs_diff_vs_cpu"] < 1e-12
    assert set(measured["batches"]) == {"1", "100"} and measured["batches"]["100"]["rows_per_second"] > 0
    windowed_model, metrics = windowed
    features = windowed_model.transform.apply(metrics[:500])
    widths = {len(f) for f in windowed_model.pipeline.named_steps["iforest"].estimators_features_}
    assert widths == {6, 18}  # trees on the raw metrics and trees on every column
    np.testing.assert_allclose(
        TorchForest(windowed_model.fast, device).anomaly_scores(features),
        -windowed_model.pipeline.score_samples(features),
        rtol=0,
        atol=1e-12,
    )


def test_gpu_path_says_why_it_was_not_measured(model_dir):
    from anomaly_mlops.model.gpu_scoring import measure_gpu_path

    model = load_model_dir(model_dir)
    X = np.zeros((10, len(model.schema)))
    result = measure_gpu_path(model.fast, X, np.zeros(10))
    from anomaly_mlops.model.gpu_scoring import nvidia_device_visible

    if not nvidia_device_visible():  # decided without importing torch
        assert result == {"measured": False, "reason": "no GPU was seen on this node (no /dev/nvidia* device)"}
    torch = pytest.importorskip("torch")
    assert measure_gpu_path(None, X, np.zeros(10), device="cpu")["measured"] is False
    if nvidia_device_visible() and not torch.cuda.is_available():
        assert result == {"measured": False, "reason": "no CUDA device visible to torch"}
