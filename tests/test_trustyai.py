"""The optional TrustyAI registration (steps/trustyai.py, `anomaly-mlops trustyai-register`)
against a fake of the service's REST API that keeps its validators' rules (tests/trustyai_fake.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
from trustyai_fake import FakeTrustyAI

from anomaly_mlops.adapters.cli import main
from anomaly_mlops.adapters.local_services import free_port
from anomaly_mlops.errors import ConfigError, DataError
from anomaly_mlops.model.artifacts import load_model_dir
from anomaly_mlops.sources.files import load_dataset
from anomaly_mlops.steps.trustyai import register_with_trustyai

TOKEN = "trusty-token-91"


@pytest.fixture
def trustyai():
    fake = FakeTrustyAI(token=TOKEN)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def model_and_rows(model_dir, prepared):
    model = load_model_dir(model_dir)
    return model, load_dataset(str(prepared.train_path), model.schema).X


def test_the_reference_is_uploaded_and_drift_scheduled_once_per_version(trustyai, model_and_rows):
    model, rows = model_and_rows
    first = register_with_trustyai(model, rows, trustyai.url, "anomaly-detector", "v1", rows=300, token=TOKEN)
    assert first.uploaded and first.rows == 300 and first.data_tag == "TRAINING-v1"
    assert trustyai.tags() == {"anomaly-detector": {"TRAINING-v1": 300}}
    stored = trustyai.rows["anomaly-detector"][0][1]
    assert set(stored) == {*model.schema.features, "predictions", "anomaly_scores"}  # columns named after metrics
    assert sorted(first.scheduled) == ["kstest", "meanshift"]
    for metric, request_id in first.scheduled.items():
        request = trustyai.requests[metric][request_id]
        assert request["referenceTag"] == "TRAINING-v1" and request["requestName"] == f"anomaly-mlops-{metric}"
    # a retry: nothing uploaded or scheduled twice
    again = register_with_trustyai(model, rows, trustyai.url, "anomaly-detector", "v1", rows=300, token=TOKEN)
    assert not again.uploaded and again.scheduled == first.scheduled
    assert trustyai.tags()["anomaly-detector"]["TRAINING-v1"] == 300
    assert sum(len(r) for r in trustyai.requests.values()) == 2


def test_a_new_version_replaces_our_requests_and_leaves_others_alone(trustyai, model_and_rows):
    model, rows = model_and_rows
    first = register_with_trustyai(model, rows, trustyai.url, "anomaly-detector", "v1", rows=200, token=TOKEN)
    theirs = requests.post(
        f"{trustyai.url}/metrics/drift/meanshift/request",
        json={"modelId": "anomaly-detector", "referenceTag": "TRAINING-v1", "requestName": "team-dashboard"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    ).json()["requestId"]
    second = register_with_trustyai(
        model, rows, trustyai.url, "anomaly-detector", "v2", rows=200, token=TOKEN, metrics=("meanshift",)
    )
    assert second.uploaded and second.data_tag == "TRAINING-v2"
    assert second.removed == [first.scheduled["meanshift"]]
    assert set(trustyai.requests["meanshift"]) == {theirs, second.scheduled["meanshift"]}
    assert trustyai.requests["meanshift"][second.scheduled["meanshift"]]["referenceTag"] == "TRAINING-v2"


def test_the_fake_refuses_what_the_service_refuses(trustyai):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    tensor = {"name": "cpu", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]}
    upload = {
        "model_name": "m",
        "data_tag": "_trustyai_x",
        "request": {"inputs": [tensor]},
        "response": {"outputs": [tensor]},
    }
    assert requests.post(f"{trustyai.url}/data/upload", json=upload, headers=headers, timeout=5).status_code == 400
    no_outputs = {**upload, "data_tag": "TRAINING", "response": {}}
    answer = requests.post(f"{trustyai.url}/data/upload", json=no_outputs, headers=headers, timeout=5)
    assert answer.status_code == 400 and "No output payload" in answer.text
    drift = {"modelId": "m", "referenceTag": "TRAINING"}
    assert (
        requests.post(
            f"{trustyai.url}/metrics/drift/kstest/request", json=drift, headers=headers, timeout=5
        ).status_code
        == 400
    )
    assert requests.get(f"{trustyai.url}/info/tags", timeout=5).status_code == 401


def test_failures_are_one_clear_line(trustyai, model_and_rows):
    model, rows = model_and_rows
    with pytest.raises(DataError, match="cannot reach TrustyAI"):
        register_with_trustyai(model, rows, f"http://127.0.0.1:{free_port()}", "anomaly-detector", "v1")
    with pytest.raises(DataError, match=r"refused to list its data tags \(401\).*--token-file"):
        register_with_trustyai(model, rows, trustyai.url, "anomaly-detector", "v1", token="wrong")
    with pytest.raises(ConfigError, match="--metrics must name TrustyAI drift metrics"):
        register_with_trustyai(model, rows, trustyai.url, "anomaly-detector", "v1", metrics=("psi",))
    with pytest.raises(ConfigError, match="--model-id"):
        register_with_trustyai(model, rows, trustyai.url, "_trustyai_model", "v1")
    with pytest.raises(DataError, match="schema metrics"):
        register_with_trustyai(model, rows[:, :3], trustyai.url, "anomaly-detector", "v1", token=TOKEN)
    with pytest.raises(ConfigError, match="http"):
        register_with_trustyai(model, rows, "trustyai-service:8080", "anomaly-detector", "v1")
    assert trustyai.rows == {}


def test_the_cli_registers_a_released_version(trustyai, model_dir, prepared, tmp_path, capsys):
    (tmp_path / "token").write_text(TOKEN)
    code = main(
        ["trustyai-register", "--url", trustyai.url, "--model-id", "anomaly-detector", "--model-dir", str(model_dir),
         "--data", str(prepared.train_path), "--rows", "100", "--token-file", str(tmp_path / "token")]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert result["rows"] == 100 and result["data_tag"].startswith("TRAINING-v") and len(result["scheduled"]) == 2
    assert TOKEN not in out.out + out.err
    assert np.isfinite([row["anomaly_scores"] for _, row in trustyai.rows["anomaly-detector"]]).all()
