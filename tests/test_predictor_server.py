"""Our predictor inside the real KServe model server, over HTTP (V1 and Open Inference V2)."""

import json

import numpy as np
import pytest
import requests
import v2_schema

from anomaly_mlops.adapters.local_services import model_server
from anomaly_mlops.errors import AnomalyMLOpsError
from anomaly_mlops.model.artifacts import load_model_dir
from anomaly_mlops.model.schema import DEFAULT_FEATURES
from anomaly_mlops.sources.files import load_dataset
from anomaly_mlops.store.releases import publish
from anomaly_mlops.store.s3 import S3Settings


@pytest.fixture(scope="module")
def holdout(prepared):
    return load_dataset(str(prepared.holdout_path))


@pytest.fixture(scope="module")
def offline(model_dir):
    return load_model_dir(model_dir)


def v1(served, body, raw=False):
    url, name = served
    response = requests.post(
        f"{url}/v1/models/{name}:predict",
        data=body if raw else json.dumps(body),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    return response


def v2(served, body):
    url, name = served
    return requests.post(f"{url}/v2/models/{name}/infer", json=body, timeout=10)


def test_v1_rows_return_labels_and_scores_matching_offline(served, holdout, offline):
    # The 20 most anomalous holdout rows and 180 ordinary ones: both labels occur.
    ranked = np.argsort(-offline.score(holdout.X)[1])
    rows = holdout.X[np.concatenate([ranked[:20], ranked[-180:]])]
    response = v1(served, {"instances": rows.tolist()})
    assert response.status_code == 200
    body = response.json()
    labels, scores = offline.score(rows)
    assert body["predictions"] == labels.tolist()
    np.testing.assert_allclose(body["anomaly_scores"], scores, rtol=0, atol=1e-12)
    # scikit-learn's convention, which the platform's engine reads: -1 anomaly, 1 normal, as JSON integers.
    assert all(type(p) is int for p in body["predictions"]) and set(body["predictions"]) == {-1, 1}
    assert [p == -1 for p in body["predictions"]] == (scores > offline.threshold).tolist()


def test_v1_objects_keyed_by_feature_name(served, holdout, offline):
    rows = holdout.X[:3]
    instances = [dict(zip(DEFAULT_FEATURES, map(float, row)), timestamp="ignored") for row in rows]
    body = v1(served, {"instances": instances}).json()
    np.testing.assert_allclose(body["anomaly_scores"], offline.score(rows)[1], atol=1e-12)


def test_v2_matrix_and_per_feature_inputs(served, holdout, offline):
    rows = holdout.X[:5]
    _, scores = offline.score(rows)
    matrix = {
        "id": "req-1",
        "inputs": [
            {"name": "x", "shape": [5, 6], "datatype": "FP32", "data": rows.astype(np.float32).ravel().tolist()}
        ],
    }
    response = v2(served, matrix)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "req-1" and answer["model_name"] == served[1]
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["predictions"]["datatype"] == "INT64" and outputs["predictions"]["shape"] == [5]
    # FP32 input: float32 rounding moves scores slightly, never labels near the middle.
    np.testing.assert_allclose(outputs["anomaly_scores"]["data"], scores, atol=1e-3)

    columns = {
        "inputs": [
            {"name": f, "shape": [5], "datatype": "FP64", "data": rows[:, j].tolist()}
            for j, f in enumerate(DEFAULT_FEATURES)
        ]
    }
    answer = v2(served, columns).json()
    outputs = {o["name"]: o for o in answer["outputs"]}
    np.testing.assert_allclose(outputs["anomaly_scores"]["data"], scores, atol=1e-12)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"rows": []}, "no 'instances'"),
        ({"instances": []}, "no instances"),
        ({"instances": "1,2,3"}, "be a list"),
        ({"instances": [[1, 2, 3]]}, "has 3 values; the model expects 6"),
        ({"instances": [[1, 2, 3, 4, 5, "x"]]}, "expected a number, got 'x'"),
        ({"instances": [[1, 2, 3, 4, 5, None]]}, "expected a number, got None"),
        ({"instances": [[1, 2, 3, 4, 5, True]]}, "expected a number, got True"),
        ({"instances": [{"cpu_usage_pct": 1}]}, "lacks features"),
        # json.dumps writes Infinity, which both servers' JSON parsers refuse before our code runs.
        ({"instances": [[1, 2, 3, 4, 5, 1e309]]}, ("Unrecognized request format", "not valid JSON")),
        ({"instances": [[0] * 6] * 10_001}, "limit is 10000"),
    ],
)
def test_v1_malformed_input_is_400_with_a_message(served, body, message):
    response = v1(served, body)
    assert response.status_code == 400, response.text
    accepted = message if isinstance(message, tuple) else (message,)
    assert any(m in response.json()["error"] for m in accepted), response.text


