import json

import numpy as np
import pandas as pd
import pytest
import sklearn

from anomaly_mlops.errors import ArtifactError, ConfigError, DataError
from anomaly_mlops.model.artifacts import MANIFEST_FILE, load_model_dir, verify_model_dir, write_manifest
from anomaly_mlops.sources.files import load_dataset
from anomaly_mlops.steps.train import TrainParams, train
from anomaly_mlops.steps.validate import Gates, LatencyPlan, evaluate_gates, validate

FAST_LATENCY = LatencyPlan(single_row_repeats=30, batch_sizes=(100,), batch_repeats=3, warmup=2)


def test_model_dir_contract(model_dir, prepared):
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "MANIFEST.sha256",
        "forest.npz",
        "metadata.json",
        "model.joblib",
        "model.skops",
    ]
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["schema"]["features"][0] == "cpu_usage_pct"
    assert meta["library_versions"]["scikit-learn"] == sklearn.__version__
    assert meta["data"]["sha256"] == load_dataset(str(prepared.train_path)).sha256
    assert meta["params"]["n_estimators"] == 50 and meta["params"]["seed"] == 7
    assert 0 < meta["threshold"] < 1
    assert set(verify_model_dir(model_dir)) == {"forest.npz", "metadata.json", "model.joblib", "model.skops"}


def test_threshold_comes_from_held_back_training_scores(model_dir, prepared):
    """The forest never saw the last 20% of the training rows; the threshold comes from
    their scores alone, no label sets it: by default the (1 - contamination) quantile, with
    threshold="pot" the peaks-over-threshold level (risk 0.001)."""
    from anomaly_mlops.steps.train import pot_threshold

    model = load_model_dir(model_dir)
    train = load_dataset(str(prepared.train_path))
    last = slice(-round(train.n_rows * 0.2), None)
    # of the held-back rows, those labelled anomalous set nothing (the next test)
    held_back = model.anomaly_scores(train.X)[last][train.y[last] != 1]
    assert model.metadata["threshold_method"]["method"] == "quantile"
    assert (held_back > model.threshold).mean() == pytest.approx(0.02, abs=0.002)  # contamination default
    pot = train_fn(prepared.train_path, model_dir.parent / "pot", threshold="pot")
    assert pot.metadata["threshold_method"]["method"] == "pot"
    assert pot.threshold == pytest.approx(pot_threshold(held_back, 0.001), abs=1e-12)
    assert (held_back > pot.threshold).mean() < 0.01


def test_rows_labelled_anomalous_are_neither_fitted_nor_calibrated_on(model_dir, prepared, tmp_path):
    """This data set's held-back rows hold an incident: fitted and calibrated on like any
    other row (--fit-labelled-anomalies, what the first releases did), it lifts the threshold
    above the holdout's anomalies and almost nothing is flagged."""
    train = load_dataset(str(prepared.train_path))
    last = slice(-round(train.n_rows * 0.2), None)
    assert train.y[last].mean() > 0.05  # the incident in the held-back rows
    left_out = load_model_dir(model_dir)
    assert left_out.metadata["labelled_anomalous_rows_left_out"] == int(train.y.sum()) > 0
    kept = train_fn(prepared.train_path, tmp_path / "kept", fit_labelled_anomalies=True)
    assert kept.metadata["labelled_anomalous_rows_left_out"] is None
    held_back = load_model_dir(kept.model_dir).anomaly_scores(train.X)[last]
    assert (held_back > kept.threshold).mean() == pytest.approx(0.02, abs=0.002)  # over every held-back row
    f1 = {
        name: validate(model, str(prepared.holdout_path), tmp_path / name, latency=FAST_LATENCY).metrics["f1"]
        for name, model in (("left_out", model_dir), ("kept", kept.model_dir))
    }
    assert f1["left_out"] > 0.6 and f1["kept"] < 0.1, f1


