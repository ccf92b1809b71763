"""Faults and hostile input, end to end: S3 errors through a fault proxy in front of the
real S3-protocol server, the predictor under concurrent mixed load, and secrets that must
never appear in what the project writes."""

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from anomaly_mlops.errors import ArtifactError, ConfigError, StorageError
from anomaly_mlops.params import TrainParams, VerifyPlan
from anomaly_mlops.store import releases as publish_module
from anomaly_mlops.store.releases import download_model, publish
from anomaly_mlops.store.s3 import S3Settings

from fault_proxy import Fault, FaultProxy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def proxy(s3_env):
    server = FaultProxy(s3_env["AWS_S3_ENDPOINT"])
    yield server
    server.stop()


@pytest.fixture
def through_proxy(s3_env, proxy):
    settings = S3Settings.from_env({**s3_env, "AWS_S3_ENDPOINT": proxy.url})
    # Three attempts keep the backoff short in tests; the default is five.
    return S3Settings(**{**settings.__dict__, "max_attempts": 3})


def released(raw, bucket, name):
    listing = raw.list_objects_v2(Bucket=bucket, Prefix=f"{name}/").get("Contents", [])
    return any(o["Key"].endswith("MANIFEST.sha256") for o in listing)


@pytest.mark.parametrize("status, code", [(500, "InternalError"), (503, "SlowDown"), (503, "ServiceUnavailable")])
def test_transient_s3_errors_are_retried(model_dir, through_proxy, proxy, raw, status, code):
    name = f"t-{uuid.uuid4().hex[:8]}"
    proxy.faults.append(Fault("PUT", r"model\.joblib", status, code, times=2))
    result = publish(model_dir, name, "v1", through_proxy)
    assert result.status == "published"
    assert proxy.count("PUT", r"model\.joblib") == 3  # two failures, then success
    assert released(raw, through_proxy.bucket, name)


def test_persistent_s3_errors_stop_after_bounded_retries(model_dir, through_proxy, proxy, raw, tmp_path):
    name = f"p-{uuid.uuid4().hex[:8]}"
    proxy.faults.append(Fault("PUT", r"model\.joblib", 503, "SlowDown"))
    with pytest.raises(StorageError, match=r"S3 (refused|failed) to upload model\.joblib"):
        publish(model_dir, name, "v1", through_proxy)
    assert proxy.count("PUT", r"model\.joblib") == 3
    assert not released(raw, through_proxy.bucket, name)
    with pytest.raises(ArtifactError, match="not released"):
        download_model(f"s3://{through_proxy.bucket}/{name}/v1/", tmp_path / "dl", through_proxy)


def test_dropped_connections_during_upload_leave_nothing_released(model_dir, through_proxy, proxy, raw):
    name = f"d-{uuid.uuid4().hex[:8]}"
    proxy.faults.append(Fault("PUT", r"MANIFEST", 0))
    with pytest.raises(StorageError):
        publish(model_dir, name, "v1", through_proxy)
    assert not released(raw, through_proxy.bucket, name)


def test_interrupted_multipart_upload_is_aborted(model_dir, through_proxy, proxy, raw, monkeypatch):
    # model.joblib goes up as a multipart upload (one part: S3's minimum part size is 5 MiB).
    monkeypatch.setattr(publish_module, "MULTIPART_THRESHOLD", 256 * 1024)
    name = f"m-{uuid.uuid4().hex[:8]}"
    proxy.faults.append(Fault("PUT", r"model\.joblib\?.*partNumber=1", 500))
    with pytest.raises(StorageError):
        publish(model_dir, name, "v1", through_proxy)
    assert (
        proxy.count("POST", r"model\.joblib\?uploads") == 1
        and proxy.count("PUT", r"model\.joblib\?.*partNumber=1") == 3
    )
    assert proxy.count("DELETE", r"uploadId=") == 1  # AbortMultipartUpload
    assert raw.list_multipart_uploads(Bucket=through_proxy.bucket, Prefix=name).get("Uploads", []) == []
    assert not released(raw, through_proxy.bucket, name)
    proxy.faults.clear()
    assert publish(model_dir, name, "v1", through_proxy).status == "published"


def test_download_retries_and_verifies(model_dir, through_proxy, proxy, tmp_path):
    name = f"g-{uuid.uuid4().hex[:8]}"
    result = publish(model_dir, name, "v1", through_proxy)
    proxy.faults.append(Fault("GET", r"model\.joblib", 503, "SlowDown", times=2))
    local = download_model(result.uri, tmp_path / "dl", through_proxy)
    assert (local / "model.joblib").read_bytes() == (model_dir / "model.joblib").read_bytes()


def test_small_reads_cut_short_are_read_again(model_dir, through_proxy, proxy, raw, tmp_path):
    """A manifest or claim whose body stops halfway (the length announced, the connection
    closed) is fetched again: the decisions publish and download take on it are never made
    on half a file, nor given up for one cut."""
    name = f"c-{uuid.uuid4().hex[:8]}"
    result = publish(model_dir, name, "v1", through_proxy)
    proxy.faults.append(Fault("GET", r"MANIFEST\.sha256", -2, times=2))
    assert publish(model_dir, name, "v1", through_proxy).status == "unchanged"
    assert proxy.count("GET", r"MANIFEST\.sha256") >= 3
    proxy.faults.append(Fault("GET", r"MANIFEST\.sha256", -2, times=1))
    local = download_model(result.uri, tmp_path / "dl", through_proxy)
    assert (local / "MANIFEST.sha256").read_bytes() == (model_dir / "MANIFEST.sha256").read_bytes()
    proxy.faults.append(Fault("GET", r"MANIFEST\.sha256", -2))  # cut every time: a clear error, nothing written
    with pytest.raises(StorageError, match="failed to read the manifest .*IncompleteRead"):
        download_model(result.uri, tmp_path / "dl2", through_proxy)
    assert not (tmp_path / "dl2").exists()