def test_v1_nan_literal_and_invalid_json_are_rejected(served):
    response = v1(served, '{"instances": [[1, 2, 3, 4, 5, NaN]]}', raw=True)
    assert response.status_code == 400
    response = v1(served, '{"instances": [[1, 2', raw=True)
    assert response.status_code == 400


@pytest.mark.parametrize(
    "tensor, message",
    [
        ({"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}, "expected [n, 6]"),
        ({"name": "x", "shape": [1, 6], "datatype": "BYTES", "data": ["a"] * 6}, "datatype BYTES"),
        ({"name": "x", "shape": [2, 6], "datatype": "FP64", "data": [1.0] * 5}, "could not be read"),
        ({"name": "x", "shape": [0, 6], "datatype": "FP64", "data": []}, "no instances"),
        # 1e39 overflows float32 to inf.
        ({"name": "x", "shape": [1, 6], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 1e39]}, "must be finite"),
    ],
)
def test_v2_malformed_input_is_400(served, tensor, message):
    response = v2(served, {"inputs": [tensor]})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_server_stays_ready_and_exports_metrics(served, holdout):
    url, name = served
    v1(served, {"instances": "junk"})
    assert requests.get(f"{url}/v1/models/{name}", timeout=5).json()["ready"] is True
    assert requests.get(f"{url}/v2/models/{name}/ready", timeout=5).status_code == 200
    v1(served, {"instances": holdout.X[:10].tolist()})
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    scored = [line for line in metrics.splitlines() if line.startswith("anomaly_detector_rows_scored_total")]
    assert scored and float(scored[0].split()[-1]) >= 10
    # Request latency: KServe's histogram, or the lean server's per endpoint (and how many
    # requests shared each forest walk).
    assert (
        "request_predict_seconds" in metrics
        or 'anomaly_detector_request_duration_seconds_count{endpoint="v1_predict"}' in metrics
        and "anomaly_detector_requests_per_walk_count" in metrics
    )


def outside_range_counts(url: str) -> dict:
    """anomaly_detector_*_outside_training_range_total from /metrics: {metric name or "rows": count}."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "anomaly_detector_rows_outside_training_range_total":
                counts["rows"] = sample.value
            elif sample.name == "anomaly_detector_metric_outside_training_range_total":
                counts[sample.labels["metric"]] = sample.value
    return counts


def test_rows_outside_the_training_range_are_counted_on_metrics(served, holdout, offline):
    """What validate reports for a holdout, the servers count for served rows: a moved level
    shows on /metrics (per metric, V1 and V2 alike) before anyone retrains."""
    url, name = served
    low, high = offline.metadata["training_ranges"]["min"], offline.metadata["training_ranges"]["max"]
    rows = holdout.X[:5].copy()
    rows[:3, 1] = high[1] + 10.0  # memory above its training range in three rows
    rows[3, 0] = low[0] - 10.0  # cpu below it in one
    rows[4] = np.clip(rows[4], low, high)  # one row inside
    before = outside_range_counts(url)
    assert set(before) == {"rows", *DEFAULT_FEATURES}  # every series exported from the start
    assert v1(served, {"instances": rows[:4].tolist()}).status_code == 200
    tensor = {"name": "input-0", "shape": [1, 6], "datatype": "FP64", "data": rows[4].tolist()}
    assert v2(served, {"inputs": [tensor]}).status_code == 200
    v2_moved = dict(tensor, data=rows[0].tolist())
    assert v2(served, {"inputs": [v2_moved]}).status_code == 200
    assert v1(served, {"instances": [[1.0, 2.0]]}).status_code == 400  # refused rows are not counted
    after = outside_range_counts(url)
    added = {key: after[key] - before[key] for key in after if after[key] != before[key]}
    assert added == {"rows": 5, DEFAULT_FEATURES[1]: 4, DEFAULT_FEATURES[0]: 1}


def served_score_metrics(url: str, name: str) -> dict:
    """The served-score metrics of model ``name`` from /metrics, summed over versions:
    {"scored", "flagged", "calibrated", ("bin", i), ("reference", i)}."""
    from prometheus_client.parser import text_string_to_metric_families

    keys = {
        "anomaly_detector_rows_scored_total": "scored",
        "anomaly_detector_rows_flagged_total": "flagged",
        "anomaly_detector_calibrated_flagged_share": "calibrated",
        "anomaly_detector_score_bin_rows_total": "bin",
        "anomaly_detector_score_bin_reference_share": "reference",
    }
    found = {}
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name in keys and sample.labels.get("model") == name:
                key = keys[sample.name]
                key = (key, int(sample.labels["bin"])) if "bin" in sample.labels else key
                found[key] = found.get(key, 0.0) + sample.value
    return found


def test_served_scores_are_counted_against_the_calibration_reference(served, holdout, offline):
    """Both servers count each scored row in the bin of the model's calibration deciles its
    answered score falls in, with the reference shares and the calibrated flagged share
    beside: what the drift rules compare (manifests/monitoring)."""
    from anomaly_mlops.model.drift import ScoreReference

    url, name = served
    reference = ScoreReference.of_model(offline.metadata)
    before = served_score_metrics(url, name)
    assert before["calibrated"] == pytest.approx(reference.flagged_share)
    assert [before[("reference", i)] for i in range(len(reference.shares))] == pytest.approx(reference.shares)
    answers = [v1(served, {"instances": holdout.X[:40].tolist()}).json()]
    for row in holdout.X[40:43]:
        tensor = {"name": "input-0", "shape": [1, 6], "datatype": "FP64", "data": row.tolist()}
        outputs = {o["name"]: o["data"] for o in v2(served, {"inputs": [tensor]}).json()["outputs"]}
        answers.append({"predictions": outputs["predictions"], "anomaly_scores": outputs["anomaly_scores"]})
    assert v1(served, {"instances": [[1.0, 2.0]]}).status_code == 400  # refused rows are not counted
    after = served_score_metrics(url, name)
    scores = np.concatenate([a["anomaly_scores"] for a in answers])
    flagged = sum(p == -1 for a in answers for p in a["predictions"])
    assert after["scored"] - before["scored"] == 43
    assert after["flagged"] - before["flagged"] == flagged
    counted = [after[("bin", i)] - before.get(("bin", i), 0.0) for i in range(len(reference.shares))]
    assert counted == list(reference.counts(scores))


@pytest.mark.skipif(not v2_schema.available(), reason="../shared/schemas/open-inference-protocol not found")
def test_v2_bodies_follow_the_open_inference_openapi(served, holdout, model_dir, request):
    from anomaly_mlops.store.releases import default_version

    url, name = served
    kserve = request.node.callspec.params["served"] == "kserve"
    version = default_version(model_dir)
    request = {
        "id": "r1",
        "inputs": [{"name": "input-0", "shape": [3, 6], "datatype": "FP64", "data": holdout.X[:3].ravel().tolist()}],
    }
    assert v2_schema.errors(request, "inference_request") == []
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{name}/ready"):
        assert requests.get(url + path, timeout=5).status_code == 200, path
    checks = [
        (requests.get(f"{url}/v2", timeout=5), 200, "metadata_server_response"),
        (requests.get(f"{url}/v2/models/{name}", timeout=5), 200, "metadata_model_response"),
        (requests.post(f"{url}/v2/models/{name}/infer", json=request, timeout=5), 200, "inference_response"),
        (
            requests.post(f"{url}/v2/models/{name}/infer", json={"inputs": [{"name": "x"}]}, timeout=5),
            400,
            "inference_error_response",
        ),
        (requests.get(f"{url}/v2/models/nope", timeout=5), 404, "metadata_model_error_response"),
        (requests.post(f"{url}/v2/models/nope/infer", json=request, timeout=5), 404, "inference_error_response"),
    ]
    if not kserve:  # KServe 0.21 answers versioned paths 501 "Model versioning not supported yet"
        checks.append(
            (requests.get(f"{url}/v2/models/{name}/versions/{version}", timeout=5), 200, "metadata_model_response")
        )
    for response, status, schema in checks:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        if kserve:
            # KServe 0.21 writes null for absent optional fields (model_version, parameters),
            # which the OpenAPI does not allow; the lean server leaves them out.
            body = _without_nulls(body)
        assert v2_schema.errors(body, schema) == [], (schema, response.text)


def _without_nulls(value):
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def test_serves_a_released_version_from_s3(model_dir, s3_env, holdout, offline, tmp_path):
    result = publish(model_dir, "served-from-s3", "v1", S3Settings.from_env(s3_env))
    with model_server("s3model", result.uri, env=s3_env, log_path=tmp_path / "log") as url:
        body = requests.post(
            f"{url}/v1/models/s3model:predict", json={"instances": holdout.X[:4].tolist()}, timeout=10
        ).json()
    np.testing.assert_allclose(body["anomaly_scores"], offline.score(holdout.X[:4])[1], atol=1e-12)


def test_tampered_artifacts_stop_the_server_from_starting(copy_model, tmp_path):
    model = copy_model()
    with open(model / "model.joblib", "ab") as handle:
        handle.write(b"\x00")
    with pytest.raises(AnomalyMLOpsError, match="exited with code") as info:
        with model_server("bad", str(model), log_path=tmp_path / "log", startup_timeout_s=60):
            pass
    assert "checksum mismatch" in str(info.value)


def test_windowed_model_streamed_row_by_row_matches_offline_scoring(prepared, holdout, tmp_path):
    """The server keeps each entity's recent rows: a series sent one row at a time (V1 and
    V2 interleaved, two entities interleaved) is scored exactly as offline scoring of the
    whole series; rows with less history than the model needs are marked, and a lone row
    with no entity is refused with an answer that says what to send. The model adds the
    reconstruction error to the forest's score: the server adds it as training did."""
    from anomaly_mlops.steps.train import TrainParams, train

    params = TrainParams(n_estimators=40, feature_window=20, score_smoothing=5, reconstruction_variance=0.9)
    trained = train(str(prepared.train_path), tmp_path / "ts", params)
    offline = load_model_dir(trained.model_dir)
    assert offline.reconstruction is not None
    assert offline.history_rows == 19 + 4
    series_a, series_b = holdout.X[:60], holdout.X[500:560]
    streamed = {"a": [], "b": []}
    complete = []
    with model_server("ts", str(trained.model_dir), log_path=tmp_path / "log") as url:
        for i in range(60):
            for entity, series in (("a", series_a), ("b", series_b)):
                row = series[i : i + 1]
                if i % 2:
                    body = {
                        "inputs": [{"name": "x", "shape": [1, 6], "datatype": "FP64", "data": row.ravel().tolist()}],
                        "parameters": {"entity": entity},
                    }
                    answer = requests.post(f"{url}/v2/models/ts/infer", json=body, timeout=10).json()
                    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
                    streamed[entity].append(outputs["anomaly_scores"][0])
                    if entity == "a":
                        complete.append(outputs["history_complete"][0])
                else:
                    answer = requests.post(
                        f"{url}/v1/models/ts:predict", json={"instances": row.tolist(), "entity": entity}, timeout=10
                    ).json()
                    streamed[entity].append(answer["anomaly_scores"][0])
                    if entity == "a":
                        complete.append(answer["history_complete"][0])
        batch = requests.post(f"{url}/v1/models/ts:predict", json={"instances": series_a.tolist()}, timeout=10)
        lone = requests.post(f"{url}/v1/models/ts:predict", json={"instances": series_a[:1].tolist()}, timeout=10)
        metadata = requests.get(f"{url}/v2/models/ts", timeout=10).json()
    np.testing.assert_allclose(streamed["a"], offline.score(series_a)[1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(streamed["b"], offline.score(series_b)[1], rtol=0, atol=1e-9)
    assert complete == [i >= 23 for i in range(60)]
    # Without an entity the request's rows are the series: the same scores, the same marks.
    np.testing.assert_allclose(batch.json()["anomaly_scores"], offline.score(series_a)[1], atol=1e-12)
    assert batch.json()["history_complete"] == complete
    assert lone.status_code == 400 and "entity" in lone.json()["error"] and "preceding rows" in lone.json()["error"]
    assert [o["name"] for o in metadata["outputs"]] == ["predictions", "anomaly_scores", "history_complete"]


def test_concurrent_streams_of_many_entities_match_offline_scoring(served, holdout, offline):
    """Eight clients at once, each streaming its own series row by row: whatever the server
    scores together (the lean server walks the forest once per event-loop tick), each
    entity's scores equal offline scoring of its series."""
    from concurrent.futures import ThreadPoolExecutor

    url, name = served
    series = {f"node-{k}": holdout.X[k * 300 : k * 300 + 25] for k in range(8)}

    def stream(entity):
        with requests.Session() as session:
            return [
                session.post(
                    f"{url}/v1/models/{name}:predict",
                    json={"instances": series[entity][i : i + 1].tolist(), "entity": entity},
                    timeout=30,
                ).json()["anomaly_scores"][0]
                for i in range(len(series[entity]))
            ]

    with ThreadPoolExecutor(len(series)) as pool:
        streamed = dict(zip(series, pool.map(stream, series)))
    for entity, rows in series.items():
        np.testing.assert_allclose(streamed[entity], offline.score(rows)[1], rtol=0, atol=1e-9)


def test_v2_metadata_lists_inputs_outputs_and_the_version(served, model_dir):
    from anomaly_mlops.store.releases import default_version

    url, name = served
    metadata = requests.get(f"{url}/v2/models/{name}", timeout=5).json()
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 6]}]
    assert [o["name"] for o in metadata["outputs"]] == ["predictions", "anomaly_scores"]
    assert metadata["versions"] == [default_version(model_dir)]


