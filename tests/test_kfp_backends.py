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


# --------------------------------------------------------------------------- run creation
# The API server compiles the IR to an Argo Workflow when a run or recurring run is created.
# Before KFP 2.14 its addImplicitDependencies refuses any task input of kind taskFinalStatus:
# opendatahub-io/data-science-pipelines backend/src/v2/compiler/argocompiler/dag.go,
# v2.0.0 l.483-484, v2.5.0 l.487-488, v2.10.0 l.492-493, v2.15.0 l.641-642
# (`return wrap(fmt.Errorf("task final status not supported yet"))`); supported from
# kubeflow/pipelines PR #11953 (KFP 2.14).
BACKENDS = ["2.0.5", "2.2.0", "2.4.0", "2.5.0", "2.14"]


def run_creation_refusals(ir: dict, backend: str) -> list[str]:
    """What the backend's Argo compiler refuses in ``ir`` when a run is created."""
    if tuple(int(p) for p in backend.split(".")) >= (2, 14):
        return []
    dags = [ir["root"]["dag"]] + [c["dag"] for c in ir.get("components", {}).values() if "dag" in c]
    refused = []
    for dag in dags:
        for task_name, task in dag.get("tasks", {}).items():
            for input_name, spec in (task.get("inputs") or {}).get("parameters", {}).items():
                if "taskFinalStatus" in spec:
                    refused.append(
                        f"failed to add implicit deps: task final status not supported yet ({task_name}.{input_name})"
                    )
    return refused


def pipeline_ir(path: Path) -> dict:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and "root" in d)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["training", "deploy-only", "rollback"])
def test_the_shipped_pipelines_are_accepted_at_run_creation_on_every_backend(name, backend):
    assert run_creation_refusals(pipeline_ir(ROOT / "pipelines" / "compiled" / f"{name}.yaml"), backend) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_final_status_variant_runs_only_on_kfp_2_14(backend):
    """The exit handler the training pipeline had (dsl.PipelineTaskFinalStatus) is what every
    OpenShift AI 2.x backend refuses: the check can fail, and the variant says where it runs."""
    refused = run_creation_refusals(
        pipeline_ir(ROOT / "pipelines" / "compiled" / "training-final-status.yaml"), backend
    )
    if backend == "2.14":
        assert refused == []
    else:
        assert refused == [
            "failed to add implicit deps: task final status not supported yet (pipeline-final-status.status)"
        ]


def test_a_feature_the_target_backend_refuses_is_a_compile_error(tmp_path):
    from anomaly_mlops.errors import ConfigError
    from anomaly_mlops.pipelines.compile import compile_all
    from anomaly_mlops.pipelines.definitions import PipelineOptions

    with pytest.raises(ConfigError, match=r"needs a KFP 2\.14\+ backend .*KFP 2\.5\.0 \(DSP 2\.14-2\.16"):
        compile_all(PipelineOptions(backend="2.5.0", final_status=True), tmp_path / "p", tmp_path / "c")
    with pytest.raises(ConfigError, match="unknown KFP backend '2.6': one of 2.0.5, 2.2.0"):
        compile_all(PipelineOptions(backend="2.6"), tmp_path / "p", tmp_path / "c")


def test_cli_compile_names_the_backend_mismatch(tmp_path):
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "anomaly-mlops"), "compile", "--final-status", "--backend", "2.2.0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "needs a KFP 2.14+ backend" in done.stderr and "KFP 2.2.0 (DSP 2.7-2.10)" in done.stderr