def test_rows_whose_window_holds_a_labelled_row_are_left_out_of_the_fit_only(prepared, tmp_path):
    """Their window columns describe the incident: not fitted on. Served rows after an
    incident look the same, so they still count among the held-back rows."""
    from anomaly_mlops.model.features import smooth_scores
    from anomaly_mlops.steps.train import calibration_mask, rows_whose_window_holds

    marked = np.array([0, 1, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    entities = np.array(["a"] * 6 + ["b"] * 3)
    assert rows_whose_window_holds(marked, entities, 3).astype(int).tolist() == [0, 1, 1, 1, 0, 0, 1, 1, 1]
    assert rows_whose_window_holds(marked, None, 1).tolist() == marked.tolist()

    train_data = load_dataset(str(prepared.train_path))
    result = train(str(prepared.train_path), tmp_path / "m", TrainParams(n_estimators=20, feature_window=30, seed=7))
    meta = result.metadata
    labelled = train_data.y == 1
    after = rows_whose_window_holds(labelled, None, 30) & ~labelled
    held = calibration_mask(train_data.n_rows, None, 0.2)
    assert meta["labelled_anomalous_rows_left_out"] == labelled.sum()
    assert meta["rows_after_labelled_left_out_of_fit"] == (after & ~held).sum() > 0  # of the fitted part
    fitted = ~held & ~labelled & ~after
    assert meta["training_ranges"]["max"] == train_data.X[fitted].max(axis=0).tolist()
    model = load_model_dir(result.model_dir)
    scores = smooth_scores(model.raw_scores(model.transform.apply(train_data.X)), model.smoothing)
    assert (held & after).any()  # an incident's aftermath among the held-back rows: calibrated on
    assert np.quantile(scores[held & ~labelled], 0.98) == pytest.approx(model.threshold, abs=1e-12)


def test_too_few_rows_not_labelled_anomalous_is_a_clear_error(tmp_path):
    import pandas as pd

    from anomaly_mlops.errors import DataError
    from anomaly_mlops.model.schema import FeatureSchema

    schema = FeatureSchema(("a", "b", "c"))
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(200, 3)), columns=list(schema.features))
    for name, labelled, message in (
        ("all", slice(None), "only 0 of the rows the forest would be fitted on"),
        ("calibration", slice(170, None), "only 10 of the held-back rows that set the threshold"),
    ):
        path = tmp_path / f"{name}.parquet"
        frame.assign(is_anomaly=(frame.index >= (labelled.start or 0)).astype(int)).to_parquet(path)
        with pytest.raises(DataError, match=message) as caught:
            train(str(path), tmp_path / name, TrainParams(feature_window=0, score_smoothing=0), schema)
        assert "--fit-labelled-anomalies" in str(caught.value) and not (tmp_path / name).exists()
        params = TrainParams(feature_window=0, score_smoothing=0, fit_labelled_anomalies=True)
        kept = train(str(path), tmp_path / f"{name}-kept", params, schema)
        assert kept.metadata["labelled_anomalous_rows_left_out"] is None
    # the CLI: a one-line error (exit 2), and the flag that keeps them
    from test_cli import run

    args = ("train", "--data", str(path), "--schema", "a,b,c", "--feature-window", "0", "--score-smoothing", "0")
    refused = run(*args, "--out", str(tmp_path / "cli"), check=False)
    assert refused.returncode == 2 and "only 10 of the held-back rows" in refused.stderr
    assert "Traceback" not in refused.stderr
    run(*args, "--out", str(tmp_path / "cli-kept"), "--fit-labelled-anomalies")
    meta = json.loads((tmp_path / "cli-kept" / "metadata.json").read_text())
    assert meta["labelled_anomalous_rows_left_out"] is None and meta["params"]["fit_labelled_anomalies"] is True


