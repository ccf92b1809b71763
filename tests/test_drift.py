"""Metrics outside the range the forest was fitted on: recorded by train, named by validate."""

import json

import numpy as np
import pandas as pd
import pytest
from test_train_validate import FAST_LATENCY

from anomaly_mlops.errors import ArtifactError
from anomaly_mlops.model.artifacts import METADATA_FILE, load_model_dir, write_manifest
from anomaly_mlops.model.drift import ScoreReference, describe_outside, outside_training_range, training_ranges
from anomaly_mlops.sources.files import load_dataset
from anomaly_mlops.steps.train import calibration_mask
from anomaly_mlops.steps.validate import Gates, validate


def validate_unlabelled(model_dir, frame, tmp_path, max_flagged_rate_ratio: float, caplog):
    """validate on ``frame``'s rows without labels, with that flagged-rate gate, logs captured."""
    frame.drop(columns=["is_anomaly"], errors="ignore").to_parquet(tmp_path / "recent.parquet")
    with caplog.at_level("INFO", logger="anomaly_mlops.steps.validate"):
        return validate(
            model_dir,
            str(tmp_path / "recent.parquet"),
            tmp_path / "out",
            Gates(max_flagged_rate_ratio=max_flagged_rate_ratio),
            FAST_LATENCY,
        )


def test_rows_outside_the_training_range_are_counted_per_metric():
    fitted = np.array([[0.0, 10.0, 5.0], [1.0, 20.0, 5.0], [2.0, 30.0, 5.0]])
    ranges = training_ranges(fitted)
    assert ranges == {"min": [0.0, 10.0, 5.0], "max": [2.0, 30.0, 5.0]}
    rows = np.array(
        [
            [2.0, 10.0, 5.0],  # on the edges: inside
            [3.0, 20.0, 5.0],  # a above
            [-1.0, 31.0, 5.0],  # a below, b above
            [1.0, 20.0, 6.0],  # c moved, but c was constant in training: no tree splits on it
        ]
    )
    found = outside_training_range(rows, ranges, ("a", "b", "c"))
    assert found == {"rows_share": 0.5, "metrics": {"a": 0.5, "b": 0.25}, "constant_in_training": ["c"]}
    assert describe_outside(found) == "50.0% of rows (by metric: a 50.0%, b 25.0%)"
    assert describe_outside(found, top=1) == "50.0% of rows (by metric: a 50.0%, and 1 more)"
    inside = outside_training_range(fitted, ranges, ("a", "b", "c"))
    assert inside["rows_share"] == 0.0 and inside["metrics"] == {}
    with pytest.raises(ValueError, match="cover 3 metrics, the rows have 2"):
        outside_training_range(rows[:, :2], ranges, ("a", "b"))


def test_train_records_the_range_of_the_rows_the_forest_was_fitted_on(model_dir, prepared):
    """Neither the held-back calibration rows nor the rows labelled anomalous are part of
    it: the forest never saw them."""
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    data = load_dataset(str(prepared.train_path))
    held = calibration_mask(data.n_rows, data.entities, meta["params"]["calibration_fraction"])
    fitted = data.X[~held & (data.y != 1)]
    assert meta["training_ranges"] == {"min": fitted.min(axis=0).tolist(), "max": fitted.max(axis=0).tolist()}
    # this data set's extremes lie in rows the forest did not see, else the test could not tell them apart
    assert meta["training_ranges"]["max"] != data.X[~held].max(axis=0).tolist()
    assert meta["training_ranges"]["max"] != data.X[data.y != 1].max(axis=0).tolist()


def test_validate_names_the_metric_that_moved_and_says_what_over_flagging_likely_means(
    model_dir, prepared, tmp_path, caplog
):
    frame = pd.read_parquet(prepared.holdout_path).drop(columns=["is_anomaly"])
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    names = meta["schema"]["features"]
    moved = names[1]
    frame[moved] = meta["training_ranges"]["max"][1] + 1.0 + frame[moved].abs()  # every row above its range
    result = validate_unlabelled(model_dir, frame, tmp_path, 0.01, caplog)
    found = result.metrics["outside_training_range"]
    assert found["rows_share"] == 1.0 and next(iter(found["metrics"].items())) == (moved, 1.0)
    assert [g["gate"] for g in result.gates if not g["passed"]] == ["flagged_rate"]
    warning = [r for r in caplog.records if r.levelname == "WARNING" and "outside the training range" in r.message]
    assert len(warning) == 1 and f"{moved} 100.0%" in warning[0].message
    assert "train on more recent rows" in warning[0].message
    report = result.report_path.read_text()
    assert "100.0% of the holdout rows hold a metric outside the range" in report and f"<td>{moved}</td>" in report
    assert "The flagged-rate gate failed: a level that moved since the training rows" in report
    stored = json.loads(result.metrics_path.read_text())["metrics"]["outside_training_range"]
    assert stored == found


