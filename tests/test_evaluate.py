"""Detection quality on the real labelled data in ../shared/data (skipped without it)."""

import json

import numpy as np
import pytest

from anomaly_mlops.errors import DataError
from anomaly_mlops.evaluate import evaluate, time_features

from conftest import SHARED_DATA

needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "smd").is_dir(),
    reason=f"labelled data not found at {SHARED_DATA} (../shared/data beside the checkout)",
)


def test_time_features_are_causal():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    full = time_features(X, window=10)
    prefix = time_features(X[:120], window=10)
    np.testing.assert_allclose(full[:120], prefix)  # the future never changes the past
    assert full.shape == (200, 12)
    np.testing.assert_allclose(full[1:, 3:6], np.diff(X, axis=0))


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="labelled data not found"):
        evaluate(tmp_path / "nope")


@needs_data
def test_smd_quality_and_the_time_series_features(tmp_path):
    raw = evaluate(SHARED_DATA, ("smd",), "raw")
    ts = evaluate(SHARED_DATA, ("smd",), "ts", window=30)
    assert raw["mean"]["smd"]["series"] == len(list((SHARED_DATA / "smd" / "train").glob("*.txt.gz")))
    # Plain StandardScaler + IsolationForest: the design record's reference is about 0.76.
    assert 0.65 < raw["mean"]["smd"]["roc_auc"] < 0.85
    assert ts["mean"]["smd"]["roc_auc"] > raw["mean"]["smd"]["roc_auc"] + 0.05
    assert ts["mean"]["smd"]["pr_auc"] > raw["mean"]["smd"]["pr_auc"]
    for series in ts["series"]:
        assert 0 <= series["f1"] <= 1 and series["anomalies"] > 0


@needs_data
def test_cli_evaluates_nab(tmp_path):
    from test_cli import run

    out = json.loads(
        run("evaluate", "--data-dir", str(SHARED_DATA), "--dataset", "nab", "--out", str(tmp_path / "nab.json")).stdout
    )
    assert out["mean"]["nab"]["series"] >= 20
    detail = json.loads((tmp_path / "nab.json").read_text())
    assert {s["dataset"] for s in detail["series"]} == {"nab"}
