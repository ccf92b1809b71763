"""The reconstruction error added to the forest's score (model/reconstruction.py): its
definition, where it is left out, how a model carries it, and that a served score is the
sum of the two that training calibrated."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly_mlops.errors import ArtifactError, ConfigError
from anomaly_mlops.model.artifacts import load_model_dir, load_serving_model, write_manifest
from anomaly_mlops.model.reconstruction import ReconstructionScore
from anomaly_mlops.params import TrainParams
from anomaly_mlops.sources.synthetic import generate_synthetic
from anomaly_mlops.steps.train import train


def correlated(n: int, seed: int = 0) -> np.ndarray:
    """Four metrics driven by one load: they move together."""
    rng = np.random.default_rng(seed)
    load = rng.uniform(0.2, 0.8, size=n)
    return np.column_stack([load, 2 * load, 1 - load, 0.5 * load]) + rng.normal(0, 0.01, size=(n, 4))


def test_the_error_is_the_squared_distance_from_the_kept_axes():
    M = correlated(2000)
    score = ReconstructionScore.fit(M, 0.9)
    assert score.axes.shape == (4, 1)  # one load explains over 90%
    Z = (M - M.mean(axis=0)) / M.std(axis=0)
    explicit = ((Z - Z @ score.axes @ score.axes.T) ** 2).sum(axis=1)
    np.testing.assert_allclose(score.errors(M), explicit, rtol=1e-9, atol=1e-12)
    # A row with every metric inside its range that breaks how they move together: far off the
    # axis, though no single column is unusual.
    broken = np.array([[0.8, 0.4, 0.8, 0.1]])
    assert ((broken >= M.min(axis=0)) & (broken <= M.max(axis=0))).all()
    assert score.errors(broken)[0] > 100 * np.quantile(score.errors(M), 0.99)


def test_nothing_to_reconstruct_gives_no_second_score():
    M = correlated(500)
    assert ReconstructionScore.fit(M[:, :1], 0.9) is None  # one metric: the axis is the metric
    assert ReconstructionScore.fit(M, 0.0) is None  # switched off
    assert ReconstructionScore.fit(np.ones((100, 3)), 0.9) is None  # no variance at all
    assert ReconstructionScore.fit(np.random.default_rng(1).normal(size=(500, 3)), 0.99) is None  # every axis kept
    score = ReconstructionScore.fit(M, 0.9)
    # Errors that do not spread on the held-back rows cannot be weighed against the forest's scores.
    assert score.calibrated(np.linspace(0.4, 0.6, 50), np.zeros(50)) is None
    weighed = score.calibrated(np.linspace(0.4, 0.6, 100), np.linspace(0, 10, 100))
    assert weighed.offset == pytest.approx(5.0) and weighed.weight == pytest.approx(0.2 * 0.48 / (10 * 0.48))


def test_a_metric_constant_in_training_is_not_divided_by_zero():
    M = correlated(500)
    M[:, 3] = 0.25
    score = ReconstructionScore.fit(M, 0.9)
    assert score.scale[3] == 1.0
    moved = M[:5].copy()
    moved[:, 3] = 0.75
    assert np.all(np.isfinite(score.errors(moved))) and np.all(score.errors(moved) > score.errors(M[:5]))


@pytest.mark.parametrize("variance", [1.0, -0.1, True, 1.5, None, "0.9"])
def test_the_share_is_checked(variance):
    with pytest.raises(ConfigError, match="reconstruction_variance must be in"):
        TrainParams(reconstruction_variance=variance).check()


@pytest.fixture(scope="module")
def windowed_raw(tmp_path_factory):
    """A windowed model on the metrics as they come (the default's basis), with the second score
    (tests/conftest.py's ``windowed`` has it on the principal basis, for the servers' tests)."""
    frame = generate_synthetic(3000, seed=3)
    path = tmp_path_factory.mktemp("data") / "train.csv"
    frame.to_csv(path, index=False)
    out = tmp_path_factory.mktemp("model") / "m"
    train(
        str(path), out, TrainParams(n_estimators=30, feature_window=15, score_smoothing=4, reconstruction_variance=0.9)
    )
    return out, frame.iloc[:, 1:7].to_numpy(), path


def test_a_windowed_model_adds_the_error_its_training_calibrated(windowed_raw):
    model_dir, X, _ = windowed_raw
    metadata = json.loads((model_dir / "metadata.json").read_text())
    second = metadata["reconstruction_score"]
    assert second["variance"] == 0.9 and second["weight"] > 0 and len(second["center"]) == 6
    for model in (load_model_dir(model_dir), load_serving_model(model_dir)):
        assert model.reconstruction is not None
        features = model.transform.apply(X)
        forest = model.forest_scores(features)
        np.testing.assert_allclose(
            model.raw_scores(features), forest + model.reconstruction.scores(X), rtol=0, atol=1e-12
        )
        # the sum moves the scores: the second score is not a constant
        assert np.std(model.raw_scores(features) - forest) > 0.1 * np.std(forest)
    # the same scores, row by row, as a server computes them with each row's history
    model = load_serving_model(model_dir)
    offline = model.anomaly_scores(X[:200])
    raw = np.concatenate([model.raw_scores(model.transform.apply(X[: i + 1], 1)) for i in range(200)])
    from anomaly_mlops.model.features import smooth_scores

    np.testing.assert_allclose(smooth_scores(raw, model.smoothing), offline, rtol=0, atol=1e-12)


def test_a_row_wise_model_and_the_switch_leave_the_forest_alone(model_dir, windowed_raw, tmp_path):
    assert json.loads((model_dir / "metadata.json").read_text())["reconstruction_score"] is None
    assert load_serving_model(model_dir).reconstruction is None
    out = train(
        str(windowed_raw[2]),
        tmp_path / "off",
        TrainParams(n_estimators=30, feature_window=15, reconstruction_variance=0),
    )
    assert out.metadata["reconstruction_score"] is None


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda r: r.update(weight=0.0), "weight above 0"),
        (lambda r: r.update(offset=float("nan")), "must be finite"),
        (lambda r: r.update(center=r["center"][:-1]), "must have 6 values"),
        (lambda r: r.update(axes=[row + [0.0] * 6 for row in r["axes"]]), "axes must be 6 x k"),
        (lambda r: r.pop("scale"), "scale"),
    ],
)
def test_a_damaged_reconstruction_score_is_refused_at_load(windowed_raw, tmp_path, change, says):
    import shutil

    model_dir = shutil.copytree(windowed_raw[0], tmp_path / "m")
    metadata = json.loads((model_dir / "metadata.json").read_text())
    change(metadata["reconstruction_score"])
    (model_dir / "metadata.json").write_text(json.dumps(metadata))
    write_manifest(model_dir)  # as if written so: the loader's own checks, not the checksum, refuse it
    for load in (load_serving_model, load_model_dir):
        with pytest.raises(ArtifactError, match=f"reconstruction_score.*{says}|{says}"):
            load(model_dir)


def test_the_model_card_says_which_score_the_model_serves(model_dir, windowed_raw):
    from anomaly_mlops.steps.model_card import build_card

    assert "| second score | none (the forest's score alone) |" in build_card(model_dir, "v1").markdown
    card = build_card(windowed_raw[0], "v2").markdown
    assert "| second score | reconstruction error from the axes of 90% of the variance (" in card


def test_on_the_principal_basis_the_error_is_the_same_distance():
    """Under the principal basis the columns are the standardized metrics already rotated:
    fitted without scaling them again, the kept axes are the largest components and the
    error is the one the metrics themselves give."""
    from anomaly_mlops.model.features import MetricBasis

    M = correlated(2000)
    basis = MetricBasis.fit(M)
    on_axes = ReconstructionScore.fit(basis.project(M), 0.9, standardized=True)
    assert on_axes is not None and on_axes.axes.shape == (4, 1)
    np.testing.assert_allclose(on_axes.errors(basis.project(M)), ReconstructionScore.fit(M, 0.9).errors(M), rtol=1e-6)
    # scaled again, every component has unit spread and no axis explains more than another
    assert ReconstructionScore.fit(basis.project(M), 0.9) is None