def test_the_hint_is_given_only_where_rows_outside_the_range_could_explain_the_flags(
    model_dir, prepared, tmp_path, caplog
):
    """Over-flagging that the rows outside the training range cannot account for (fewer of
    them than the gate allows flagged) gets no hint about moved levels, only the figures."""
    result = validate_unlabelled(model_dir, pd.read_parquet(prepared.holdout_path), tmp_path, 1.5, caplog)
    gate = next(g for g in result.gates if g["gate"] == "flagged_rate")
    found = result.metrics["outside_training_range"]
    assert not gate["passed"] and 0 < found["rows_share"] < gate["threshold"] < gate["value"]
    mentions = [r for r in caplog.records if "outside the training range" in r.message]
    assert [r.levelname for r in mentions] == ["INFO"] and "train on more recent rows" not in mentions[0].message
    report = result.report_path.read_text()
    assert "of the holdout rows hold a metric outside the range" in report and "train on more recent rows" not in report


def test_a_model_trained_before_ranges_were_recorded_still_validates(copy_model, prepared, tmp_path, caplog):
    model = copy_model()
    meta = json.loads((model / METADATA_FILE).read_text())
    del meta["training_ranges"]
    (model / METADATA_FILE).write_text(json.dumps(meta))
    write_manifest(model)
    with caplog.at_level("INFO", logger="anomaly_mlops.steps.validate"):
        result = validate(model, str(prepared.holdout_path), tmp_path / "out", latency=FAST_LATENCY)
    assert result.metrics["outside_training_range"] is None and result.passed
    assert "does not record its training ranges" in caplog.text
    assert "Not recorded: this model's train step did not record each metric's range" in result.report_path.read_text()


def test_train_records_the_calibration_scores_deciles_as_the_served_score_reference(model_dir):
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    reference = ScoreReference.of_model(meta)
    assert len(reference.shares) == 10 and sum(reference.shares) == pytest.approx(1.0)
    assert all(abs(share - 0.1) < 0.01 for share in reference.shares)  # deciles: a tenth each
    assert reference.flagged_share == pytest.approx(meta["threshold_method"]["calibration_flagged_share"], abs=1e-6)
    assert meta["calibration_score_quantiles"]["0.5"] == pytest.approx(reference.edges[4])


def test_score_reference_psi_is_the_champion_gates_psi():
    """The PSI the served-score bins give is the one validate gates on (steps/champion.psi)."""
    from anomaly_mlops.steps.champion import psi

    rng = np.random.default_rng(3)
    calibration, served = rng.gamma(2.0, 0.1, 4000), rng.gamma(2.5, 0.1, 900)
    reference = ScoreReference.of_scores(calibration, threshold=0.5)
    assert reference.flagged_share == pytest.approx(np.mean(calibration > 0.5))
    assert reference.psi(reference.counts(served)) == pytest.approx(psi(calibration, served), rel=1e-12)
    assert reference.psi(reference.counts(calibration)) == pytest.approx(0.0, abs=1e-12)
    # the bins: below the first edge, between edges (left-closed), at or above the last
    edges = reference.edges
    assert list(reference.bin_of(np.array([edges[0] - 1, edges[0], edges[-1], edges[-1] + 1]))) == [0, 1, 9, 9]