def test_a_tail_too_thin_for_a_pot_fit_falls_back_to_the_quantile_and_says_so(caplog):
    from anomaly_mlops.steps.train import POT_FALLBACK, fit_detector

    X = np.random.default_rng(3).normal(size=(400, 4))  # 80 held-back rows: 2 above their 98th percentile
    with caplog.at_level("WARNING", logger="anomaly_mlops.steps.train"):
        fitted = fit_detector(X, TrainParams(n_estimators=20, threshold="pot"))
    assert fitted.threshold_detail["method"] == POT_FALLBACK
    assert fitted.threshold == pytest.approx(np.quantile(fitted.calibration_scores, 0.98), abs=1e-12)
    assert "too few calibration rows for a peaks-over-threshold fit" in caplog.text


def train_fn(path, out, **params):
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return train(str(path), out, TrainParams(n_estimators=50, seed=7, feature_window=0, score_smoothing=0, **params))


def test_pipeline_predict_agrees_with_threshold(model_dir, prepared):
    """The upstream KServe sklearn runtime calls predict(); it must flag the same rows."""
    model = load_model_dir(model_dir)
    X = load_dataset(str(prepared.holdout_path)).X
    labels, _ = model.score(X)
    assert np.array_equal(model.pipeline.predict(X), labels) and set(labels) == {-1, 1}


def test_training_is_reproducible(prepared, tmp_path):
    a = train(str(prepared.train_path), tmp_path / "a", TrainParams(n_estimators=20, seed=3))
    b = train(str(prepared.train_path), tmp_path / "b", TrainParams(n_estimators=20, seed=3))
    X = load_dataset(str(prepared.holdout_path)).X
    assert a.threshold == b.threshold
    np.testing.assert_array_equal(
        load_model_dir(a.model_dir).anomaly_scores(X), load_model_dir(b.model_dir).anomaly_scores(X)
    )


