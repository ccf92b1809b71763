"""The Self-Healing Platform as a consumer (issue 12): its 45-feature schema, data built as
its coordination engine builds requests (checked against a real Prometheus), and a
contract test that plays the engine against the real KServe server."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
import requests

from anomaly_mlops.adapters import cli
from anomaly_mlops.adapters.local_services import model_server
from anomaly_mlops.errors import DataError
from anomaly_mlops.model.platform import BASE_METRICS, ENGINE_DEFAULT_ROW, FEATURES
from anomaly_mlops.model.schema import FeatureSchema
from anomaly_mlops.sources.prometheus import PrometheusClient, time_grid
from anomaly_mlops.sources.self_healing import engine_features, engine_request_rows, fetch_platform_frame

from conftest import running_prometheus

ENGINE_METRICS = [
    "node_cpu_utilization",
    "node_memory_utilization",
    "pod_cpu_usage",
    "pod_memory_usage",
    "container_restart_count",
]
ENGINE_STATS = ["value", "mean_5m", "std_5m", "min_5m", "max_5m", "lag_1", "lag_5", "diff", "pct_change"]


def test_the_named_schema_is_the_engines_45_features_in_its_order():
    schema = FeatureSchema.parse("self-healing-platform")
    assert list(schema.features) == [f"{m}_{s}" for m in ENGINE_METRICS for s in ENGINE_STATS]
    assert schema.name == "self-healing-platform" and len(schema) == 45
    assert FeatureSchema.from_dict(schema.to_dict()) == schema
    with pytest.raises(DataError, match="unknown schema name"):
        FeatureSchema.named("nope")


@pytest.fixture(scope="module")
def platform_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("platform-data")
    assert (
        cli.main(
            ["data", "--source", "synthetic", "--schema", "self-healing-platform", "--rows", "9000", "--out", str(out)]
        )
        == 0
    )
    return out


def test_synthetic_data_has_the_schema_units_and_the_engines_arithmetic(platform_data):
    frame = pd.concat(
        [pd.read_parquet(platform_data / "train.parquet"), pd.read_parquet(platform_data / "holdout.parquet")]
    )
    assert [c for c in frame.columns if c in FEATURES] == list(FEATURES)
    assert {"timestamp", "entity", "is_anomaly"} <= set(frame.columns) and frame["entity"].nunique() == 3
    assert 0 < frame["is_anomaly"].mean() < 0.1
    for ratio in ("node_cpu_utilization_value", "node_memory_utilization_value"):
        assert frame[ratio].between(0, 1).all()
    for _, rows in frame.groupby("entity"):
        rows = rows.sort_values("timestamp")
        assert (rows["timestamp"].diff().dropna() == pd.Timedelta("1min")).all()  # a 1-minute grid
        restarts = rows["container_restart_count_value"].to_numpy()
        assert (np.diff(restarts) >= 0).all() and (restarts == np.round(restarts)).all()  # a cumulative counter
        value, lag_1 = rows["pod_cpu_usage_value"].to_numpy(), rows["pod_cpu_usage_lag_1"].to_numpy()
        np.testing.assert_allclose(lag_1[1:], value[:-1])
        np.testing.assert_allclose(rows["pod_cpu_usage_lag_5"].to_numpy()[5:], value[:-5])
        np.testing.assert_allclose(
            rows["pod_cpu_usage_mean_5m"].to_numpy()[5:], pd.Series(value).rolling(6).mean().to_numpy()[5:], rtol=1e-9
        )
        np.testing.assert_allclose(
            rows["pod_cpu_usage_std_5m"].to_numpy()[5:],
            pd.Series(value).rolling(6).std(ddof=0).to_numpy()[5:],
            rtol=1e-7,
            atol=1e-12,
        )
        pct = rows["container_restart_count_pct_change"].to_numpy()
        lag = rows["container_restart_count_lag_1"].to_numpy()
        assert (pct[lag == 0] == 0).all()


def test_data_whose_columns_do_not_match_the_named_schema_is_refused(tmp_path, platform_data):
    frame = pd.read_parquet(platform_data / "train.parquet").drop(columns=["pod_memory_usage_std_5m"])
    frame.to_parquet(tmp_path / "short.parquet")
    with pytest.raises(DataError, match=r"missing feature columns \['pod_memory_usage_std_5m'\]"):
        from anomaly_mlops.sources.files import load_dataset

        load_dataset(str(tmp_path / "short.parquet"), FeatureSchema.parse("self-healing-platform"))


# --------------------------------------------------------------------------- Prometheus


def _raw_series(stamps: np.ndarray) -> list[str]:
    """What node-exporter, cAdvisor and kube-state-metrics would have scraped, once a minute:
    pods p1 and p2 all window, p3 without a memory limit, p4 started half-way."""
    rng = np.random.default_rng(4)
    n = len(stamps)
    idle = np.clip(0.6 + 0.1 * np.sin(np.arange(n) / 30) + rng.normal(0, 0.02, n), 0, 1)
    lines = ["# TYPE node_cpu_seconds counter"]
    for cpu in ("0", "1"):
        counter = np.cumsum(idle * 60 * (1 if cpu == "0" else 0.9))
        lines += [f'node_cpu_seconds_total{{cpu="{cpu}",mode="idle"}} {c:.6f} {t}' for c, t in zip(counter, stamps)]
        lines += [
            f'node_cpu_seconds_total{{cpu="{cpu}",mode="user"}} {c:.6f} {t}'
            for c, t in zip(np.cumsum(60 - idle * 60), stamps)
        ]
    available = 8e9 + 1e9 * np.sin(np.arange(n) / 50) + rng.normal(0, 5e7, n)
    lines.append("# TYPE node_memory_MemAvailable_bytes gauge")
    lines += [f"node_memory_MemAvailable_bytes {a:.0f} {t}" for a, t in zip(available, stamps)]
    lines.append("# TYPE node_memory_MemTotal_bytes gauge")
    lines += [f"node_memory_MemTotal_bytes 16000000000 {t}" for t in stamps]
    cpu_lines, memory_lines, limit_lines, restart_lines = (
        ["# TYPE container_cpu_usage_seconds counter"],
        ["# TYPE container_memory_working_set_bytes gauge"],
        ["# TYPE kube_pod_container_resource_limits gauge"],
        ["# TYPE kube_pod_container_status_restarts gauge"],
    )
    for pod, first in (("p1", 0), ("p2", 0), ("p3", 0), ("p4", n // 2)):
        span = slice(first, n)
        usage = np.cumsum(np.clip(0.3 + rng.normal(0, 0.05, n), 0, None) * 60)[span]
        working = (3e8 + rng.normal(0, 1e7, n))[span]
        restarts = np.cumsum(rng.random(n) < 0.01)[span]
        for container in ("app", "sidecar"):
            cpu_lines += [
                f'container_cpu_usage_seconds_total{{pod="{pod}",container="{container}"}} {u:.6f} {t}'
                for u, t in zip(usage, stamps[span])
            ]
            memory_lines += [
                f'container_memory_working_set_bytes{{pod="{pod}",container="{container}"}} {w:.0f} {t}'
                for w, t in zip(working, stamps[span])
            ]
            restart_lines += [
                f'kube_pod_container_status_restarts_total{{pod="{pod}",container="{container}"}} {r} {t}'
                for r, t in zip(restarts, stamps[span])
            ]
            if pod != "p3":
                limit_lines += [
                    f'kube_pod_container_resource_limits{{pod="{pod}",container="{container}",'
                    f'resource="memory"}} 1000000000 {t}'
                    for t in stamps[span]
                ]
        # The pod-level cgroup series (container="") the engine's queries exclude.
        cpu_lines += [
            f'container_cpu_usage_seconds_total{{pod="{pod}",container=""}} {u * 5:.6f} {t}'
            for u, t in zip(usage, stamps[span])
        ]
    return lines + cpu_lines + memory_lines + limit_lines + restart_lines


@pytest.fixture(scope="module")
def platform_prometheus(tmp_path_factory):
    end = math.floor(time.time() / 60) * 60 - 2 * 3600
    stamps = end - 60 * np.arange(240, -1, -1)
    with running_prometheus(tmp_path_factory.mktemp("platform-prometheus"), _raw_series(stamps)) as url:
        yield url, end


def test_prometheus_gives_the_engines_45_columns_one_entity_per_pod(platform_prometheus, caplog):
    url, end = platform_prometheus
    grid = time_grid(2 * 3600, 60, end)
    with caplog.at_level("WARNING"):
        frame = fetch_platform_frame(PrometheusClient(url), grid=grid, step_s=60)
    assert list(frame.columns) == ["timestamp", "entity", *FEATURES]
    assert sorted(frame["entity"].unique()) == ["p1", "p2", "p4"]
    assert "p3 (no data for pod_memory_usage_value" in caplog.text  # left out, and said so
    counts = frame["entity"].value_counts()
    assert counts["p1"] == counts["p2"] == len(grid) and 0 < counts["p4"] < len(grid)
    # The engine's statistics from Prometheus equal engine_features over Prometheus's own q:
    # the synthetic generator computes what the engine would send.
    for pod in ("p1", "p2"):
        rows = frame[frame["entity"] == pod].reset_index(drop=True)
        base = rows[[f"{m}_value" for m in BASE_METRICS]].to_numpy()
        local = engine_features(base)
        served = rows[list(FEATURES)].to_numpy()
        np.testing.assert_allclose(local[5:], served[5:], rtol=1e-9, atol=1e-12)
    assert frame["pod_memory_usage_value"].between(0, 1).all() and (frame["pod_cpu_usage_value"] > 0.3).all()


def test_the_cli_reads_the_platform_schema_from_prometheus(platform_prometheus, tmp_path):
    url, end = platform_prometheus
    assert (
        cli.main(
            [
                "data",
                "--source",
                "prometheus",
                "--schema",
                "self-healing-platform",
                "--prometheus-url",
                url,
                "--lookback",
                "2h",
                "--end",
                str(end),
                "--out",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    train = pd.read_parquet(tmp_path / "d" / "train.parquet")
    assert list(train.columns) == ["timestamp", "entity", *FEATURES]
    assert json.loads((tmp_path / "d" / "schema.json").read_text())["name"] == "self-healing-platform"


# --------------------------------------------------------------------------- the engine's contract


@pytest.fixture(scope="module")
def platform_model(platform_data, tmp_path_factory):
    from anomaly_mlops.steps.train import TrainParams, train

    out = tmp_path_factory.mktemp("platform-model") / "model"
    return train(
        str(platform_data / "train.parquet"), out, TrainParams(seed=3), FeatureSchema.parse("self-healing-platform")
    ).model_dir


def _engine_row(rng, inject: str | None = None, scoped: bool = False) -> list[float]:
    """One row as the engine really sends it (self_healing.engine_request_rows)."""
    return engine_request_rows(rng, 1, inject, scoped)[0].tolist()


def _engine_predict(url: str, row: list[float]) -> int:
    """What the coordination engine does: one row of 45 float64, `predictions` decoded as a
    list of integers, -1 read as anomaly."""
    response = requests.post(f"{url}/v1/models/anomaly-detector:predict", json={"instances": [row]}, timeout=10)
    assert response.status_code == 200, response.text
    predictions = json.loads(response.text)["predictions"]
    assert isinstance(predictions, list) and len(predictions) == 1
    assert type(predictions[0]) is int and predictions[0] in (-1, 1)  # 1.0 would fail the engine's decode
    return predictions[0]


def flagged(answers: list[int]) -> float:
    return answers.count(-1) / len(answers)


@pytest.mark.parametrize("server", ["lean", "kserve"])
def test_the_engine_contract_on_what_the_engine_really_sends(platform_model, tmp_path, server):
    """Ordinary rows (lag fallback; scoped: node defaults) flagged at most 5%, the all-default
    row (Prometheus down) answered 1 and counted on /metrics, injected incidents caught."""
    rng = np.random.default_rng(11)
    with model_server(
        "anomaly-detector", str(platform_model), log_path=tmp_path / "log", extra_args=("--server", server)
    ) as url:
        health = requests.get(f"{url}/v1/models/anomaly-detector", timeout=5)
        assert health.status_code == 200 and health.json()["ready"] is True
        ordinary = [_engine_predict(url, _engine_row(rng)) for _ in range(100)]
        ordinary_scoped = [_engine_predict(url, _engine_row(rng, scoped=True)) for _ in range(100)]
        incidents = {
            (kind, scoped): [_engine_predict(url, _engine_row(rng, kind, scoped)) for _ in range(8)]
            for kind, scoped in [("cpu_runaway", False), ("cpu_runaway", True), ("node_memory_pressure", False)]
        }
        all_defaults = [_engine_predict(url, ENGINE_DEFAULT_ROW.tolist()) for _ in range(3)]
        metrics = requests.get(f"{url}/metrics", timeout=5).text
        wrong_length = {
            n: requests.post(f"{url}/v1/models/anomaly-detector:predict", json={"instances": [[0.5] * n]}, timeout=10)
            for n in (44, 46)
        }
    assert flagged(ordinary) <= 0.05 and flagged(ordinary_scoped) <= 0.05, (ordinary, ordinary_scoped)
    for case, answers in incidents.items():
        assert flagged(answers) >= 0.75, (case, answers)
    assert all_defaults == [1, 1, 1]
    assert 'anomaly_detector_engine_default_rows_total{model="anomaly-detector"} 3.0' in metrics
    for n, response in wrong_length.items():
        assert response.status_code == 400
        assert (
            f"has {n} values; the model expects 45 features (schema self-healing-platform" in response.json()["error"]
        )


def test_a_model_trained_on_the_features_as_computed_alarms_on_scoped_requests(platform_data, platform_model, tmp_path):
    """--fixed-engine (how every model of this schema was trained before) flags most ordinary
    scoped rows: the engine's node defaults are far from any node row it was fitted on."""
    from anomaly_mlops.model.artifacts import load_model_dir
    from anomaly_mlops.steps.train import TrainParams, train

    fixed = train(
        str(platform_data / "train.parquet"),
        tmp_path / "fixed",
        TrainParams(seed=3, fixed_engine=True),
        FeatureSchema.parse("self-healing-platform"),
    )
    assert fixed.metadata["engine_features"] == "as computed" and "engine_scoped_offset" not in fixed.metadata
    rng = np.random.default_rng(5)
    scoped = np.array([_engine_row(rng, scoped=True) for _ in range(50)])
    assert flagged(load_model_dir(fixed.model_dir).score(scoped)[0].tolist()) > 0.5
    ours = load_model_dir(platform_model)
    assert ours.metadata["engine_features"] == "engine fallbacks" and ours.engine_scoped_offset > 0
    assert flagged(ours.score(scoped)[0].tolist()) <= 0.05


