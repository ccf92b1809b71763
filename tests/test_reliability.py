"""The defects found by trying to break the project (issue 11), each through the real
S3-protocol server, the real KServe server or the real kubernetes client."""

from __future__ import annotations

import asyncio
import json
import pickle
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from anomaly_mlops.adapters import cli
from anomaly_mlops.adapters.local_services import model_server
from anomaly_mlops.errors import AnomalyMLOpsError, ArtifactError, ConfigError, DataError, VersionConflictError
from anomaly_mlops.model.artifacts import METADATA_FILE, SAFE_MODEL_FILE, load_model_dir, write_manifest
from anomaly_mlops.model.schema import DEFAULT_FEATURES
from anomaly_mlops.store.releases import claim_key, download_model, publish
from anomaly_mlops.store.s3 import S3Settings

from fake_http import JsonFakeServer
from fault_proxy import Fault, FaultProxy


@pytest.fixture
def other_model(copy_model):
    """The session model with different content (and so a different manifest)."""
    model = copy_model("other")
    metadata = json.loads((model / METADATA_FILE).read_text())
    metadata["note"] = "different content"
    (model / METADATA_FILE).write_text(json.dumps(metadata))
    write_manifest(model)
    return model


def name() -> str:
    return f"r-{uuid.uuid4().hex[:8]}"


