"""KFP: committed compiled YAML is fresh, the IR carries what kfp.local ignores (GPU,
tolerations, node selector, secret env, caching, retries), the training pipeline runs
with kfp.local, and submit/schedule send what DSP expects."""

import json
import re
from pathlib import Path

import pytest
import yaml

from anomaly_mlops.adapters.submit import check_arguments, check_cron, make_client, schedule, submit_run
from anomaly_mlops.errors import ConfigError
from anomaly_mlops.pipelines.compile import COMPONENTS_OUT, PIPELINES_OUT, stale_files
from anomaly_mlops.pipelines.definitions import PIPELINES, PipelineOptions, build_training_pipeline
from anomaly_mlops.store.s3 import ENV_KEYS

from kfp_fake import FakeKFP

TRAINING = PIPELINES_OUT / "training.yaml"


def load(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def executors(ir: dict) -> dict:
    return ir["deploymentSpec"]["executors"]


def k8s(platform: dict, name: str) -> dict:
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].get(name, {})


def all_tasks(ir: dict) -> dict:
    tasks = dict(ir["root"]["dag"]["tasks"])
    for component in ir["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def test_committed_yaml_is_fresh():
    problems = stale_files()
    assert not problems, "\n".join(problems)
    assert {p.stem for p in PIPELINES_OUT.glob("*.yaml")} == set(PIPELINES)
    assert (COMPONENTS_OUT / "validate_model.yaml").exists()


def test_validate_runs_on_a_gpu_node():
    ir, platform = load(TRAINING)
    resources = executors(ir)["exec-validate-model"]["container"]["resources"]
    assert (
        resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        and resources["accelerator"]["resourceCount"] == "1"
    )
    placement = k8s(platform, "exec-validate-model")
    assert placement["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
    assert placement["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    # Only validate asks for a GPU.
    others = [n for n, e in executors(ir).items() if "accelerator" in e["container"].get("resources", {})]
    assert others == ["exec-validate-model"]


def test_gpu_placement_is_configurable(tmp_path):
    from kfp import compiler

    path = tmp_path / "p.yaml"
    options = PipelineOptions(gpu_node_selector=("node-role.kubernetes.io/gpu", ""), gpu_toleration_key=None)
    compiler.Compiler().compile(build_training_pipeline(options), str(path))
    ir, platform = load(path)
    placement = {k: v for k, v in k8s(platform, "exec-validate-model").items() if k != "secretAsEnv"}  # champion
    assert placement == {"nodeSelector": {"labels": {"node-role.kubernetes.io/gpu": ""}}}
    compiler.Compiler().compile(build_training_pipeline(PipelineOptions(gpu=False)), str(path))
    ir, platform = load(path)
    assert "accelerator" not in executors(ir)["exec-validate-model"]["container"]["resources"]
    assert set(k8s(platform, "exec-validate-model")) == {"secretAsEnv"}


def test_validate_image_is_a_compile_option(tmp_path):
    """--validate-image puts validate alone on the image with torch (the GPU path), in the
    pipelines and in the component spec; empty, every step runs on --image."""
    from anomaly_mlops.adapters.cli import build_parser
    from anomaly_mlops.adapters.cli.pipelines import _pipeline_options
    from anomaly_mlops.pipelines.compile import compile_all

    args = build_parser().parse_args(
        ["compile", "--image", "registry/steps:1", "--validate-image", "registry/validate-gpu:1"]
    )
    options = _pipeline_options(args)
    compile_all(options, pipelines_out=tmp_path / "pipelines", components_out=tmp_path / "specs")
    ir, _ = load(tmp_path / "pipelines" / "training.yaml")
    images = {name: e["container"]["image"] for name, e in executors(ir).items()}
    assert images.pop("exec-validate-model") == "registry/validate-gpu:1"
    assert set(images.values()) == {"registry/steps:1"}
    spec = yaml.safe_load((tmp_path / "specs" / "validate_model.yaml").read_text())
    assert [e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()] == [
        "registry/validate-gpu:1"
    ]
    assert _pipeline_options(build_parser().parse_args(["compile"])).validate_image is None


def test_s3_credentials_come_from_the_data_connection_secret():
    ir, platform = load(TRAINING)
    for executor in ("exec-publish-model", "exec-prepare-data"):
        (secret,) = k8s(platform, executor)["secretAsEnv"]
        # A constant name, required: the one form every supported backend reads (test_kfp_backends.py).
        assert secret == {"keyToEnv": secret["keyToEnv"], "secretName": "aws-connection-models"}
        assert {e["envVar"] for e in secret["keyToEnv"]} == set(ENV_KEYS)
    assert "data_connection" not in ir["root"]["inputDefinitions"]["parameters"]


def test_caching_retries_and_resources():
    ir, _ = load(TRAINING)
    tasks = all_tasks(ir)
    for side_effect in ("prepare-data", "publish-model", "deploy-model", "verify-deployment", "pipeline-summary"):
        assert tasks[side_effect]["cachingOptions"] == {}, side_effect  # enableCache absent = off
    for cached in ("train-model", "validate-model"):
        assert tasks[cached]["cachingOptions"] == {"enableCache": True}
    for network in ("prepare-data", "publish-model", "deploy-model"):
        policy = tasks[network]["retryPolicy"]
        assert policy["maxRetryCount"] == 3 and policy["backoffDuration"] == "30s"
    for name, executor in executors(ir).items():
        resources = executor["container"]["resources"]
        assert resources.get("cpuRequest") and resources.get("memoryRequest"), name


def test_gate_exit_handler_and_image():
    ir, _ = load(TRAINING)
    tasks = all_tasks(ir)
    conditions = [
        t["triggerPolicy"]["condition"]
        for t in tasks.values()
        if "triggerPolicy" in t and "condition" in t["triggerPolicy"]
    ]
    assert "inputs.parameter_values['pipelinechannel--validate-model-Output'] == true" in conditions
    assert "inputs.parameter_values['pipelinechannel--deploy'] == true" in conditions
    assert tasks["pipeline-summary"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    images = {e["container"]["image"] for e in executors(ir).values()}
    assert images == {PipelineOptions().image}
    for executor in executors(ir).values():  # install_kfp_package=False: no pip install in the command
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_deploy_takes_the_registration_and_waits_for_approval_when_asked():
    """register runs whenever the gate passed (a no-op without a registry_url) so that deploy,
    inside If(deploy), may read its output: KFP refuses a dependency on a task inside a
    dsl.If the dependent is not in (InvalidTopologyException)."""
    ir, _ = load(TRAINING)
    tasks = all_tasks(ir)
    deploy = tasks["deploy-model"]["inputs"]["parameters"]
    assert deploy["registration"]["componentInputParameter"] == "pipelinechannel--register-in-model-registry-Output"
    assert deploy["registry_name"]["componentInputParameter"] == "pipelinechannel--registry_name"
    verify = tasks["verify-deployment"]["inputs"]["parameters"]
    assert verify["hold_for_approval"]["componentInputParameter"] == "pipelinechannel--require_approval"
    assert "triggerPolicy" not in tasks["register-in-model-registry"]  # no condition of its own
    gate, _ = load(PIPELINES_OUT / "promote-when-approved.yaml")
    (check,) = executors(gate).values()
    assert "promote_when_approved" in " ".join(check["container"]["args"] + check["container"]["command"])


def test_registry_labels_come_from_the_registration():
    from anomaly_mlops.steps.registry import registry_labels

    done = '{"registered_model_id": "3", "model_version_id": "8", "name": "m", "version": "v1", "status": "registered"}'
    assert registry_labels(done, "modelregistry-public") == {
        "modelregistry.kubeflow.org/registered-model-id": "3",
        "modelregistry.kubeflow.org/model-version-id": "8",
        "modelregistry.kubeflow.org/name": "modelregistry-public",
    }
    assert registry_labels("", "modelregistry-public") == {} and registry_labels(done, "") == {}


def test_no_secret_values_in_compiled_files():
    text = "".join(p.read_text() for p in [*PIPELINES_OUT.glob("*.yaml"), *COMPONENTS_OUT.glob("*.yaml")])
    for marker in ("local-embedded-secret", "AKIA", "aws_secret_access_key:", "BEGIN PRIVATE KEY"):
        assert marker not in text


def test_component_specs_load_for_other_pipeline_authors():
    from kfp import components

    validate = components.load_component_from_file(str(COMPONENTS_OUT / "validate_model.yaml"))
    assert {"model", "holdout_data", "min_roc_auc"} <= set(validate.component_spec.inputs)
    assert {"metrics", "classification", "report", "Output"} <= set(validate.component_spec.outputs)


@pytest.fixture
def local_training(s3_env, tmp_path, monkeypatch):
    """The training pipeline under kfp.local's SubprocessRunner (the same components in this
    venv), its S3 steps on the embedded server, pipeline root ``tmp_path``."""
    from kfp import local

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), raise_on_error=True)
    return build_training_pipeline(PipelineOptions(image="unused-locally"))


@pytest.mark.slow
def test_training_pipeline_runs_locally_and_publishes(local_training, s3_env, raw, tmp_path):
    """kfp.local SubprocessRunner runs the same components in this venv; deploy is off
    (no cluster here), so the run ends after publish and the optional registrations with the
    Model Registry and TrustyAI."""
    from registry_fake import FakeModelRegistry
    from trustyai_fake import FakeTrustyAI

    trustyai, registry = FakeTrustyAI(), FakeModelRegistry()
    try:
        local_training(
            rows=4000, n_estimators=30, deploy=False, version="kfp-local", model_name="kfp-model",
            trustyai_url=trustyai.url, registry_url=registry.url,
        )  # fmt: skip
    finally:
        trustyai.stop()
        registry.stop()
    assert trustyai.tags() == {"anomaly-detector": {"TRAINING-kfp-local": 1000}}
    assert [len(trustyai.requests[m]) for m in ("meanshift", "kstest")] == [1, 1]
    (version,) = registry.versions.values()
    (artifact,) = registry.artifacts.values()
    assert version["name"] == "kfp-local" and artifact["uri"].endswith("/kfp-model/kfp-local/")
    assert artifact["modelSourceKind"] == "kfp" and artifact["storageKey"] == "aws-connection-models"
    assert "roc_auc" in version["customProperties"] and "gates_passed" in version["customProperties"]
    keys = {o["Key"] for o in raw.list_objects_v2(Bucket=s3_env["AWS_S3_BUCKET"], Prefix="kfp-model/")["Contents"]}
    assert keys == {
        f"kfp-model/kfp-local/{f}"
        for f in ("MANIFEST.sha256", "forest.npz", "metadata.json", "model.joblib", "model.skops")
    } | {"kfp-model/.claims/kfp-local.json"} | {
        f"kfp-model/.cards/kfp-local/model-card.{x}" for x in ("md", "html", "json")
    }
    card = raw.get_object(Bucket=s3_env["AWS_S3_BUCKET"], Key="kfp-model/.cards/kfp-local/model-card.md")["Body"]
    card = card.read().decode()
    assert "| roc_auc_vs_champion | " in card and "Status: **not required**." in card  # validate's gates on it
    linked = version["customProperties"]["model_card"]["string_value"]
    assert linked == f"s3://{s3_env['AWS_S3_BUCKET']}/kfp-model/.cards/kfp-local/model-card.html"
    (report,) = tmp_path.glob("*/validate-model/report")
    assert "Release gate PASSED" in report.read_text()
    (metrics_meta,) = tmp_path.glob("*/validate-model/executor_output.json")
    assert json.loads(metrics_meta.read_text())["parameterValues"]["Output"] is True


@pytest.mark.slow
def test_failed_gate_publishes_nothing(local_training, s3_env, raw, tmp_path):
    local_training(
        rows=4000, n_estimators=20, deploy=False, version="never", model_name="gated-model", max_single_row_p99_ms=0.001
    )
    assert "Contents" not in raw.list_objects_v2(Bucket=s3_env["AWS_S3_BUCKET"], Prefix="gated-model/")
    assert not list(tmp_path.glob("*/publish-model"))
    assert list(tmp_path.glob("*/pipeline-summary"))


@pytest.mark.slow
def test_a_model_the_runtime_cannot_serve_stops_at_validate_unpublished(local_training, s3_env, raw, tmp_path):
    """runtime=sklearn with the windowed default: validate refuses it (no retries there),
    so nothing is published and deploy never runs."""
    with pytest.raises(RuntimeError, match="validate-model"):
        local_training(rows=4000, n_estimators=20, runtime="sklearn", version="never", model_name="wrong-runtime")
    assert "Contents" not in raw.list_objects_v2(Bucket=s3_env["AWS_S3_BUCKET"], Prefix="wrong-runtime/")
    assert not list(tmp_path.glob("*/publish-model")) and not list(tmp_path.glob("*/deploy-model"))
    ir, _ = load(TRAINING)
    tasks = ir["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert tasks["validate-model"]["inputs"]["parameters"]["runtime"] == {
        "componentInputParameter": "pipelinechannel--runtime"
    }


@pytest.fixture
def dsp():
    fake = FakeKFP()
    yield fake
    fake.stop()


def test_submit_sends_the_compiled_spec_with_the_bearer_token(dsp):
    client = make_client(dsp.url, token=dsp.token, namespace="anomaly")
    run_id = submit_run(client, TRAINING, {"rows": 5000, "deploy": False}, "nightly", "anomaly-detector", "anomaly")
    (post,) = dsp.calls("POST", "/apis/v2beta1/runs")
    assert post["authorization"] == "Bearer dsp-token"
    body = post["body"]
    assert body["display_name"] == "nightly"
    assert body["runtime_config"]["parameters"] == {"rows": 5000, "deploy": False}
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "anomaly-detector-training"
    # The kfp-kubernetes platform spec (secret env, GPU placement) travels with it.
    platform = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "secretAsEnv" in platform["exec-publish-model"] and "tolerations" in platform["exec-validate-model"]
    assert body["experiment_id"] in dsp.experiments and run_id in dsp.runs
    # A second submission reuses the experiment.
    submit_run(client, TRAINING, {}, "again", "anomaly-detector", "anomaly")
    assert len(dsp.experiments) == 1 and len(dsp.runs) == 2


def test_schedule_is_idempotent_and_replaces_on_change(dsp):
    client = make_client(dsp.url, token=dsp.token, namespace="anomaly")
    first = schedule(client, TRAINING, "retrain", "0 0 3 * * *", {"rows": 20160}, "anomaly-detector", "anomaly")
    assert first.action == "created"
    (created,) = dsp.calls("POST", "/apis/v2beta1/recurringruns")
    body = created["body"]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["runtime_config"]["parameters"] == {"rows": 20160}

    again = schedule(client, TRAINING, "retrain", "0 0 3 * * *", {"rows": 20160}, "anomaly-detector", "anomaly")
    assert again.action == "unchanged" and again.recurring_run_id == first.recurring_run_id
    assert len(dsp.calls("POST", "/apis/v2beta1/recurringruns")) == 1

    changed = schedule(client, TRAINING, "retrain", "0 30 2 * * *", {"rows": 20160}, "anomaly-detector", "anomaly")
    assert changed.action == "replaced"
    assert list(dsp.recurring) == [changed.recurring_run_id]
    assert dsp.calls("DELETE", f"/apis/v2beta1/recurringruns/{first.recurring_run_id}")


def test_cron_needs_six_fields():
    assert check_cron(" 0 0 3 * * * ") == "0 0 3 * * *"
    with pytest.raises(ConfigError, match="6 fields, seconds first; got 5.*did you mean '0 0 3 \\* \\* \\*'"):
        check_cron("0 3 * * *")


def test_cli_submit_with_a_bad_token_is_a_clear_error(dsp, tmp_path):
    from test_cli import run

    token = tmp_path / "token"
    token.write_text("wrong-token\n")
    result = run(
        "submit",
        "--host",
        dsp.url,
        "--token-file",
        str(token),
        "--namespace",
        "anomaly",
        "--package",
        str(TRAINING),
        check=False,
    )
    assert result.returncode == 2 and "refused the token (401)" in result.stderr
    assert "wrong-token" not in result.stderr
    token.write_text(dsp.token)
    ok = run(
        "schedule",
        "--host",
        dsp.url,
        "--token-file",
        str(token),
        "--namespace",
        "anomaly",
        "--package",
        str(TRAINING),
        "--param",
        "rows=5000",
        "--param",
        "deploy=false",
    )
    assert json.loads(ok.stdout)["action"] == "created"
    (created,) = dsp.calls("POST", "/apis/v2beta1/recurringruns")
    assert created["body"]["runtime_config"]["parameters"] == {"rows": 5000, "deploy": False}


def test_the_kfp_fake_refuses_what_the_api_refuses(dsp):
    """Unknown run parameters and unparsable cron schedules: 400 from the API, whatever our
    own checks say (they are bypassed here to reach it)."""
    from unittest import mock

    from kfp_server_api.exceptions import ApiException

    client = make_client(dsp.url, dsp.token, "anomaly")
    with mock.patch("anomaly_mlops.adapters.submit.check_arguments", side_effect=lambda package, arguments: arguments):
        with pytest.raises(ApiException) as info:
            submit_run(client, TRAINING, {"data_connection": "x"}, "r", "anomaly-detector", "anomaly")
    assert info.value.status == 400 and "unrecognized input parameter(s) ['data_connection']" in info.value.body
    with mock.patch("anomaly_mlops.adapters.submit.check_cron", side_effect=lambda c: c):
        with pytest.raises(ApiException) as info:
            schedule(client, TRAINING, "bad", "0 61 3 * * *", {}, "anomaly-detector", "anomaly")
    assert info.value.status == 400 and "not a supported format" in info.value.body


@pytest.mark.parametrize(
    "cron, message",
    [
        ("0 3 * * *", "6 fields"),
        ("0 61 3 * * *", "minute '61' is not in 0-59"),
        ("0 0 24 * * *", "hour '24' is not in 0-23"),
        ("0 0 3 0 * *", "day of month '0' is not in 1-31"),
        ("0 0 3 * FOO *", "month 'FOO'"),
        ("0 0 3 * * 7", "day of week '7' is not in 0-6"),
        ("0 */0 * * * *", "step '0'"),
        ("0 30-10 * * * *", "runs backwards"),
        ("? 0 3 * * *", "'?' is allowed only"),
    ],
)
def test_bad_cron_is_refused_before_any_connection(cron, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_cron(cron)


def test_good_cron_forms_pass():
    for cron in ("0 0 3 * * *", "0 */15 * * * *", "30 0 2 ? * MON-FRI", "0 0 3 1,15 JAN-JUN *", "0 0 0 * * SUN"):
        assert check_cron(cron) == cron


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n_estimators": "many"}, "parameter n_estimators must be a whole number, got 'many'"),
        ({"seed": 1.5}, "parameter seed must be a whole number, got 1.5"),
        ({"deploy": "yes"}, "parameter deploy must be true or false, got 'yes'"),
        ({"contamination": True}, "parameter contamination must be a number, got True"),
        # values the train step, verify and deploy refuse, at run time or every week
        ({"seed": -1}, "seed must be an integer from 0 to 4294967294, got -1"),
        ({"contamination": 0.7}, r"contamination must be in \(0, 0.5\), got 0.7"),
        ({"max_samples": "lots"}, "max_samples must be 'auto' or a positive row count, got 'lots'"),
        ({"metric_basis": "pca"}, "metric_basis must be one of"),
        ({"verify_requests": 0}, "verify requests must be a whole number >= 1, got 0"),
        ({"canary_traffic_percent": 150}, "canary_traffic_percent must be 0-100"),
    ],
)
def test_run_values_the_steps_would_refuse_are_refused_before_submitting(params, message):
    with pytest.raises(ConfigError, match=message):
        check_arguments(TRAINING, params)


def test_a_number_for_a_string_parameter_is_sent_as_its_text(dsp):
    """--param max_samples=4096 parses as a number; the pipeline declares a string."""
    assert check_arguments(TRAINING, {"max_samples": 4096, "rows": 5000.0}) == {"max_samples": "4096", "rows": 5000}
    client = make_client(dsp.url, dsp.token, "anomaly")
    submit_run(client, TRAINING, {"max_samples": 1024}, "r", "anomaly-detector", "anomaly")
    (created,) = dsp.calls("POST", "/apis/v2beta1/runs")
    assert created["body"]["runtime_config"]["parameters"] == {"max_samples": "1024"}


def test_cli_schedule_checks_cron_and_parameters_before_contacting_the_server(tmp_path):
    from anomaly_mlops.adapters import cli
    from anomaly_mlops.adapters.local_services import free_port

    host = f"http://127.0.0.1:{free_port()}"  # nothing listens: a contact would be a connection error
    assert cli.main(["schedule", "--host", host, "--package", str(TRAINING), "--cron", "0 3 * * *"]) == 2
    assert cli.main(["schedule", "--host", host, "--package", str(TRAINING), "--param", "nope=1"]) == 2
    assert cli.main(["submit", "--host", host, "--package", str(TRAINING), "--param", "data_connection=x"]) == 2
    assert cli.main(["schedule", "--host", host, "--package", str(TRAINING), "--param", "seed=-1"]) == 2


def test_every_component_input_is_described_for_the_dashboard():
    """KFP fills descriptions from the Args: docstrings; the OpenShift AI dashboard and Elyra show them."""
    missing = []
    for path in sorted(COMPONENTS_OUT.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        for kind in ("parameters", "artifacts"):
            for name, definition in (spec["root"].get("inputDefinitions", {}).get(kind) or {}).items():
                if not definition.get("description"):
                    missing.append(f"{path.stem}.{name}")
    assert missing == []


def test_training_defaults_in_the_compiled_pipeline_follow_the_train_step():
    """The KFP parameters are literals (KFP embeds the function source): they must say what
    `anomaly-mlops train` does with no flag, or a pipeline run fits another detector."""
    from anomaly_mlops.params import TrainParams

    defaults = TrainParams()
    parameters = load(TRAINING)[0]["root"]["inputDefinitions"]["parameters"]
    spec = yaml.safe_load((COMPONENTS_OUT / "train_model.yaml").read_text())
    component = spec["root"]["inputDefinitions"]["parameters"]
    for inputs in (parameters, component):
        assert inputs["max_samples"]["defaultValue"] == str(defaults.max_samples)
        assert inputs["n_estimators"]["defaultValue"] == defaults.n_estimators
        assert inputs["contamination"]["defaultValue"] == defaults.contamination
        assert inputs["window_columns"]["defaultValue"] == defaults.window_columns
        assert inputs["raw_tree_share"]["defaultValue"] == defaults.raw_tree_share
        assert inputs["metric_basis"]["defaultValue"] == "" and defaults.metric_basis is None  # "": the default


def test_every_retraining_fetches_the_same_lookback_by_default():
    """What a retraining on live metrics fetches unless told: the data step, the KFP component
    (a literal: KFP embeds the function source), the training pipelines and the Tekton
    retraining all say params.RETRAINING_LOOKBACK (a weekly run on 7 days lost F1 in the
    backtest: docs/evidence/quality.md)."""
    import inspect

    from anomaly_mlops.adapters.cli import build_parser
    from anomaly_mlops.params import RETRAINING_LOOKBACK
    from anomaly_mlops.sources.prometheus import PrometheusSource

    assert RETRAINING_LOOKBACK == "14d"
    assert inspect.signature(PrometheusSource).parameters["lookback"].default == RETRAINING_LOOKBACK
    assert build_parser().parse_args(["data", "--out", "d"]).lookback == RETRAINING_LOOKBACK
    spec = yaml.safe_load((COMPONENTS_OUT / "prepare_data.yaml").read_text())
    assert spec["root"]["inputDefinitions"]["parameters"]["lookback"]["defaultValue"] == RETRAINING_LOOKBACK
    for name in ("training.yaml", "training-final-status.yaml"):
        parameters = load(PIPELINES_OUT / name)[0]["root"]["inputDefinitions"]["parameters"]
        assert parameters["lookback"]["defaultValue"] == RETRAINING_LOOKBACK, name
    manifests = Path(__file__).parents[1] / "manifests" / "tekton"
    for path in (manifests / "pipeline-retraining.yaml", manifests / "tasks" / "data.yaml"):
        (param,) = [q for q in yaml.safe_load(path.read_text())["spec"]["params"] if q["name"] == "lookback"]
        assert param["default"] == RETRAINING_LOOKBACK, path


def test_gate_defaults_in_the_compiled_pipeline_follow_validate():
    """The gate parameters are literals too: they must be what `anomaly-mlops validate` gates on."""
    from anomaly_mlops.params import Gates

    defaults = Gates()
    parameters = load(TRAINING)[0]["root"]["inputDefinitions"]["parameters"]
    spec = yaml.safe_load((COMPONENTS_OUT / "validate_model.yaml").read_text())
    component = spec["root"]["inputDefinitions"]["parameters"]
    for inputs in (parameters, component):
        for name in ("min_roc_auc", "min_pr_auc", "max_auc_drop", "max_score_psi", "max_flagged_rate_ratio"):
            assert inputs[name]["defaultValue"] == getattr(defaults, name), name