def test_the_sklearn_runtime_is_refused_for_the_scoped_threshold(platform_model):
    from anomaly_mlops.errors import ConfigError
    from anomaly_mlops.model.artifacts import check_runtime_serves

    with pytest.raises(
        ConfigError, match="its own threshold for the platform engine's scoped requests.*--fixed-engine"
    ):
        check_runtime_serves("sklearn", platform_model)


# --------------------------------------------------------------------------- placement and ownership


PLATFORM_NS = "self-healing-platform"


def _platform_isvc() -> dict:
    """The InferenceService the platform's Helm chart deploys through ArgoCD today."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": "anomaly-detector",
            "namespace": PLATFORM_NS,
            "generation": 1,
            "resourceVersion": "7",
            "labels": {"app.kubernetes.io/instance": "self-healing-platform"},
            "annotations": {
                "serving.kserve.io/deploymentMode": "RawDeployment",
                "argocd.argoproj.io/tracking-id": "self-healing-platform:serving.kserve.io/InferenceService:"
                "self-healing-platform/anomaly-detector",
            },
        },
        "spec": {
            "predictor": {
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "kserve/sklearnserver:v0.11.0",
                        "args": [
                            "--model_name=anomaly-detector",
                            "--model_dir=/mnt/models/anomaly-detector",
                            "--http_port=8080",
                        ],
                        "volumeMounts": [{"name": "model-storage", "mountPath": "/mnt/models"}],
                    }
                ],
                "volumes": [{"name": "model-storage", "persistentVolumeClaim": {"claimName": "model-storage-pvc"}}],
            }
        },
        "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]},
    }


@pytest.fixture
def platform_api():
    from k8s_fake import FakeKubeAPI

    fake = FakeKubeAPI()
    fake.objects[(PLATFORM_NS, "anomaly-detector")] = _platform_isvc()
    yield fake
    fake.stop()


def _platform_spec(version: str, **overrides):
    from anomaly_mlops.steps.deploy import PROFILES, DeploySpec

    values = {
        **PROFILES["self-healing-platform"],
        "model_version": version,
        "storage_uri": f"pvc://model-storage-pvc/anomaly-detector/{version}/",
        **overrides,
    }
    return DeploySpec(**values)


def test_an_argocd_owned_service_is_refused_without_take_over(platform_api):
    from anomaly_mlops.errors import DeployError
    from anomaly_mlops.steps.deploy import InferenceServiceClient

    with pytest.raises(
        DeployError, match=r"managed by another tool \(ArgoCD: annotation argocd.argoproj.io/tracking-id"
    ):
        InferenceServiceClient(platform_api.api()).apply(_platform_spec("v1"))
    assert [m for m, _, _ in platform_api.requests] == ["GET"]  # nothing written


def test_take_over_converts_the_custom_container_and_rollback_restores_it(platform_api):
    from anomaly_mlops.steps.deploy import (
        MODEL_VERSION_ANNOTATION,
        TAKEN_OVER_ANNOTATION,
        InferenceServiceClient,
        deploy,
    )

    client = InferenceServiceClient(platform_api.api())
    before = _platform_isvc()["spec"]["predictor"]
    deploy(_platform_spec("v1", take_over=True), client, timeout_s=5, poll_s=0.01)
    obj = platform_api.objects[(PLATFORM_NS, "anomaly-detector")]
    predictor = obj["spec"]["predictor"]
    assert "containers" not in predictor and "volumes" not in predictor  # KServe refuses both forms
    assert predictor["model"]["storageUri"] == "pvc://model-storage-pvc/anomaly-detector/v1/"
    assert predictor["model"]["runtime"] == "anomaly-detector-runtime"
    annotations, labels = obj["metadata"]["annotations"], obj["metadata"]["labels"]
    assert "argocd.argoproj.io/tracking-id" not in annotations and "app.kubernetes.io/instance" not in labels
    assert "ArgoCD" in annotations[TAKEN_OVER_ANNOTATION] and annotations[MODEL_VERSION_ANNOTATION] == "v1"

    # Later runs need no take-over; v2 replaces v1; rollback returns v1 and its version label.
    deploy(_platform_spec("v2"), client, timeout_s=5, poll_s=0.01)
    client.rollback("anomaly-detector", PLATFORM_NS)
    obj = platform_api.objects[(PLATFORM_NS, "anomaly-detector")]
    assert obj["spec"]["predictor"]["model"]["storageUri"].endswith("/v1/")
    assert obj["metadata"]["annotations"][MODEL_VERSION_ANNOTATION] == "v1"

    # Rolling back the first take-over restores the platform's own container predictor exactly.
    platform_api.objects[(PLATFORM_NS, "anomaly-detector")] = _platform_isvc()
    deploy(_platform_spec("v1", take_over=True), client, timeout_s=5, poll_s=0.01)
    client.rollback("anomaly-detector", PLATFORM_NS)
    obj = platform_api.objects[(PLATFORM_NS, "anomaly-detector")]
    assert obj["spec"]["predictor"] == before
    assert MODEL_VERSION_ANNOTATION not in obj["metadata"]["annotations"]


def test_take_over_on_openshift_ai_3_4_where_the_mode_is_called_standard(platform_api):
    """KServe 0.17+ stores the platform's RawDeployment as Standard: still the same mode."""
    from anomaly_mlops.steps.deploy import InferenceServiceClient, deploy

    platform_api.kserve_017 = True
    platform = platform_api.objects[(PLATFORM_NS, "anomaly-detector")]
    platform["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "Standard"
    platform["status"]["deploymentMode"] = "Standard"
    client = InferenceServiceClient(platform_api.api())
    assert deploy(_platform_spec("v1", take_over=True), client, timeout_s=5, poll_s=0.01).action == "updated"
    obj = platform_api.objects[(PLATFORM_NS, "anomaly-detector")]
    assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert "canaryTrafficPercent" not in obj["spec"]["predictor"]
    assert client.rollback("anomaly-detector", PLATFORM_NS) == "restored the previous predictor (custom containers)"
    assert (
        platform_api.objects[(PLATFORM_NS, "anomaly-detector")]["spec"]["predictor"]
        == _platform_isvc()["spec"]["predictor"]
    )


def test_the_deployment_mode_of_an_existing_service_is_not_changed(platform_api):
    from anomaly_mlops.errors import DeployError
    from anomaly_mlops.steps.deploy import InferenceServiceClient

    with pytest.raises(
        DeployError,
        match="runs as RawDeployment; KServe refuses the change .*cannot be changed from 'RawDeployment' to 'Serverless'",
    ):
        InferenceServiceClient(platform_api.api()).apply(
            _platform_spec("v1", take_over=True, deployment_mode="Serverless")
        )


# --------------------------------------------------------------------------- PVC storage


def test_publishing_into_a_mounted_volume_keeps_the_release_rules(model_dir, copy_model, tmp_path):
    import threading

    from anomaly_mlops.errors import VersionConflictError
    from anomaly_mlops.model.artifacts import load_model_dir, write_manifest
    from anomaly_mlops.store.releases import publish_to_directory

    volume = tmp_path / "pvc"
    volume.mkdir()
    result = publish_to_directory(model_dir, volume, "anomaly-detector", "v1", claim_name="model-storage-pvc")
    assert result.status == "published" and result.uri == "pvc://model-storage-pvc/anomaly-detector/v1/"
    version = volume / "anomaly-detector" / "v1"
    assert sorted(p.name for p in version.iterdir()) == [
        "MANIFEST.sha256",
        "forest.npz",
        "metadata.json",
        "model.joblib",
        "model.skops",
    ]
    assert len(list(version.glob("*.joblib"))) == 1  # the sklearn runtime loads exactly one
    assert not [p for p in (volume / "anomaly-detector").iterdir() if p.name.startswith(".staging")]
    load_model_dir(version)
    assert publish_to_directory(model_dir, volume, "anomaly-detector", "v1").status == "unchanged"

    (version / "model.skops").write_bytes(b"damaged")
    assert publish_to_directory(model_dir, volume, "anomaly-detector", "v1").status == "repaired"
    load_model_dir(version)

    other = copy_model("other")
    (other / "metadata.json").write_text((other / "metadata.json").read_text().replace('"seed"', '"seed" ', 1))
    write_manifest(other)
    with pytest.raises(VersionConflictError, match="already released with different content"):
        publish_to_directory(other, volume, "anomaly-detector", "v1")
    (volume / "anomaly-detector" / ".claims").mkdir(exist_ok=True)
    (volume / "anomaly-detector" / ".claims" / "v2.json").write_text('{"manifest_sha256": "0", "publisher": "dead"}')
    with pytest.raises(VersionConflictError, match="claimed by dead"):
        publish_to_directory(model_dir, volume, "anomaly-detector", "v2")
    assert not (volume / "anomaly-detector" / "v2").exists()

    outcomes = []
    barrier = threading.Barrier(2)

    def race(directory):
        barrier.wait()
        try:
            outcomes.append(publish_to_directory(directory, volume, "anomaly-detector", "v3").status)
        except VersionConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=race, args=(d,)) for d in (model_dir, other)]
    [t.start() for t in threads]
    [t.join(30) for t in threads]
    assert sorted(outcomes) == ["conflict", "published"]
    load_model_dir(volume / "anomaly-detector" / "v3")


