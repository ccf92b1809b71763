"""Shared fixtures: one small synthetic dataset and model per session, a real S3-protocol
server (moto server mode) and a real KServe model server, both on loopback."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from anomaly_mlops.adapters.local_services import embedded_s3, model_server
from anomaly_mlops.steps.data import prepare_data
from anomaly_mlops.steps.train import TrainParams, train

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    return prepare_data(tmp_path_factory.mktemp("data"), rows=8_000, seed=7)


@pytest.fixture(scope="session")
def model_dir(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "model"
    # Raw metrics, no score smoothing: a row's score is its own, so protocol tests may send
    # single rows without an entity (tests/test_history.py, the windowed-model tests and the
    # end-to-end runs on the defaults cover history).
    params = TrainParams(n_estimators=50, seed=7, feature_window=0, score_smoothing=0)
    return train(str(prepared.train_path), out, params).model_dir


@pytest.fixture(scope="session")
def s3_env():
    with embedded_s3() as env:
        yield env


@pytest.fixture
def settings(s3_env):
    """S3Settings for the embedded S3-protocol server."""
    from anomaly_mlops.store.s3 import S3Settings

    return S3Settings.from_env(s3_env)


@pytest.fixture
def raw(s3_env):
    """A plain boto3 client on the embedded server, to look at (or damage) what was written."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_S3_ENDPOINT"],
        aws_access_key_id="x",
        aws_secret_access_key="y",
        region_name="us-east-1",
    )


@pytest.fixture(scope="session", params=["lean", "kserve"])
def served(request, model_dir, tmp_path_factory):
    """(base_url, model_name) of a server serving model_dir from disk: every protocol test
    runs against both the lean server (the default) and the KServe model server."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with model_server("detector", str(model_dir), log_path=log, extra_args=("--server", request.param)) as url:
        yield url, "detector"


@pytest.fixture
def copy_model(model_dir, tmp_path):
    """A private copy of the session model, safe to tamper with."""
    import shutil

    def make(name: str = "model") -> Path:
        return Path(shutil.copytree(model_dir, tmp_path / name))

    return make


@contextmanager
def running_prometheus(
    root: Path, openmetrics_lines: list[str], *, interval: str = "1m", scrape: str = "[]", rules=(), alerting=None
):
    """A real Prometheus on loopback whose history is back-filled from OpenMetrics lines
    (promtool); scrape and evaluation interval 1m by default, so a subquery's resolution is
    one minute. ``scrape``: its scrape_configs (YAML); ``rules``: rule files to evaluate;
    ``alerting``: an Alertmanager URL to send alerts to."""
    import subprocess
    import time

    import requests

    from anomaly_mlops.adapters.local_services import free_port

    if not (shutil.which("prometheus") and shutil.which("promtool")):
        pytest.skip("Prometheus is not installed: run `make prometheus` (Debian package prometheus)")
    source = root / "history.om"
    source.write_text("\n".join([*openmetrics_lines, "# EOF"]) + "\n")
    data = root / "tsdb"
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": yaml.safe_load(scrape),
        "rule_files": [str(r) for r in rules],
    }
    if alerting:
        target = alerting.split("://", 1)[1]
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [target]}]}]}
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=30d",
        ],
        stdout=open(root / "prometheus.log", "w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("Prometheus did not become ready:\n" + (root / "prometheus.log").read_text()[-2000:])
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory):
    """A real Prometheus with 6 hours of back-filled history ending 3 hours ago: node
    metrics from the synthetic generator, plus series made to fail (two instances, a
    30-minute gap, NaN samples) and a fleet whose nodes joined and left inside the window.
    Yields (url, end, expected frame)."""
    import math
    import time

    import numpy as np

    from anomaly_mlops.model.schema import DEFAULT_FEATURES
    from anomaly_mlops.sources.synthetic import generate_synthetic

    end = math.floor(time.time() / 60) * 60 - 3 * 3600
    points = 361
    stamps = end - 60 * (points - 1) + 60 * np.arange(points)
    frame = generate_synthetic(rows=points, seed=11).round(6)
    lines = []
    for feature in DEFAULT_FEATURES:
        lines.append(f"# TYPE mlops_{feature} gauge")
        for stamp, value in zip(stamps, frame[feature]):
            lines.append(f'mlops_{feature}{{instance="node-1"}} {value} {stamp}')
            if feature == "cpu_usage_pct":
                lines.append(f'mlops_{feature}{{instance="node-2"}} {value + 1} {stamp}')
    lines.append("# TYPE mlops_gappy gauge")
    lines += [f'mlops_gappy{{instance="node-1"}} 1 {s}' for i, s in enumerate(stamps) if not 100 <= i < 130]
    lines.append("# TYPE mlops_nan gauge")
    lines += [f'mlops_nan{{instance="node-1"}} {"NaN" if i == 50 else 1} {s}' for i, s in enumerate(stamps)]
    # node-1 throughout; node-2 joined at step 300 of 361; node-3 left after step 199
    lines.append("# TYPE mlops_fleet gauge")
    lines += [f'mlops_fleet{{instance="node-1"}} 1 {s}' for s in stamps]
    lines += [f'mlops_fleet{{instance="node-2"}} 2 {s}' for s in stamps[300:]]
    lines += [f'mlops_fleet{{instance="node-3"}} 3 {s}' for s in stamps[:200]]
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), lines) as url:
        expected = frame[list(DEFAULT_FEATURES)].copy()
        expected.index = stamps
        yield url, end, expected


@pytest.fixture(scope="session")
def windowed(tmp_path_factory):
    """(model, metrics) of a small windowed, smoothed model (15-row features with the default
    window columns and raw-metric trees, 4-row smoothing, metrics on their principal axes and
    the reconstruction error added to the forest's score, so that these tests cover the
    basis's projection and the second score too; ``model_dir`` is the default) on synthetic
    data: for the per-entity history, batching, shared-history and GPU-path tests."""
    from anomaly_mlops.model.artifacts import load_model_dir
    from anomaly_mlops.sources.synthetic import generate_synthetic

    frame = generate_synthetic(3000, seed=3)
    path = tmp_path_factory.mktemp("windowed-data") / "train.csv"
    frame.to_csv(path, index=False)
    out = tmp_path_factory.mktemp("windowed-model") / "m"
    params = TrainParams(
        n_estimators=30, feature_window=15, score_smoothing=4, metric_basis="principal", reconstruction_variance=0.9
    )
    train(str(path), out, params)
    model = load_model_dir(out)
    assert model.reconstruction is not None and model.transform.basis is not None  # what these tests cover
    return model, frame.iloc[:, 1:7].to_numpy()
