"""Registration in the Kubeflow Model Registry (steps/registry.py, `anomaly-mlops register`):
the real `model-registry` client (0.3.9) on the wire against a fake of the registry's REST API
that keeps its OpenAPI rules (tests/registry_fake.py)."""

from __future__ import annotations

import json
import uuid

import pytest
import registry_fake

from anomaly_mlops.adapters.cli import main
from anomaly_mlops.adapters.local_services import free_port
from anomaly_mlops.errors import ConfigError, VersionConflictError
from anomaly_mlops.model.artifacts import write_manifest
from anomaly_mlops.steps.registry import MODEL_FORMAT, Lineage, RegistryError, register_version
from anomaly_mlops.store.releases import publish

pytestmark = pytest.mark.skipif(
    not registry_fake.available(), reason="../shared/schemas/model-registry not found beside the checkout"
)
TOKEN = "registry-token-3"


@pytest.fixture
def registry():
    fake = registry_fake.FakeModelRegistry(token=TOKEN)
    yield fake
    fake.stop()


@pytest.fixture
def released(model_dir, settings):
    name = f"reg-{uuid.uuid4().hex[:6]}"
    return name, publish(model_dir, name, "v1", settings)


def test_a_released_version_is_registered_with_its_storage_metrics_and_lineage(registry, released, model_dir):
    name, release = released
    validation = {"roc_auc": 0.93, "pr_auc": 0.61, "f1": 0.58, "passed": True}
    lineage = Lineage("kfp", "run-123", "anomaly-detector-training", "anomaly", "0123abc")
    done = register_version(
        registry.url, model_dir, name, "v1", release.uri, storage_key="aws-connection-models",
        validation=validation, lineage=lineage, token=TOKEN,
    )  # fmt: skip
    assert done.status == "registered"
    (model,) = registry.models.values()
    (version,) = registry.versions.values()
    (artifact,) = registry.artifacts.values()
    assert model["name"] == name and version["name"] == "v1" and version["registeredModelId"] == model["id"]
    assert artifact["uri"] == release.uri and artifact["storageKey"] == "aws-connection-models"
    assert artifact["storagePath"] == f"{name}/v1/"
    assert (artifact["modelFormatName"], artifact["modelFormatVersion"]) == MODEL_FORMAT
    assert artifact["modelSourceKind"] == "kfp" and artifact["modelSourceId"] == "run-123"
    # MetadataValue: {"metadataType": ..., "<kind>_value": value}
    properties = {
        k: next(x for key, x in v.items() if key.endswith("_value")) for k, v in version["customProperties"].items()
    }
    assert properties["roc_auc"] == 0.93 and properties["gates_passed"] == "true"
    assert properties["git_commit"] == "0123abc" and properties["namespace"] == "anomaly"
    assert properties["manifest_sha256"] == release.manifest_sha256
    assert properties["feature_schema"].startswith("cpu_usage_pct,")


def test_the_runtime_declares_the_model_format_registered():
    import yaml
    from tekton_listener import ROOT

    runtime = yaml.safe_load((ROOT / "manifests" / "kserve" / "base" / "servingruntime.yaml").read_text())
    formats = {(f["name"], str(f["version"])) for f in runtime["spec"]["supportedModelFormats"]}
    assert MODEL_FORMAT in formats


def test_registering_again_is_idempotent_and_other_content_is_refused(registry, released, model_dir, copy_model):
    name, release = released
    first = register_version(registry.url, model_dir, name, "v1", release.uri, storage_key="k", token=TOKEN)
    again = register_version(registry.url, model_dir, name, "v1", release.uri, storage_key="k", token=TOKEN)
    assert again.status == "unchanged" and again.model_version_id == first.model_version_id
    assert len(registry.versions) == 1 and len(registry.artifacts) == 1
    other = copy_model()
    (other / "metadata.json").write_text((other / "metadata.json").read_text().replace('"seed"', '"seed" ', 1))
    write_manifest(other)
    with pytest.raises(VersionConflictError, match="registered with other content"):
        register_version(registry.url, other, name, "v1", release.uri, storage_key="k", token=TOKEN)
    assert len(registry.versions) == 1


def test_the_fake_refuses_what_the_registry_refuses(registry):
    import requests

    headers = {"Authorization": f"Bearer {TOKEN}"}
    base = f"{registry.url}/api/model_registry/v1alpha3"
    assert requests.post(f"{base}/registered_models", json={}, headers=headers, timeout=5).status_code == 400
    assert (
        requests.post(
            f"{base}/registered_models", json={"name": "m", "state": "GONE"}, headers=headers, timeout=5
        ).status_code
        == 400
    )
    assert requests.post(f"{base}/registered_models", json={"name": "m"}, headers=headers, timeout=5).status_code == 201
    assert requests.post(f"{base}/registered_models", json={"name": "m"}, headers=headers, timeout=5).status_code == 409
    bad_parent = {"name": "v1", "registeredModelId": "x1"}
    assert requests.post(f"{base}/model_versions", json=bad_parent, headers=headers, timeout=5).status_code == 400
    assert requests.get(f"{base}/registered_model?name=none", headers=headers, timeout=5).status_code == 404
    assert requests.get(f"{base}/registered_models", timeout=5).status_code == 401


@pytest.mark.parametrize(
    "model_name, version, message",
    [
        ("Anomaly Detector", "v1", "model name"),
        ("anomaly-detector", "../v1", "version"),
        ("anomaly-detector", "", "version"),
    ],
)
def test_names_that_break_the_naming_rules_are_refused_before_anything_is_written(
    registry, model_dir, model_name, version, message
):
    with pytest.raises(ConfigError, match=message):
        register_version(registry.url, model_dir, model_name, version, "s3://b/x/", storage_key="k", token=TOKEN)
    assert registry.calls == []


def test_an_unreachable_registry_says_the_release_is_safe_and_how_to_register_later(released, model_dir):
    name, release = released
    with pytest.raises(RegistryError, match=r"release s3://.* is published and safe; register it later with"):
        register_version(
            f"http://127.0.0.1:{free_port()}", model_dir, name, "v1", release.uri, storage_key="k", token=TOKEN
        )


def test_the_cli_registers_and_never_prints_the_token(registry, released, model_dir, tmp_path, capsys):
    name, release = released
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "metrics.json").write_text(json.dumps({"roc_auc": 0.9, "passed": True}))
    code = main(
        ["register", "--registry-url", registry.url, "--model-dir", str(model_dir), "--model-name", name,
         "--version", "v1", "--uri", release.uri, "--validation", str(tmp_path / "metrics.json"),
         "--source-kind", "tekton", "--token-file", str(tmp_path / "token")]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["status"] == "registered"
    assert TOKEN not in out.out + out.err