@pytest.mark.parametrize("claim", ["", '{"manifest_sha256": "ab', "[]"])
def test_a_cut_short_volume_claim_is_refused_with_what_to_do(model_dir, tmp_path, claim):
    from anomaly_mlops.errors import VersionConflictError
    from anomaly_mlops.store.releases import publish_to_directory

    volume = tmp_path / "pvc"
    (volume / "anomaly-detector" / ".claims").mkdir(parents=True)
    path = volume / "anomaly-detector" / ".claims" / "v1.json"
    path.write_text(claim)
    with pytest.raises(VersionConflictError, match=r"its claim .*v1\.json is (empty|not a whole claim).*delete"):
        publish_to_directory(model_dir, volume, "anomaly-detector", "v1")
    assert not (volume / "anomaly-detector" / "v1").exists()
    path.unlink()
    assert publish_to_directory(model_dir, volume, "anomaly-detector", "v1").status == "published"


def test_a_killed_volume_publishers_staging_folder_is_removed_by_the_next_publish(model_dir, tmp_path):
    import os
    import time

    from anomaly_mlops.store.releases import STALE_STAGING_S, publish_to_directory

    volume = tmp_path / "pvc"
    folder = volume / "anomaly-detector"
    dead, live = folder / ".staging-v1-deadbeef", folder / ".staging-v1-c0ffee00"
    for leftover in (dead, live):
        leftover.mkdir(parents=True)
        (leftover / "model.joblib").write_bytes(b"half a model")
    past = time.time() - STALE_STAGING_S - 60
    os.utime(dead, (past, past))
    assert publish_to_directory(model_dir, volume, "anomaly-detector", "v1").status == "published"
    assert not dead.exists()
    assert live.exists()  # recent: perhaps a publisher of the same content still copying