@pytest.mark.parametrize(
    "broken",
    [
        {"bin_edges": [0.3, 0.2], "bin_shares": [0.3, 0.3, 0.4], "flagged_share": 0.02},
        {"bin_edges": [0.2, 0.3], "bin_shares": [0.5, 0.5], "flagged_share": 0.02},
        {"bin_edges": [0.2, "NaN"], "bin_shares": [0.3, 0.3, 0.4], "flagged_share": 0.02},
        {"bin_edges": [0.2, 0.3], "bin_shares": [0.3, 0.3, 0.4]},
    ],
)
def test_a_malformed_score_reference_stops_the_model_from_loading(copy_model, broken):
    model = copy_model()
    meta = json.loads((model / METADATA_FILE).read_text())
    meta["score_reference"] = broken
    (model / METADATA_FILE).write_text(json.dumps(meta))
    write_manifest(model)
    with pytest.raises(ArtifactError, match="score_reference"):
        load_model_dir(model)


def test_single_row_walks_are_counted_in_the_bins_a_batch_gives(model_dir):
    """A single-row walk (the serving norm) is counted without numpy: the same bin as
    ScoreReference.counts gives it, scores on an edge included, and the same flagged count."""
    from prometheus_client import CollectorRegistry

    from anomaly_mlops.serving.protocol import ServedScoreCounters, served_score_counters

    model = load_model_dir(model_dir)
    edges = np.asarray(model.metadata["score_reference"]["bin_edges"])
    scores = np.concatenate([edges, np.nextafter(edges, -np.inf), [0.0, 1.0, edges[0] - 0.1, edges[-1] + 0.1]])
    predictions = model.label(scores)

    def counted(observe_rows) -> list[float]:
        registry = CollectorRegistry()
        counters = ServedScoreCounters(model, "m", "v1", served_score_counters(registry))
        observe_rows(counters)
        values = {(s.name, s.labels.get("bin")): s.value for family in registry.collect() for s in family.samples}
        bins = [values[("anomaly_detector_score_bin_rows_total", str(i))] for i in range(len(edges) + 1)]
        return [
            values[("anomaly_detector_rows_scored_total", None)],
            values[("anomaly_detector_rows_flagged_total", None)],
            *bins,
        ]

    def one_by_one(counters):
        for i in range(len(scores)):
            counters.observe(predictions[i : i + 1], scores[i : i + 1])

    batched = counted(lambda counters: counters.observe(predictions, scores))
    assert counted(one_by_one) == batched
    reference = ScoreReference.of_model(model.metadata)
    assert batched[2:] == list(reference.counts(scores)) and batched[0] == len(scores)


def test_a_model_without_a_score_reference_counts_rows_but_no_bins(model_dir):
    from prometheus_client import CollectorRegistry, generate_latest

    from anomaly_mlops.serving.protocol import ServedScoreCounters, served_score_counters

    model = load_model_dir(model_dir)
    del model.metadata["score_reference"]
    registry = CollectorRegistry()
    counters = ServedScoreCounters(model, "m", "v3", served_score_counters(registry))
    counters.observe(np.array([-1, 1, 1], dtype=np.int8), np.array([0.9, 0.1, 0.2]))
    text = generate_latest(registry).decode()
    assert 'anomaly_detector_rows_scored_total{model="m",version="v3"} 3.0' in text
    assert 'anomaly_detector_rows_flagged_total{model="m",version="v3"} 1.0' in text
    assert "score_bin_rows_total{" not in text and "calibrated_flagged_share{" not in text


@pytest.mark.parametrize(
    "champion_flags, challenger_flags, psi_gated",
    [
        (0.90, 0.03, False),  # the champion storms on these rows, the challenger fits them: the shift is the repair
        (0.10, 0.03, True),  # the champion a little over the gate: still the reference
        (0.90, 0.20, True),  # the challenger over-flags too: the shift is no repair
    ],
)
def test_a_champion_that_storms_on_the_holdout_is_no_reference_for_the_score_shift(
    champion_flags, challenger_flags, psi_gated
):
    from anomaly_mlops.steps.validate import Gates, evaluate_gates

    metrics = {
        "roc_auc": None,
        "flagged_rate": challenger_flags,
        "expected_contamination": 0.02,
        "latency": {"single_row_ms": {"p99": 1.0}, "batches": {}},
        "champion": {"compared": True, "flagged_rate": champion_flags, "score_psi": 7.9},
    }
    (gate,) = [g for g in evaluate_gates(metrics, Gates()) if g["gate"] == "score_psi_vs_champion"]
    if psi_gated:
        assert "skipped" not in gate and not gate["passed"]
    else:
        assert gate["passed"] and "the champion no longer fits these rows" in gate["skipped"]