def test_train_refuses_non_empty_output_and_bad_params(prepared, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not empty"):
        train(str(prepared.train_path), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    with pytest.raises(ConfigError, match="contamination"):
        train(str(prepared.train_path), tmp_path / "x", TrainParams(contamination=0.7))
    # seeds scikit-learn refuses with a traceback (the raw-metric trees take seed + 1)
    for seed in (-1, 2**32 - 1, 1.5, True):
        with pytest.raises(ConfigError, match=r"seed must be an integer from 0 to 4294967294"):
            train(str(prepared.train_path), tmp_path / "x", TrainParams(seed=seed))
    assert not (tmp_path / "x").exists()


def test_data_refuses_a_seed_numpy_cannot_take(tmp_path):
    from anomaly_mlops.steps.data import prepare_data

    with pytest.raises(ConfigError, match=r"seed must be an integer from 0 to 4294967294, got -1"):
        prepare_data(tmp_path / "data", rows=2000, seed=-1)
    assert not (tmp_path / "data").exists()


def test_tampered_model_is_refused_before_unpickling(copy_model):
    model = copy_model()
    (model / "model.joblib").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(ArtifactError, match="checksum mismatch for .*model.joblib"):
        load_model_dir(model)


def test_missing_or_extra_files_are_refused(copy_model):
    incomplete = copy_model("incomplete")
    (incomplete / MANIFEST_FILE).unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        load_model_dir(incomplete)
    extra = copy_model("extra")
    (extra / "evil.py").write_text("print(1)")
    with pytest.raises(ArtifactError, match=r"not in its manifest: \['evil.py'\]"):
        load_model_dir(extra)


def test_model_from_another_sklearn_is_refused(copy_model):
    model = copy_model()
    meta = json.loads((model / "metadata.json").read_text())
    meta["library_versions"]["scikit-learn"] = "0.24.2"
    (model / "metadata.json").write_text(json.dumps(meta))
    write_manifest(model)  # consistent checksums: the version check itself must refuse
    with pytest.raises(ArtifactError, match="trained with scikit-learn 0.24.2"):
        load_model_dir(model)


def test_validate_measures_gates_and_reports(model_dir, prepared, tmp_path):
    result = validate(model_dir, str(prepared.holdout_path), tmp_path, Gates(), FAST_LATENCY)
    m = result.metrics
    assert m["roc_auc"] > 0.85 and m["pr_auc"] > 0.3
    assert 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert m["holdout_anomalies"] > 0
    lat = m["latency"]["single_row_ms"]
    assert lat["n"] == 30 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert m["latency"]["batches"]["100"]["rows_per_second"] > 0
    assert m["device"]["scoring_device"] == "cpu" and m["device"]["gpu_note"]
    gpu = m["latency"]["gpu"]
    assert gpu["measured"] or gpu["reason"] in (
        "no GPU was seen on this node (no /dev/nvidia* device)",
        "no CUDA device visible to torch",
        "torch is not installed (pip install 'anomaly-mlops[gpu]')",
    )
    assert result.passed
    doc = json.loads(result.metrics_path.read_text())
    assert doc["gate_passed"] is True and len(doc["roc_curve"]["fpr"]) <= 200
    (tn, fp), (fn, tp) = doc["confusion_matrix"]["matrix"]
    assert tn + fp + fn + tp == m["holdout_rows"] and tp + fp == m["flagged_rows"]
    report = result.report_path.read_text()
    assert "Release gate PASSED" in report and report.count("data:image/png;base64,") == 3
    left_out = int(load_dataset(str(prepared.train_path)).y.sum())
    assert (
        f"Detector: 50 trees of 4096 rows, raw metrics, threshold: quantile, {left_out} training rows labelled "
        "anomalous left out." in report
    )
    assert "GPU scoring path" in report and ("Not measured: " in report) != gpu["measured"]
    for picture in ("roc.png", "scores.png", "latency.png"):
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gate_failure_is_reported(model_dir, prepared, tmp_path):
    result = validate(
        model_dir,
        str(prepared.holdout_path),
        tmp_path,
        Gates(min_roc_auc=0.999, max_single_row_p99_ms=None),
        FAST_LATENCY,
    )
    assert not result.passed
    failed = [g["gate"] for g in result.gates if not g["passed"]]
    assert failed == ["roc_auc"]
    assert "Release gate FAILED" in result.report_path.read_text()


def test_training_data_shorter_than_the_window_is_refused(tmp_path, caplog):
    """No series longer than the feature window: no row has a complete window, so the forest
    would judge served rows by features it never saw. Refused, nothing written; a short
    series among longer ones is fitted with a warning."""
    from anomaly_mlops.errors import DataError
    from anomaly_mlops.sources.synthetic import generate_synthetic
    from anomaly_mlops.steps.train import check_series_cover_the_window

    path = tmp_path / "short.csv"
    generate_synthetic(rows=100, seed=1).to_csv(path, index=False)
    with pytest.raises(DataError, match="longest series has 100 rows, no more than the 120-row feature window"):
        train(str(path), tmp_path / "m", TrainParams(n_estimators=5))
    assert not (tmp_path / "m").exists()
    assert train(str(path), tmp_path / "raw", TrainParams(n_estimators=5, feature_window=0)).model_dir.exists()
    entities = np.array(["a"] * 200 + ["b"] * 50)
    with caplog.at_level("WARNING"):
        check_series_cover_the_window(entities, 250, 120, 120)
    assert "1 of 2 series have no more rows than the 120-row feature window" in caplog.text


def test_validate_refuses_a_holdout_too_small_to_gate_on(model_dir, prepared, tmp_path):
    """A row or two: a flagged rate of 0 or 1 would decide the release."""
    rows = pd.read_parquet(prepared.holdout_path)
    rows.head(9).to_parquet(tmp_path / "nine.parquet")
    with pytest.raises(DataError, match="validate needs at least 10 holdout rows, got 9"):
        validate(model_dir, str(tmp_path / "nine.parquet"), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_validate_refuses_a_model_the_named_runtime_cannot_serve(model_dir, prepared, tmp_path):
    """validate --runtime: the check deploy makes, made before anything is measured (the
    pipelines pass their runtime here, so such a model is never published)."""
    import subprocess
    import sys

    windowed = train(str(prepared.train_path), tmp_path / "windowed", TrainParams(n_estimators=10)).model_dir
    fast = LatencyPlan(single_row_repeats=5, batch_sizes=(10,), batch_repeats=2)
    with pytest.raises(
        ConfigError,
        match="--runtime sklearn scores each row alone on the metrics as sent, but this model uses a 120-row",
    ):
        validate(windowed, str(prepared.holdout_path), tmp_path / "refused", latency=fast, runtime="sklearn")
    assert not (tmp_path / "refused").exists()
    assert validate(windowed, str(prepared.holdout_path), tmp_path / "custom", latency=fast, runtime="custom").passed
    assert validate(model_dir, str(prepared.holdout_path), tmp_path / "raw", latency=fast, runtime="sklearn").passed
    cli = [
        sys.executable,
        "-m",
        "anomaly_mlops.adapters.cli",
        "validate",
        "--model",
        str(windowed),
        "--runtime",
        "sklearn",
    ]
    result = subprocess.run(
        [*cli, "--holdout", str(prepared.holdout_path), "--out", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--runtime custom" in result.stderr and "Traceback" not in result.stderr


def test_gates_switch_off_with_none():
    metrics = {
        "roc_auc": 0.5,
        "pr_auc": 0.1,
        "f1": 0.0,
        "flagged_rate": 0.3,
        "expected_contamination": 0.02,
        "latency": {"single_row_ms": {"p99": 500.0}, "batches": {}},
    }
    off = Gates(None, None, None, None, max_auc_drop=None, max_score_psi=None, max_flagged_rate_ratio=None)
    assert evaluate_gates(metrics, off) == []
    gates = {g["gate"]: g for g in evaluate_gates(metrics, Gates())}
    assert [n for n, g in gates.items() if not g.get("skipped")] == ["roc_auc", "pr_auc", "single_row_p99_ms"]
    # With labels the label-free gates are listed as skipped, and so is a comparison without a champion.
    assert gates["flagged_rate"]["skipped"] == "labels measure accuracy directly"
    assert gates["roc_auc_vs_champion"]["skipped"] == "no champion"


def test_without_labels_validation_gates_on_what_it_can_measure(model_dir, prepared, tmp_path):
    import pandas as pd

    frame = pd.read_parquet(prepared.holdout_path)
    frame.drop(columns=["is_anomaly"]).to_parquet(tmp_path / "unlabelled.parquet")
    frame.assign(is_anomaly=0).to_parquet(tmp_path / "normal.parquet")
    for name, why in (("unlabelled", "no labels"), ("normal", "labels of one class only (0 anomalous)")):
        result = validate(model_dir, str(tmp_path / f"{name}.parquet"), tmp_path / name, latency=FAST_LATENCY)
        gates = {g["gate"]: g for g in result.gates}
        assert result.metrics["roc_auc"] is None and result.metrics["labels"] == why
        assert gates["roc_auc"]["skipped"] == "no labels" and "skipped" not in gates["flagged_rate"]
        assert gates["flagged_rate"]["threshold"] == 0.06 and result.passed  # 3 x contamination 0.02
        report = result.report_path.read_text()
        assert f"Not measured: the holdout has {why}" in report and not (tmp_path / name / "roc.png").exists()
    # A model that flags far more than its contamination fails the label-free gate.
    strict = validate(
        model_dir,
        str(tmp_path / "unlabelled.parquet"),
        tmp_path / "strict",
        Gates(max_flagged_rate_ratio=0.01),
        FAST_LATENCY,
    )
    assert not strict.passed and [g["gate"] for g in strict.gates if not g["passed"]] == ["flagged_rate"]


def test_time_series_feature_model_end_to_end(prepared, tmp_path):
    """feature_window: trained on causal features, recorded in metadata, applied on load."""
    from anomaly_mlops.model.features import FeatureTransform

    result = train(
        str(prepared.train_path),
        tmp_path / "ts",
        TrainParams(
            n_estimators=50,
            seed=7,
            feature_window=30,
            window_columns="delta,deviation,std",
            raw_tree_share=0.0,
            score_smoothing=0,
            metric_basis="raw",
        ),
    )
    meta = json.loads((result.model_dir / "metadata.json").read_text())
    # 30 minutes at the data's one row a minute (from its timestamps): 30 rows.
    assert meta["feature_transform"] == {
        "kind": "causal-rolling",
        "window": 30,
        "columns": ["delta", "deviation", "std"],
        "window_minutes": 30,
        "sample_interval_s": 60.0,
    }
    model = load_model_dir(result.model_dir)
    X = load_dataset(str(prepared.holdout_path)).X
    expected = -model.pipeline.score_samples(FeatureTransform(30).apply(X))
    np.testing.assert_allclose(model.anomaly_scores(X), expected, atol=1e-12)
    np.testing.assert_allclose(model.anomaly_scores(X[:300]), expected[:300], atol=1e-12)  # fast path, causal
    validation = validate(result.model_dir, str(prepared.holdout_path), tmp_path / "val", Gates(), FAST_LATENCY)
    assert validation.metrics["feature_window"] == 30 and validation.metrics["roc_auc"] > 0.85
    with pytest.raises(ConfigError, match="feature_window is in minutes"):
        train(str(prepared.train_path), tmp_path / "bad", TrainParams(feature_window=-1))


def test_chosen_window_columns_and_raw_trees_are_recorded_served_and_compared(prepared, tmp_path):
    """window_columns, raw_tree_share and the reconstruction error reach metadata.json; both
    loaders (scikit-learn from skops, the flattened forest for the lean server) score the
    model alike; validate names them among the settings that put scores on another scale."""
    from anomaly_mlops.model.artifacts import load_serving_model
    from anomaly_mlops.steps.validate import describe_detector, detector_differences

    params = TrainParams(
        n_estimators=40,
        feature_window=30,
        window_columns="std,deviation",
        raw_tree_share=0.5,
        metric_basis="principal",
        reconstruction_variance=0.9,
    )
    result = train(str(prepared.train_path), tmp_path / "m", params)
    meta = json.loads((result.model_dir / "metadata.json").read_text())
    assert meta["feature_transform"]["columns"] == ["deviation", "std"]
    assert meta["params"]["raw_tree_share"] == 0.5 and meta["params"]["window_columns"] == "std,deviation"
    assert meta["forest"] == {"trees": 40, "raw_metric_trees": 20}
    assert describe_detector(meta) == (
        "40 trees of 4096 rows, metrics on their principal axes, features over 30 min (value, deviation, std), "
        "50% of the trees on the components alone, plus the reconstruction error off the axes of 90% of the "
        "variance, scores averaged over 10 min, threshold: quantile, "
        f"{int(load_dataset(str(prepared.train_path)).y.sum())} training rows labelled anomalous left out"
    )
    model, lean = load_model_dir(result.model_dir), load_serving_model(result.model_dir)
    assert [len(f) for f in model.pipeline.named_steps["iforest"].estimators_features_] == [18] * 20 + [6] * 20
    X = load_dataset(str(prepared.holdout_path)).X
    np.testing.assert_allclose(lean.anomaly_scores(X), model.anomaly_scores(X), rtol=0, atol=1e-12)
    every = TrainParams(
        n_estimators=40, feature_window=30, window_columns="delta,deviation,std", raw_tree_share=0.0, metric_basis="raw"
    )
    all_columns = train(str(prepared.train_path), tmp_path / "all", every)
    assert detector_differences(load_model_dir(all_columns.model_dir), model) == [
        "window_columns: delta,deviation,std -> deviation,std",
        "raw_tree_share: 0.0 -> 0.5",
        "metric_basis: raw -> principal",
        "reconstruction_variance: 0.0 -> 0.9",
    ]
    assert "principal axes" not in describe_detector(json.loads((all_columns.model_dir / "metadata.json").read_text()))


def test_the_principal_basis_is_fitted_recorded_and_checked_on_load(prepared, tmp_path):
    """The metrics go onto their principal axes when asked (the default is the raw metrics,
    params.DEFAULT_METRIC_BASIS): the basis is fitted on the rows the forest is fitted on,
    recorded in metadata.json, applied by both loaders alike, and a basis that does not fit the
    schema is refused on load. Without a window the model stays row-wise on the raw metrics
    (the upstream sklearn runtime's kind)."""
    from anomaly_mlops.model.artifacts import ArtifactError, load_serving_model, write_manifest
    from anomaly_mlops.model.features import MetricBasis

    default = train(str(prepared.train_path), tmp_path / "d", TrainParams(n_estimators=30, feature_window=30))
    meta = json.loads((default.model_dir / "metadata.json").read_text())
    assert meta["params"]["metric_basis"] is None and "basis" not in meta["feature_transform"]
    params = TrainParams(n_estimators=30, feature_window=30, metric_basis="principal")
    result = train(str(prepared.train_path), tmp_path / "m", params)
    meta = json.loads((result.model_dir / "metadata.json").read_text())
    basis = MetricBasis.from_dict(meta["feature_transform"]["basis"])
    assert meta["params"]["metric_basis"] == "principal" and len(basis.center) == len(meta["schema"]["features"])
    model, lean = load_model_dir(result.model_dir), load_serving_model(result.model_dir)
    assert model.transform.basis is not None and lean.transform.basis is not None
    X = load_dataset(str(prepared.holdout_path)).X
    np.testing.assert_allclose(lean.anomaly_scores(X), model.anomaly_scores(X), rtol=0, atol=1e-12)
    components = model.pipeline.named_steps["scaler"].mean_[: len(basis.center)]
    np.testing.assert_allclose(components, 0, atol=1e-6)  # centred on the fitted rows: the scaler sees components
    meta["feature_transform"]["basis"] = MetricBasis.fit(X[:, :3]).to_dict()
    (result.model_dir / "metadata.json").write_text(json.dumps(meta))
    write_manifest(result.model_dir)
    with pytest.raises(ArtifactError, match="metric basis is over 3 metrics, the schema has 6"):
        load_model_dir(result.model_dir)
    row_wise = train(str(prepared.train_path), tmp_path / "r", TrainParams(n_estimators=30, feature_window=0))
    assert "basis" not in json.loads((row_wise.model_dir / "metadata.json").read_text())["feature_transform"]


def test_the_trees_are_described_as_grown_not_as_asked(prepared, tmp_path):
    """A one-tree windowed forest has no tree to spare for the raw metrics (one tree must see
    every column): metadata, the report line and the scale comparison say so. Models written
    before "forest" was recorded fall back to the share asked for."""
    from anomaly_mlops.steps.validate import describe_detector, raw_tree_share

    result = train(str(prepared.train_path), tmp_path / "one", TrainParams(n_estimators=1, feature_window=30))
    meta = json.loads((result.model_dir / "metadata.json").read_text())
    assert meta["params"]["raw_tree_share"] == 0.5
    assert meta["forest"] == {"trees": 1, "raw_metric_trees": 0}
    assert raw_tree_share(meta) == 0.0
    assert "raw metrics alone" not in describe_detector(meta)
    older = {k: v for k, v in meta.items() if k != "forest"}
    assert raw_tree_share(older) == 0.5
    assert raw_tree_share({**older, "feature_transform": {"kind": "raw", "window": 0}}) == 0.0


def test_the_lean_server_loads_the_forest_arrays_without_scikit_learn(model_dir, prepared):
    """forest.npz reproduces scikit-learn's scores; loading it imports neither scikit-learn
    nor skops (the lean server's cold start)."""
    import subprocess
    import sys

    from anomaly_mlops.model.artifacts import load_serving_model

    rows = load_dataset(str(prepared.holdout_path)).X
    lean, full = load_serving_model(model_dir), load_model_dir(model_dir)
    assert lean.pipeline is None
    np.testing.assert_allclose(lean.anomaly_scores(rows), full.anomaly_scores(rows), rtol=0, atol=1e-12)
    np.testing.assert_allclose(lean.raw_scores(rows), -full.pipeline.score_samples(rows), rtol=0, atol=1e-12)
    probe = (
        "import sys; from anomaly_mlops.model.artifacts import load_serving_model; "
        f"load_serving_model({str(model_dir)!r}); "
        "print(sorted(m for m in ('sklearn', 'skops', 'joblib', 'scipy') if m in sys.modules))"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_forest_arrays_that_disagree_with_scikit_learn_are_refused(copy_model):
    from anomaly_mlops.model.artifacts import load_serving_model, write_manifest

    model = copy_model()
    with np.load(model / "forest.npz") as arrays:
        stored = {k: arrays[k] for k in arrays.files}
    stored["leaf_value"] = stored["leaf_value"] + 0.5  # a consistent manifest, a wrong forest
    np.savez(model / "forest.npz", **stored)
    write_manifest(model)
    with pytest.raises(ArtifactError, match="disagrees with scikit-learn's recorded probe scores"):
        load_serving_model(model)
    stored["left"] = stored["left"] + 10**9
    np.savez(model / "forest.npz", **stored)
    write_manifest(model)
    with pytest.raises(ArtifactError, match="child indices outside the node arrays"):
        load_serving_model(model)


def test_training_scores_only_the_rows_the_threshold_needs():
    """Scoring every training row with scikit-learn cost twice the fit; the calibration part
    and the smoothing's reach before it give the same threshold and calibration scores."""
    from anomaly_mlops.sources.synthetic import generate_synthetic
    from anomaly_mlops.steps.train import calibrate, fit_scores

    X = generate_synthetic(6000, seed=5).iloc[:, 1:7].to_numpy()
    params = TrainParams(n_estimators=30)
    k = 10
    full = fit_scores(X, params, 30, 60.0)
    part = fit_scores(X, params, 30, 60.0, smoothing=k)
    held = full[3]
    assert np.array_equal(held, part[3])
    first_held = int(np.flatnonzero(held)[0])
    assert not part[2][: first_held - k + 1].any()  # the fitted rows before the reach: not scored
    np.testing.assert_array_equal(part[2][first_held - k + 1 :], full[2][first_held - k + 1 :])
    scores_full, threshold_full, _ = calibrate(full[2], held, params, k)
    scores_part, threshold_part, _ = calibrate(part[2], held, params, k)
    assert threshold_part == pytest.approx(threshold_full, abs=1e-12)
    np.testing.assert_allclose(scores_part[held], scores_full[held], rtol=0, atol=1e-12)


def test_window_columns_written_in_place_equal_their_blocks():
    """The window columns are written into the result block by block (no full-size mean,
    deviation and spread matrices beside it); the figures are those of their definition."""
    from anomaly_mlops.model.features import FeatureTransform

    rng = np.random.default_rng(2)
    X = rng.normal(size=(20_000, 3))
    for columns in (("deviation", "std"), ("delta", "std"), ("std",), ("deviation",)):
        F = FeatureTransform(50, columns).apply(X)
        assert F.shape == (20_000, 3 * (1 + len(columns)))
        np.testing.assert_array_equal(F[:, :3], X)
        i = 12_345  # a row in the second chunk
        window = X[i - 49 : i + 1]
        for k, column in enumerate(columns):
            block = F[i, 3 * (k + 1) : 3 * (k + 2)]
            expected = {"deviation": X[i] - window.mean(axis=0), "std": window.std(axis=0, ddof=1),
                        "delta": X[i] - X[i - 1]}[column]  # fmt: skip
            np.testing.assert_allclose(block, expected, rtol=0, atol=1e-12)
