"""Shared fixtures: one small synthetic dataset and model per session, a real S3-protocol
server (moto server mode) and a real KServe model server, both on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_mlops.data import prepare_data
from anomaly_mlops.local_services import embedded_s3, model_server
from anomaly_mlops.train import TrainParams, train

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    return prepare_data(tmp_path_factory.mktemp("data"), rows=8_000, seed=7)


@pytest.fixture(scope="session")
def model_dir(prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "model"
    return train(str(prepared.train_path), out, TrainParams(n_estimators=50, seed=7)).model_dir


@pytest.fixture(scope="session")
def s3_env():
    with embedded_s3() as env:
        yield env


@pytest.fixture(scope="session")
def served(model_dir, tmp_path_factory):
    """(base_url, model_name) of a KServe server serving model_dir from disk."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    with model_server("detector", str(model_dir), log_path=log) as url:
        yield url, "detector"


@pytest.fixture
def copy_model(model_dir, tmp_path):
    """A private copy of the session model, safe to tamper with."""
    import shutil

    def make(name: str = "model") -> Path:
        return Path(shutil.copytree(model_dir, tmp_path / name))

    return make