def keys(raw, bucket, prefix):
    return sorted(o["Key"] for o in raw.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


# --------------------------------------------------------------------------- 1. publish races


def test_a_slow_publisher_cannot_overwrite_the_data_of_a_version_another_released(
    model_dir, other_model, settings, s3_env, raw, tmp_path
):
    """A's data upload is held in a proxy while B publishes the same version with other
    content. Before claims, B released and A's late upload then replaced B's model under
    B's manifest: a dead release. Now exactly one wins and the release downloads intact."""
    proxy = FaultProxy(s3_env["AWS_S3_ENDPOINT"])
    try:
        slow = S3Settings(**{**settings.__dict__, "endpoint": proxy.url})
        proxy.faults.append(Fault("PUT", r"model\.(joblib|skops)", -1, delay_s=1.5))
        model = name()
        outcome = {}

        def publish_a():
            try:
                outcome["a"] = publish(model_dir, model, "v1", slow).status
            except VersionConflictError as exc:
                outcome["a"] = exc

        thread = threading.Thread(target=publish_a)
        thread.start()
        for _ in range(100):  # until A's first data PUT is in the proxy
            if any(m == "PUT" and "model." in t for m, t, _ in proxy.log) or proxy.faults[0].seen:
                break
            time.sleep(0.05)
        try:
            outcome["b"] = publish(other_model, model, "v1", settings).status
        except VersionConflictError as exc:
            outcome["b"] = exc
        thread.join(60)
    finally:
        proxy.stop()
    assert outcome["a"] == "published" and isinstance(outcome["b"], VersionConflictError)
    assert "being published with different content" in str(outcome["b"])
    local = download_model(f"s3://{settings.bucket}/{model}/v1/", tmp_path / "dl", settings)
    assert (local / "MANIFEST.sha256").read_bytes() == (model_dir / "MANIFEST.sha256").read_bytes()


def test_concurrent_publishers_of_one_version_leave_one_consistent_release(model_dir, other_model, settings, tmp_path):
    for round_ in range(4):
        model, barrier, outcome = name(), threading.Barrier(2), {}

        def run(label, directory, barrier=barrier, outcome=outcome, model=model):
            barrier.wait()
            try:
                outcome[label] = publish(directory, model, "v1", settings).status
            except VersionConflictError:
                outcome[label] = "conflict"

        threads = [
            threading.Thread(target=run, args=("a", model_dir)),
            threading.Thread(target=run, args=("b", other_model)),
        ]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
        assert sorted(outcome.values()) == ["conflict", "published"], outcome
        winner = model_dir if outcome["a"] == "published" else other_model
        local = download_model(f"s3://{settings.bucket}/{model}/v1/", tmp_path / f"dl{round_}", settings)
        assert (local / "MANIFEST.sha256").read_bytes() == (winner / "MANIFEST.sha256").read_bytes()


def test_republish_detects_and_mends_a_damaged_version(model_dir, settings, raw, tmp_path):
    model = name()
    publish(model_dir, model, "v1", settings)
    key = f"{model}/v1/{SAFE_MODEL_FILE}"
    # Damage that keeps the size and our own sha256 metadata: only the server's checksum tells.
    size = raw.head_object(Bucket=settings.bucket, Key=key)["ContentLength"]
    digest = raw.head_object(Bucket=settings.bucket, Key=key)["Metadata"]["sha256"]
    raw.put_object(Bucket=settings.bucket, Key=key, Body=b"\0" * size, Metadata={"sha256": digest})
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        download_model(f"s3://{settings.bucket}/{model}/v1/", tmp_path / "broken", settings)
    assert publish(model_dir, model, "v1", settings).status == "repaired"
    assert publish(model_dir, model, "v1", settings).status == "unchanged"
    load_model_dir(download_model(f"s3://{settings.bucket}/{model}/v1/", tmp_path / "ok", settings))


def test_a_claim_for_other_content_blocks_without_writing_under_the_version(model_dir, settings, raw):
    model = name()
    raw.put_object(
        Bucket=settings.bucket,
        Key=claim_key(f"{model}/v1/"),
        Body=json.dumps({"manifest_sha256": "0" * 64, "publisher": "dead-run", "claimed_at": "then"}),
    )
    with pytest.raises(VersionConflictError, match=r"claimed by dead-run .*delete s3://"):
        publish(model_dir, model, "v1", settings)
    assert keys(raw, settings.bucket, f"{model}/v1/") == []


def test_multipart_uploads_of_a_killed_publisher_are_aborted(model_dir, settings, raw):
    model = name()
    leftover = raw.create_multipart_upload(Bucket=settings.bucket, Key=f"{model}/v1/model.joblib")
    raw.upload_part(
        Bucket=settings.bucket,
        Key=f"{model}/v1/model.joblib",
        UploadId=leftover["UploadId"],
        PartNumber=1,
        Body=b"x" * 1024,
    )
    assert publish(model_dir, model, "v1", settings).status == "published"
    assert raw.list_multipart_uploads(Bucket=settings.bucket, Prefix=f"{model}/").get("Uploads", []) == []


# --------------------------------------------------------------------------- 2. download target


def test_download_refuses_a_used_target_and_leaves_nothing_behind(model_dir, settings, tmp_path):
    result = publish(model_dir, name(), "v1", settings)
    used = tmp_path / "used"
    used.mkdir()
    (used / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        download_model(result.uri, used, settings)
    assert (used / "precious.txt").read_text() == "keep me"
    regular = tmp_path / "file"
    regular.write_text("a file")
    with pytest.raises(ConfigError, match="not a directory"):
        download_model(result.uri, regular, settings)
    empty = tmp_path / "empty"
    empty.mkdir()
    download_model(result.uri, empty, settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "used"]


# --------------------------------------------------------------------------- 3 and 8. loading


def _consistent_model(copy_model, obj, label: str) -> Path:
    """A model directory whose manifest matches, holding ``obj`` as its skops model."""
    import skops.io as sio

    model = copy_model(label)
    sio.dump(obj, model / SAFE_MODEL_FILE)
    write_manifest(model)
    return model


def _fitted_on(n_features: int):
    from anomaly_mlops.steps.train import TrainParams, fit_detector

    params = TrainParams(n_estimators=10, feature_window=0)
    return fit_detector(np.random.default_rng(0).normal(size=(256, n_features)), params).pipeline


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: {"not": "a model"}, "holds a dict, not the expected Pipeline"),
        (lambda: _fitted_on(3), "fitted on 3 inputs but its metadata .* describes 6"),
    ],
)
def test_a_model_that_cannot_score_never_becomes_ready(copy_model, tmp_path, make, message):
    model = _consistent_model(copy_model, make(), "unscorable")
    with pytest.raises(ArtifactError, match=message):
        load_model_dir(model)
    # The KServe server loads model.skops; the lean server loads forest.npz (tested below).
    with pytest.raises(AnomalyMLOpsError, match="exited with code 2") as info:
        with model_server(
            "bad", str(model), log_path=tmp_path / "log", startup_timeout_s=60, extra_args=("--server", "kserve")
        ):
            pass
    errors = [line for line in str(info.value).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in str(info.value)


def test_forest_arrays_that_cannot_score_stop_the_lean_server(copy_model, tmp_path):
    model = copy_model("bad-forest")
    with np.load(model / "forest.npz") as arrays:
        stored = {k: arrays[k] for k in arrays.files}
    np.savez(model / "forest.npz", **{**stored, "mean": stored["mean"][:3], "scale": stored["scale"][:3]})
    write_manifest(model)
    with pytest.raises(AnomalyMLOpsError, match="exited with code 2") as info:
        with model_server("bad", str(model), log_path=tmp_path / "log", startup_timeout_s=60):
            pass
    errors = [line for line in str(info.value).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "feature indices outside the inputs" in errors[0] and "Traceback" not in str(info.value)


def _rewrite_forest(model: Path, **changes) -> None:
    """forest.npz with ``changes`` (None: drop the member), its manifest rewritten to match, as
    a careless or hostile publisher could."""
    with np.load(model / "forest.npz") as arrays:
        stored = {k: arrays[k] for k in arrays.files}
    stored.update(changes)
    np.savez_compressed(model / "forest.npz", **{k: v for k, v in stored.items() if v is not None})
    write_manifest(model)


@pytest.mark.parametrize(
    "changes, message",
    [
        # Would walk 10**12 levels per score: the server spun at load, before the probe check.
        ({"depth": np.asarray(10**12)}, "depth 1000000000000 outside 0-64"),
        ({"denominator": np.asarray(-1.0)}, "denominator -1.0 is not a positive number"),
        ({"extra": np.zeros(8)}, r"members \['extra'\] not expected"),
        ({"probe_scores": None}, r"\['probe_scores'\] missing"),
    ],
)
def test_a_malformed_forest_is_refused_at_load_with_one_line(copy_model, changes, message):
    from anomaly_mlops.model.artifacts import load_serving_model

    model = copy_model("hostile-forest")
    _rewrite_forest(model, **changes)
    started = time.monotonic()
    with pytest.raises(ArtifactError, match=message):
        load_serving_model(model)
    assert time.monotonic() - started < 5


def test_a_forest_member_too_large_is_refused_before_it_is_decompressed(copy_model, monkeypatch):
    """An extra 3 GiB member was decompressed at load; the size in the zip's directory is read
    first (a small limit here stands for the real 512 MiB)."""
    from anomaly_mlops.model import artifacts

    model = copy_model("large-forest")
    _rewrite_forest(model)
    limit = 1024
    monkeypatch.setattr(artifacts, "MAX_FOREST_MEMBER_BYTES", limit)
    read = []
    monkeypatch.setattr(np, "load", lambda *a, **k: read.append(a) or (_ for _ in ()).throw(AssertionError("read")))
    with pytest.raises(ArtifactError, match=r"members larger than 1,024 bytes: .*probe \("):
        artifacts.load_serving_model(model)
    assert read == []


def test_a_fast_scorer_that_disagrees_with_scikit_learn_is_refused(model_dir, monkeypatch):
    from anomaly_mlops.model import fastforest

    real = fastforest.compile_forest

    def skewed(pipeline):
        forest = real(pipeline)
        forest.threshold = forest.threshold + 0.5  # what a change in sklearn's private tree layout would do
        forest._link_children()  # the walk's packed nodes are built from the node arrays
        return forest

    monkeypatch.setattr(fastforest, "compile_forest", skewed)
    with pytest.raises(ArtifactError, match="fast scorer disagrees with scikit-learn"):
        load_model_dir(model_dir)


class _Payload:
    """Pickling this object makes unpickling it create a file: a stand-in for any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_loading_never_runs_code_from_the_pickle_or_skops_file(copy_model, model_dir, tmp_path):
    marker = tmp_path / "pwned"
    model = copy_model("pickle-swap")
    (model / "model.joblib").write_bytes(pickle.dumps(_Payload(marker)))
    write_manifest(model)  # a consistent manifest over the hostile pickle
    loaded = load_model_dir(model)
    assert not marker.exists()
    np.testing.assert_array_equal(
        loaded.anomaly_scores(np.ones((3, 6))), load_model_dir(model_dir).anomaly_scores(np.ones((3, 6)))
    )

    from fractions import Fraction

    hostile = _consistent_model(copy_model, Fraction(1, 3), "skops-swap")
    with pytest.raises(ArtifactError, match=r"holds types this project does not load: \['fractions.Fraction'\]"):
        load_model_dir(hostile)


def test_the_pickle_for_the_sklearn_runtime_scores_like_the_skops_model(model_dir, prepared):
    import joblib

    from anomaly_mlops.sources.files import load_dataset

    rows = load_dataset(str(prepared.holdout_path)).X
    pickled = joblib.load(model_dir / "model.joblib")
    loaded = load_model_dir(model_dir)
    np.testing.assert_array_equal(pickled.score_samples(rows), loaded.pipeline.score_samples(rows))
    # The upstream sklearn runtime returns pipeline.predict(): each row on its own, the raw
    # forest score against the same threshold (no history, no smoothing: README "train").
    assert loaded.transform.window == 0
    np.testing.assert_array_equal(pickled.predict(rows), loaded.label(loaded.raw_scores(rows)))
    assert set(pickled.predict(rows)) == {-1, 1}


# --------------------------------------------------------------------------- 4. V2 input


def v2(served, inputs):
    url, model = served
    return requests.post(f"{url}/v2/models/{model}/infer", json={"inputs": inputs}, timeout=10)


@pytest.mark.parametrize(
    "inputs, message",
    [
        (
            [{"name": "x", "shape": [1, 6], "datatype": "INT64", "data": [50.7, 1, 2, 3, 4, 5]}],
            "is 50.7, not an integer",
        ),
        (
            [{"name": "x", "shape": [1, 6], "datatype": "FP32", "data": ["1", 1, 2, 3, 4, 5]}],
            "expected a number for FP32, got '1'",
        ),
        ([{"name": "x", "shape": [1, 6], "datatype": "FP32", "data": [True, 1, 2, 3, 4, 5]}], "got True"),
        ([{"name": "x", "shape": [-1, 6], "datatype": "FP64", "data": [0.0] * 6}], "non-negative integers"),
        (
            [
                {"name": n, "shape": [1], "datatype": "FP64", "data": [1.0]}
                for n in ("cpu_usage_pct", *DEFAULT_FEATURES)
            ],
            "repeated: ['cpu_usage_pct']",
        ),
    ],
)
def test_v2_input_that_would_be_cast_silently_is_400(served, inputs, message):
    response = v2(served, inputs)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_invalid_v2_json_is_400_not_422(served):
    url, model = served
    response = requests.post(f"{url}/v2/models/{model}/infer", json={"inputs": [{"name": "x"}]}, timeout=10)
    assert response.status_code == 400 and "invalid request" in response.json()["error"]


def test_integral_int64_data_is_still_scored(served, model_dir):
    response = v2(served, [{"name": "x", "shape": [1, 6], "datatype": "INT64", "data": [50, 60, 20, 80, 50, 0]}])
    assert response.status_code == 200, response.text
    expected = load_model_dir(model_dir).score(np.array([[50, 60, 20, 80, 50, 0]], dtype=float))[1]
    assert response.json()["outputs"][1]["data"] == pytest.approx(expected.tolist(), abs=1e-12)


# --------------------------------------------------------------------------- 5. body size and large batches


def test_oversized_bodies_are_413_before_parsing(served):
    url, model = served
    big = b'{"instances": [' + b"[1,2,3,4,5,6]," * 400_000 + b"[1,2,3,4,5,6]]}"  # ~6 MB, over the cap
    response = requests.post(
        f"{url}/v1/models/{model}:predict", data=big, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 413 and "the limit is" in response.json()["error"]

    def chunks():  # no Content-Length: the cap applies while reading
        yield b'{"instances": ['
        for _ in range(100):
            yield b"[1,2,3,4,5,6]," * 5_000
        yield b"[1,2,3,4,5,6]]}"

    response = requests.post(
        f"{url}/v1/models/{model}:predict", data=chunks(), headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 413
    assert requests.get(f"{url}/v1/models/{model}", timeout=5).json()["ready"] is True


def test_the_largest_legal_batch_is_accepted_in_json_and_chunked(served, model_dir):
    url, model = served
    rows = np.random.default_rng(5).normal(50, 10, size=(10_000, 6)).tolist()
    response = requests.post(f"{url}/v1/models/{model}:predict", json={"instances": rows}, timeout=60)
    assert response.status_code == 200 and len(response.json()["predictions"]) == 10_000
    body = json.dumps({"instances": rows[:100]}).encode()
    response = requests.post(
        f"{url}/v1/models/{model}:predict",
        data=iter([body[:1000], body[1000:]]),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200 and len(response.json()["predictions"]) == 100


async def _rows_and_batches(url, model, singles: int, batches: int):
    """Single-row requests sent while two clients send 10,000-row batches; bounded by count."""
    import aiohttp

    batch = {"instances": np.random.default_rng(1).normal(50, 10, size=(10_000, 6)).tolist()}
    statuses = {"single": [], "batch": []}

    async def send(session, kind, body, count):
        for _ in range(count):
            async with session.post(f"{url}/v1/models/{model}:predict", json=body) as response:
                await response.read()
                statuses[kind].append(response.status)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(
            send(session, "batch", batch, batches),
            send(session, "batch", batch, batches),
            *(send(session, "single", {"instances": [[50, 60, 20, 80, 50, 0]]}, singles // 8) for _ in range(8)),
        )
    return statuses


def test_large_batches_and_single_rows_together_all_succeed(served):
    statuses = asyncio.run(_rows_and_batches(*served, singles=400, batches=4))
    assert statuses["single"] == [200] * 400 and statuses["batch"] == [200] * 8


# --------------------------------------------------------------------------- 6. one clear line, exit 2


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def assert_one_line(code, err, fragment):
    lines = [line for line in err.splitlines() if not line[:4].isdigit()]  # drop log lines (timestamps)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], err


def test_bad_paths_and_flags_are_one_line_exit_2(capsys, tmp_path, prepared, model_dir):
    unreadable = tmp_path / "locked.csv"
    unreadable.write_text("a,b\n1,2\n")
    unreadable.chmod(0)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    regular = tmp_path / "regular"
    regular.write_text("x")
    empty_schema, bad_schema = tmp_path / "empty.json", tmp_path / "bad.json"
    empty_schema.write_text("")
    bad_schema.write_text("{nope")
    train = str(prepared.train_path)
    import os

    as_root = os.geteuid() == 0  # root reads and writes through permission bits
    cases = [
        (("train", "--data", train, "--out", str(regular)), "exists and is not a directory"),
        (("train", "--data", train, "--out", str(tmp_path / "m"), "--features", str(empty_schema)), "not valid JSON"),
        (("train", "--data", train, "--out", str(tmp_path / "m"), "--features", str(bad_schema)), "not valid JSON"),
        (
            ("verify", "--url", "http://127.0.0.1:9", "--rows", train, "--token-file", str(tmp_path / "none")),
            "cannot read the token file",
        ),
        (
            (
                "--result",
                f"model_dir={tmp_path / 'missing' / 'out'}",
                "train",
                "--data",
                train,
                "--out",
                str(tmp_path / "m"),
            ),
            "does not exist or is not writable",
        ),
        (("download", "--uri", "s3://models/x/v1/", "--out", str(regular)), "not a directory"),
        # Refused even to root (CI runs as root, for whom permission bits refuse nothing):
        (("data", "--out", "/sys/anomaly-mlops-test/d", "--rows", "200"), "Operation not permitted"),
        (("train", "--data", str(tmp_path), "--out", str(tmp_path / "m")), "(it is a directory)"),
    ]
    if not as_root:
        cases += [
            (("train", "--data", str(unreadable), "--out", str(tmp_path / "m")), "cannot read"),
            (("data", "--out", str(readonly / "d"), "--rows", "200"), "ermission denied"),
        ]
    for argv, fragment in cases:
        code, err = run_cli(capsys, *argv)
        assert_one_line(code, err, fragment)
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob("*.partial"))
    assert not [p for p in tmp_path.iterdir() if "download" in p.name]


@pytest.mark.parametrize("value", ["abc", "0", "-5"])
def test_max_samples_must_be_auto_or_positive(capsys, tmp_path, prepared, value):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--data", str(prepared.train_path), "--out", str(tmp_path / "m"), "--max-samples", value])
    assert info.value.code == 2 and "expected 'auto' or a positive integer" in capsys.readouterr().err


def test_train_checks_its_output_before_fitting(tmp_path, prepared, monkeypatch):
    from anomaly_mlops.steps import train as train_module

    out = tmp_path / "used"
    out.mkdir()
    (out / "x").write_text("x")
    monkeypatch.setattr(train_module, "fit_detector", lambda *a: pytest.fail("fitted before checking --out"))
    with pytest.raises(ConfigError, match="is not empty"):
        train_module.train(str(prepared.train_path), out)


def test_datetime_and_timedelta_columns_are_not_features(tmp_path):
    import pandas as pd

    from anomaly_mlops.model.schema import FeatureSchema
    from anomaly_mlops.sources.files import frame_to_dataset

    frame = pd.DataFrame(
        {
            "a": [1.0, 2.0],
            "when": pd.to_datetime(["2026-01-01", "2026-01-02"]),
            "took": pd.to_timedelta([1, 2], unit="s"),
        }
    )
    for column in ("when", "took"):
        with pytest.raises(DataError, match=f"column '{column}' holds .* not a metric"):
            frame_to_dataset(frame, FeatureSchema(("a", column)), source="t")


# --------------------------------------------------------------------------- 7. secrets


class _EchoingProxy(JsonFakeServer):
    """An HTTP server that answers every request with 500 and the request headers in the
    body, as a misconfigured proxy in front of the API server might."""

    def handle(self, method, path, headers, body):
        return 500, "upstream failed; request was:\n" + str(headers), "text/plain"

    def invalid_json(self):
        return 500, "upstream failed", "text/plain"


def test_deploy_errors_never_carry_the_bearer_token():
    from kubernetes import client

    from anomaly_mlops.steps.deploy import DeploySpec, InferenceServiceClient

    token = "sha256~TOKENthatMustNeverBePrinted0123456789"
    proxy = _EchoingProxy()
    try:
        configuration = client.Configuration(
            host=proxy.url, api_key={"authorization": token}, api_key_prefix={"authorization": "Bearer"}
        )
        api = client.CustomObjectsApi(client.ApiClient(configuration))
        with pytest.raises(AnomalyMLOpsError) as info:
            InferenceServiceClient(api).apply(
                DeploySpec(name="anomaly-detector", namespace="ns", storage_uri="s3://models/anomaly-detector/v1/")
            )
    finally:
        proxy.stop()
    assert "500" in str(info.value) and "body not shown" in str(info.value)
    assert "TOKENthatMustNeverBePrinted" not in str(info.value)


def test_credentials_in_the_s3_endpoint_are_never_printed(capsys, model_dir, monkeypatch):
    from anomaly_mlops.adapters.local_services import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "key")
    monkeypatch.setenv("AWS_S3_BUCKET", "models")
    monkeypatch.setenv("AWS_S3_ENDPOINT", f"http://admin:PaSsWoRd123@127.0.0.1:{free_port()}")
    code, err = run_cli(capsys, "publish", "--model", str(model_dir), "--model-name", "m", "--version", "v1")
    assert code == 2 and "cannot reach S3" in err and "PaSsWoRd123" not in err and "[redacted]@127.0.0.1" in err
    monkeypatch.setenv("AWS_S3_ENDPOINT", "ftp://admin:PaSsWoRd123@host")
    code, err = run_cli(capsys, "publish", "--model", str(model_dir), "--model-name", "m", "--version", "v1")
    assert code == 2 and "PaSsWoRd123" not in err


# --------------------------------------------------------------------------- 9. serve


def test_serve_binds_the_address_it_is_given(model_dir, tmp_path):
    with model_server("bound", str(model_dir), log_path=tmp_path / "log", extra_args=("--host", "127.0.0.1")) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        with pytest.raises(OSError):  # another loopback address: nothing listens there
            socket.create_connection(("127.0.0.2", port), timeout=2).close()


def test_serving_from_s3_leaves_no_model_copy_behind(model_dir, s3_env, tmp_path):
    result = publish(model_dir, name(), "v1", S3Settings.from_env(s3_env))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with model_server("s3copy", result.uri, env={**s3_env, "TMPDIR": str(scratch)}, log_path=tmp_path / "log") as url:
        assert requests.get(f"{url}/v1/models/s3copy", timeout=5).status_code == 200
        assert [p.name for p in scratch.iterdir() if p.name.startswith("anomaly-model-")]
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("anomaly-model-")]
    shutil.rmtree(scratch)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (("--window-columns", "delta,mean"), "window columns must be a non-empty list of distinct names"),
        (("--window-columns", "std,std"), "window columns must be a non-empty list of distinct names"),
        (("--raw-tree-share", "1.0"), "raw_tree_share must be in [0, 1)"),
        (("--raw-tree-share", "-0.1"), "raw_tree_share must be in [0, 1)"),
        (("--metric-basis", "pca"), "argument --metric-basis: invalid choice: 'pca'"),
    ],
)
def test_window_columns_and_raw_tree_share_are_checked_before_fitting(capsys, tmp_path, prepared, flags, fragment):
    argv = ["train", "--data", str(prepared.train_path), "--out", str(tmp_path / "m"), "--feature-window", "30"]
    try:
        code = cli.main([*argv, *flags])
    except SystemExit as exc:  # argparse refuses a bad --window-columns itself
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and fragment in err, err
    assert not (tmp_path / "m").exists()