# --------------------------------------------------------------------------- predictor under load


async def _mixed_load(url, name, good_rows, requests_per_client=100, concurrency=16):
    """Bounded by request count, never by the clock: a loaded machine only makes it slower."""
    import aiohttp

    bad_bodies = [
        {"instances": [[1, 2]]},
        {"instances": []},
        {"instances": [["x"] * 6]},
        {"nope": 1},
        {"instances": [[0.0] * 6] * 10_001},
    ]
    outcomes = {"good": {}, "bad": {}}

    async def client(index, session):
        i = index
        for _ in range(requests_per_client):
            kind = "bad" if i % 4 == 0 else "good"
            body = bad_bodies[i % len(bad_bodies)] if kind == "bad" else {"instances": [good_rows[i % len(good_rows)]]}
            async with session.post(f"{url}/v1/models/{name}:predict", json=body) as response:
                await response.read()
                outcomes[kind][response.status] = outcomes[kind].get(response.status, 0) + 1
            i += concurrency

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(i, session) for i in range(concurrency)))
    return outcomes


def test_predictor_under_concurrent_mixed_load(served, prepared):
    import pandas as pd

    url, name = served
    rows = pd.read_parquet(prepared.holdout_path).iloc[:200, 1:7].to_numpy().tolist()
    outcomes = asyncio.run(_mixed_load(url, name, rows))
    # 16 clients x 100 requests, every fourth malformed.
    assert outcomes["good"] == {200: 1200} and outcomes["bad"] == {400: 400}
    assert requests.get(f"{url}/v1/models/{name}", timeout=5).json()["ready"] is True


# --------------------------------------------------------------------------- secrets


SECRET_ID, SECRET_KEY = "AKIAFAKEFAKE12345678", "sEcReT/value+that-must-never-leak"


def test_no_secret_in_logs_outputs_compiled_pipelines_or_manifests(tmp_path, s3_env, model_dir):
    """Publish at DEBUG log level with recognisable credentials (the embedded server accepts
    any), then grep everything the project writes."""
    env = {**s3_env, "AWS_ACCESS_KEY_ID": SECRET_ID, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "anomaly_mlops.adapters.cli",
            "--log-level",
            "DEBUG",
            "publish",
            "--model",
            str(model_dir),
            "--model-name",
            "secret-check",
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "anomaly_mlops.adapters.cli",
            "publish",
            "--model",
            str(model_dir),
            "--model-name",
            "secret-check",
            "--version",
            "v1",
        ],
        env={**os.environ, **env, "AWS_S3_BUCKET": "missing-bucket"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    texts = {"publish output": result.stdout + result.stderr, "error output": bad.stdout + bad.stderr}
    for path in [
        *(ROOT / "pipelines/compiled").glob("*.yaml"),
        *(ROOT / "components/specs").glob("*.yaml"),
        *(ROOT / "manifests").rglob("*.yaml"),
        *(ROOT / ".tekton").glob("*.yaml"),
    ]:
        texts[str(path.relative_to(ROOT))] = path.read_text()
    for label, text in texts.items():
        assert SECRET_ID not in text and SECRET_KEY not in text, label
    # Manifests and templates hold placeholders only, never key material.
    for label, text in texts.items():
        assert not re.search(r"AKIA[0-9A-Z]{16}", text.replace(SECRET_ID, "")), label
        assert "BEGIN PRIVATE KEY" not in text and "BEGIN RSA PRIVATE KEY" not in text, label


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"seed": -1}, "seed must be an integer"),
        ({"train_params": TrainParams(contamination=0.9)}, "contamination must be in"),
        ({"verify_plan": VerifyPlan(requests=0)}, "verify requests must be"),
    ],
)
def test_a_local_run_with_a_wrong_setting_leaves_no_run_directory(tmp_path, setting, message):
    from anomaly_mlops.adapters.local_run import LocalRunConfig, run_local

    with pytest.raises(ConfigError, match=message):
        run_local(LocalRunConfig(workdir=tmp_path / "runs", **setting))
    assert not (tmp_path / "runs").exists()


def test_no_secret_in_reports(tmp_path, s3_env, monkeypatch):
    from anomaly_mlops.adapters.local_run import LocalRunConfig, run_local
    from anomaly_mlops.steps.validate import LatencyPlan
    from anomaly_mlops.steps.verify import VerifyPlan

    summary = run_local(
        LocalRunConfig(
            workdir=tmp_path, rows=4000, latency=LatencyPlan(single_row_repeats=20), verify_plan=VerifyPlan(requests=20)
        )
    )
    written = [p for p in Path(summary["run_dir"]).rglob("*") if p.is_file() and p.suffix != ".parquet"]
    assert {p.name for p in written} >= {
        "report.html",
        "metrics.json",
        "verify.json",
        "summary.json",
        "model-server.log",
    }
    for path in written:
        text = path.read_bytes().decode("utf-8", "replace")
        assert "local-embedded-secret" not in text, path