def test_a_body_not_sent_as_json_is_told_so(served):
    url, name = served
    response = requests.post(
        f"{url}/v1/models/{name}:predict",
        data=json.dumps({"instances": [[1] * 6]}),
        headers={"content-type": "text/plain"},
        timeout=10,
    )
    assert response.status_code == 400
    assert "Content-Type: application/json" in response.json()["error"]


def test_lean_server_refuses_a_version_it_does_not_serve(served, request, model_dir):
    from anomaly_mlops.store.releases import default_version

    if request.node.callspec.params["served"] != "lean":
        pytest.skip("KServe 0.21 answers versioned paths 501: model versioning not supported")
    url, name = served
    body = {"inputs": [{"name": "x", "shape": [1, 6], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}]}
    served_version = default_version(model_dir)
    assert requests.post(f"{url}/v2/models/{name}/versions/{served_version}/infer", json=body, timeout=5).ok
    for response in (
        requests.post(f"{url}/v2/models/{name}/versions/v0/infer", json=body, timeout=5),
        requests.get(f"{url}/v2/models/{name}/versions/v0", timeout=5),
        requests.get(f"{url}/v2/models/{name}/versions/v0/ready", timeout=5),
    ):
        assert response.status_code == 404 and "has no version v0" in response.json()["error"]
