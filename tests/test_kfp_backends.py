"""The compiled IR against what the Data Science Pipelines backends OpenShift AI ships
really parse: the kubernetes platform config is read strictly (unknown fields refused) with
the protos of the oldest supported kfp-kubernetes releases, each in its own venv
(`make kfp-protos`, part of `make test`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / ".venv-kfp-protos"
CHECKER = ROOT / "tests" / "tools" / "kfp_platform_check.py"


def executors(path: Path) -> dict:
    found = {}
    for document in yaml.safe_load_all(path.read_text()):
        found.update(
            (((document or {}).get("platforms") or {}).get("kubernetes") or {})
            .get("deploymentSpec", {})
            .get("executors", {})
        )
    return found


def strict_parse(release: str, configs: dict) -> dict:
    python = PROTOS / release / "bin" / "python"
    if not python.exists():
        pytest.skip(f"kfp-kubernetes {release} protos are not installed: run `make kfp-protos`")
    done = subprocess.run(
        [str(python), str(CHECKER)], input=json.dumps(configs), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", ["training", "deploy-only", "rollback"])
def test_shipped_ir_parses_strictly_on_kfp_2_2_0_protos(name):
    configs = executors(ROOT / "pipelines" / "compiled" / f"{name}.yaml")
    if name != "rollback":
        assert configs, "the S3 steps mount the data connection"
    assert strict_parse("1.2.0", configs) == {executor: None for executor in configs}


def test_ir_without_tolerations_parses_strictly_on_kfp_2_0_5_protos(tmp_path):
    from anomaly_mlops.pipelines.compile import compile_all
    from anomaly_mlops.pipelines.definitions import PipelineOptions

    compile_all(PipelineOptions(gpu_toleration_key=None), tmp_path / "p", tmp_path / "c")
    for path in sorted((tmp_path / "p").glob("*.yaml")):
        configs = executors(path)
        assert strict_parse("1.0.0", configs) == {executor: None for executor in configs}, path.name
    validate = executors(tmp_path / "p" / "training.yaml")["exec-validate-model"]
    assert validate["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}


def test_the_sdk_output_is_what_the_old_drivers_refuse(tmp_path):
    """Without portable_platform_config the same pipeline fails the strict parse: the test
    can tell."""
    from kfp import compiler

    from anomaly_mlops.pipelines.definitions import PIPELINES, PipelineOptions

    raw = tmp_path / "raw.yaml"
    compiler.Compiler().compile(PIPELINES["training"](PipelineOptions()), str(raw))
    errors = strict_parse("1.2.0", executors(raw))
    assert any(e and ("optional" in e or "secretNameParameter" in e) for e in errors.values()), errors


def test_the_shipped_ir_names_the_secret_by_a_constant_and_keeps_it_required():
    configs = executors(ROOT / "pipelines" / "compiled" / "training.yaml")
    for executor in ("exec-prepare-data", "exec-publish-model"):
        (secret,) = configs[executor]["secretAsEnv"]
        assert secret["secretName"] == "aws-connection-models"
        assert "optional" not in secret and "secretNameParameter" not in secret
