"""Tekton: every reference resolves (params, results, workspaces, tasks, triggers), and each
task's script runs here with its params substituted, against the embedded S3 server, a
local KServe server, the Kubernetes API fake and the KFP API fake: the YAML cannot drift
from the CLI without a test failing."""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from anomaly_mlops.adapters.local_services import model_server
from anomaly_mlops.store.s3 import ENV_KEYS

ROOT = Path(__file__).resolve().parents[1]
TEKTON = ROOT / "manifests" / "tekton"
REF = re.compile(r"\$\(([^)]+)\)")


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


ALL = {p: docs(p) for p in sorted(TEKTON.rglob("*.yaml")) if p.name != "kustomization.yaml"}
ALL[ROOT / ".tekton" / "push.yaml"] = docs(ROOT / ".tekton" / "push.yaml")  # its Pipeline and Tasks: test_tekton_rules
OBJECTS = [d for ds in ALL.values() for d in ds]
TASKS = {d["metadata"]["name"]: d for d in OBJECTS if d["kind"] == "Task"}
PIPELINES = {d["metadata"]["name"]: d for d in OBJECTS if d["kind"] == "Pipeline"}


def refs(obj, prefix: str) -> set[str]:
    found = set()
    for match in REF.findall(json.dumps(obj)):
        if match.startswith(prefix):
            found.add(match[len(prefix) :])
    return found


def test_api_versions():
    for obj in OBJECTS:
        group = {
            "Task": "tekton.dev/v1",
            "Pipeline": "tekton.dev/v1",
            "PipelineRun": "tekton.dev/v1",
            "TriggerBinding": "triggers.tekton.dev/v1beta1",
            "TriggerTemplate": "triggers.tekton.dev/v1beta1",
            "EventListener": "triggers.tekton.dev/v1beta1",
        }.get(obj["kind"])
        if group:
            assert obj["apiVersion"] == group, obj["metadata"]["name"]
    assert set(TASKS) == {
        "anomaly-git-clone",
        "anomaly-build-image",
        "anomaly-data",
        "anomaly-train",
        "anomaly-validate",
        "anomaly-publish",
        "anomaly-register",
        "anomaly-deploy",
        "anomaly-verify",
        "anomaly-rollout",
        "anomaly-submit-kfp",
    }


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_references_are_declared(name):
    spec = TASKS[name]["spec"]
    params = {p["name"] for p in spec.get("params", [])}
    results = {r["name"] for r in spec.get("results", [])}
    workspaces = {w["name"] for w in spec.get("workspaces", [])}
    steps = spec["steps"]
    assert refs(steps, "params.") <= params
    assert {r.removesuffix(".path") for r in refs(steps, "results.")} <= results
    assert {w.removesuffix(".path") for w in refs(steps, "workspaces.")} <= workspaces
    # Every declared result is written by the script.
    assert results <= {r.removesuffix(".path") for r in refs(steps, "results.")}
    for step in steps:
        if name == "anomaly-build-image":  # buildah, not our image (test_tekton_rules checks its context)
            assert step["image"] == "$(params.builder-image)" and "buildah" in step["script"]
            continue
        assert step["image"] == "$(params.image)"
        assert "anomaly-mlops" in step["script"] or name == "anomaly-git-clone"


def check_pipeline_run(run: dict, where: str):
    pipeline = PIPELINES[run["spec"]["pipelineRef"]["name"]]["spec"]
    declared = {p["name"] for p in pipeline["params"]}
    given = {p["name"] for p in run["spec"].get("params", [])}
    required = {p["name"] for p in pipeline["params"] if "default" not in p}
    assert given <= declared and required <= given, where
    tasks = {t["name"] for t in pipeline["tasks"]}
    for spec in run["spec"].get("taskRunSpecs", []):
        assert spec["pipelineTaskName"] in tasks, where
    assert {w["name"] for w in run["spec"]["workspaces"]} == {w["name"] for w in pipeline["workspaces"]}, where


def is_custom(task: dict) -> bool:
    """A custom task (the approval gate's ApprovalTask), run by its own controller."""
    return not task["taskRef"].get("apiVersion", "tekton.dev").startswith("tekton.dev")


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_references_resolve(name):
    spec = PIPELINES[name]["spec"]
    params = {p["name"] for p in spec["params"]}
    everything = spec["tasks"] + spec.get("finally", [])
    by_name = {t["name"]: t for t in everything}
    assert {p.removesuffix("[*]") for p in refs(everything, "params.")} <= params
    for task in everything:
        for after in task.get("runAfter", []):
            assert after in by_name
        for ref in refs(task, "tasks."):
            producer, _, result = ref.partition(".results.")
            if ref.endswith(".status") and task in spec.get("finally", []):  # a finally task may read any status
                assert ref.removesuffix(".status") in by_name, ref
                continue
            assert result in {r["name"] for r in TASKS[by_name[producer]["taskRef"]["name"]]["spec"]["results"]}, ref
        if is_custom(task):
            continue
        target = TASKS[task["taskRef"]["name"]]["spec"]
        declared = {p["name"]: p for p in target.get("params", [])}
        passed = {p["name"] for p in task.get("params", [])}
        assert passed <= set(declared), task["name"]
        assert {n for n, p in declared.items() if "default" not in p} <= passed, task["name"]
        assert {w["name"] for w in task.get("workspaces", [])} == {w["name"] for w in target.get("workspaces", [])}
        assert {w["workspace"] for w in task.get("workspaces", [])} <= {w["name"] for w in spec["workspaces"]}


def test_triggers_resolve():
    kinds = {}
    for obj in OBJECTS:
        kinds.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    assert set(kinds["EventListener"]) == {"anomaly-mlops", "anomaly-mlops-drift"}
    for listener in kinds["EventListener"].values():
        for trigger in listener["spec"]["triggers"]:
            template = kinds["TriggerTemplate"][trigger["template"]["ref"]]
            tt_params = {p["name"] for p in template["spec"]["params"]}
            for resource in template["spec"]["resourcetemplates"]:
                assert refs(resource, "tt.params.") <= tt_params
                check_pipeline_run(resource, "TriggerTemplate")
                validate = resource["spec"]["taskRunSpecs"][0]
                assert validate["pipelineTaskName"] == "validate"
                assert validate["computeResources"] == {"limits": {"nvidia.com/gpu": "1"}}
                run_level = resource["spec"]["taskRunTemplate"]["podTemplate"]  # where the affinity assistant looks
                assert run_level["tolerations"] == [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ]
                assert run_level["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            bound = set()
            for binding in trigger["bindings"]:
                bound |= {p["name"] for p in kinds["TriggerBinding"][binding["ref"]]["spec"]["params"]}
            assert bound == tt_params, trigger["name"]
            if listener["metadata"]["name"] == "anomaly-mlops":  # commits: signed by the git host
                provider, cel = trigger["interceptors"]
                assert provider["ref"]["name"] in ("github", "gitlab")
                secret = {p["name"]: p["value"] for p in provider["params"]}["secretRef"]
                assert secret == {
                    "secretName": "anomaly-mlops-webhook",
                    "secretKey": "token",
                }  # webhook secret required
                cel_filter = cel["params"][0]["value"]
                assert "refs/heads/main" in cel_filter and "components/" in cel_filter
            else:  # drift alerts: Alertmanager's bearer token (tests/test_drift_trigger.py runs the filter)
                (cel,) = trigger["interceptors"]
                assert cel["params"][0]["value"].startswith(
                    "header.canonical('Authorization').compareSecret('authorization', 'anomaly-mlops-alerts') &&"
                )


def test_pipelines_as_code_run_resolves():
    (run,) = ALL[ROOT / ".tekton" / "push.yaml"]
    check_pipeline_run(run, ".tekton/push.yaml")
    assert run["metadata"]["annotations"]["pipelinesascode.tekton.dev/on-target-branch"] == "[main]"


def test_kustomize_builds_everything():
    from test_manifests import kustomize

    built = kustomize("tekton")
    assert {d["metadata"].get("namespace") for d in built if d["kind"] != "ClusterRoleBinding"} == {"anomaly-mlops"}
    (crb,) = [d for d in built if d["kind"] == "ClusterRoleBinding"]
    assert crb["subjects"][0]["namespace"] == "anomaly-mlops"
    assert len([d for d in built if d["kind"] == "Task"]) == len(TASKS)


# --------------------------------------------------------------------------- running the scripts


def run_task(name: str, params: dict, workdir: Path, env: dict, expect_rc: int = 0) -> dict:
    """Substitute like Tekton does and run each step's script; return the results."""
    spec = TASKS[name]["spec"]
    values = {p["name"]: p.get("default") for p in spec.get("params", [])}
    values.update(params)
    missing = [k for k, v in values.items() if v is None]
    assert not missing, f"{name}: no value for {missing}"
    results_dir = workdir / "results" / name
    results_dir.mkdir(parents=True, exist_ok=True)

    def substitute(text: str) -> str:
        def one(match):
            ref = match.group(1)
            if ref.startswith("params."):
                return str(values[ref[7:]])
            if ref.startswith("workspaces.") and ref.endswith(".path"):
                return str(workdir)
            if ref.startswith("results.") and ref.endswith(".path"):
                return str(results_dir / ref[8:-5])
            raise AssertionError(f"{name}: unexpected reference $({ref})")

        return REF.sub(one, text)

    for step in spec["steps"]:
        step_env = {**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', os.environ['PATH'])}"}
        for var in step.get("env", []):
            secret = var["valueFrom"]["secretKeyRef"]
            assert secret["key"] in ENV_KEYS and substitute(secret["name"]) == values["data-connection"]
            step_env[var["name"]] = env.get(secret["key"], "")
        out = subprocess.run(
            ["bash", "-c", substitute(step["script"])], env=step_env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == expect_rc, f"{name}/{step['name']} exit {out.returncode}\n{out.stderr[-3000:]}"
    return {p.name: p.read_text() for p in results_dir.iterdir()}


@pytest.fixture
def fresh_bucket(s3_env, raw):
    """The session's S3 settings with a bucket of this test's own."""
    bucket = f"tekton-{uuid.uuid4().hex[:12]}"
    raw.create_bucket(Bucket=bucket)
    return {**s3_env, "AWS_S3_BUCKET": bucket}


@pytest.mark.slow
def test_task_scripts_run_end_to_end(tmp_path, fresh_bucket, raw):
    from k8s_fake import FakeKubeAPI
    from kfp_fake import FakeKFP

    s3_env = fresh_bucket  # no champion: other tests release into the session's bucket

    work = tmp_path / "work"
    work.mkdir()
    cloned = run_task("anomaly-git-clone", {"repo-url": str(ROOT), "revision": "HEAD"}, work, {})
    assert re.fullmatch(r"[0-9a-f]{40}", cloned["commit"])
    assert (work / "commit").read_text() == cloned["commit"]  # what the build step checks, without git
    assert (work / "src" / "pipelines" / "compiled" / "training.yaml").exists()

    data = run_task("anomaly-data", {"rows": "10080"}, work, s3_env)
    assert int(data["holdout-anomalies"]) > 0
    trained = run_task(
        "anomaly-train", {"n-estimators": "40", "git-commit": cloned["commit"], "run-id": "retrain-abc12"}, work, {}
    )
    assert 0 < float(trained["threshold"]) < 1
    metadata = json.loads((work / "model" / "metadata.json").read_text())
    assert metadata["provenance"] == {"git_commit": cloned["commit"], "run_id": "retrain-abc12"}
    validated = run_task("anomaly-validate", {}, work, s3_env)  # champion: latest (none released yet)
    assert validated["gate-passed"] == "true" and float(validated["roc-auc"]) > 0.8
    published = run_task("anomaly-publish", {"version": "tekton-v1", "require-approval": "true"}, work, s3_env)
    card = raw.get_object(Bucket=s3_env["AWS_S3_BUCKET"], Key="anomaly-detector/.cards/tekton-v1/model-card.md")
    assert "Status: **pending**." in card["Body"].read().decode()
    assert published == {
        "uri": f"s3://{s3_env['AWS_S3_BUCKET']}/anomaly-detector/tekton-v1/",
        "version": "tekton-v1",
        "storage-path": "anomaly-detector/tekton-v1/",
        "model-card": f"s3://{s3_env['AWS_S3_BUCKET']}/anomaly-detector/.cards/tekton-v1/model-card.html",
    }
    released = raw.head_object(Bucket=s3_env["AWS_S3_BUCKET"], Key="anomaly-detector/tekton-v1/MANIFEST.sha256")[
        "Metadata"
    ]
    assert released["git-commit"] == cloned["commit"] and released["run-id"] == "retrain-abc12"
    from registry_fake import FakeModelRegistry

    registry = FakeModelRegistry()
    try:
        registered = run_task(
            "anomaly-register",
            {"registry-url": registry.url, "version": published["version"], "uri": published["uri"],
             "run-name": "retraining-x1", "git-commit": cloned["commit"], "model-card": published["model-card"],
             "require-approval": "true"},
            work,
            {},
        )  # fmt: skip
    except BaseException:
        registry.stop()
        raise
    (version,) = registry.versions.values()
    assert registered["model-version-id"] == version["id"] and version["name"] == "tekton-v1"
    (artifact,) = registry.artifacts.values()
    assert artifact["modelSourceKind"] == "tekton" and artifact["modelSourceName"] == "retraining-x1"
    assert version["customProperties"]["git_commit"]["string_value"] == cloned["commit"]
    assert version["customProperties"]["model_card"]["string_value"] == published["model-card"]
    assert version["customProperties"]["approval"]["string_value"] == "pending"

    kube = FakeKubeAPI()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": kube.url}}],
                "users": [{"name": "sa", "user": {"token": kube.token}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "sa", "namespace": "ns"}}],
            }
        )
    )
    kube_env = {"KUBECONFIG": str(kubeconfig)}
    try:
        first = run_task(
            "anomaly-deploy",
            {
                "namespace": "ns",
                "storage-path": "ignored/with/a/registry/",
                "model-version": published["version"],
                "mode": "Serverless",
                "registry-url": registry.url,
                "registry-name": "modelregistry-public",
            },
            work,
            kube_env,
        )
        registry.stop()
        assert first["canary"] == "false" and first["url"].startswith("https://")
        isvc = kube.objects[("ns", "anomaly-detector")]
        assert isvc["spec"]["predictor"]["model"]["storage"]["path"] == published["storage-path"]  # the registered
        assert isvc["metadata"]["labels"]["modelregistry.kubeflow.org/model-version-id"] == version["id"]
        assert isvc["metadata"]["labels"]["modelregistry.kubeflow.org/name"] == "modelregistry-public"
        second = run_task(
            "anomaly-deploy",
            {
                "namespace": "ns",
                "storage-path": "anomaly-detector/tekton-v2/",
                "model-version": "tekton-v2",
                "mode": "Serverless",
            },
            work,
            kube_env,
        )
        assert second["canary"] == "true"
        assert second["url"] == "http://latest-anomaly-detector.example.test"  # the canary's own URL
        # The ISVC URL exists only in the fake; verify talks to a real local model server.
        with model_server("anomaly-detector", str(work / "model"), log_path=tmp_path / "server.log") as url:
            held = {"url": url, "namespace": "ns", "canary": "true", "requests": "10", "hold-for-approval": "true"}
            run_task("anomaly-verify", held, work, kube_env)
            assert kube.objects[("ns", "anomaly-detector")]["spec"]["predictor"]["canaryTrafficPercent"] == 10
            run_task(
                "anomaly-verify",
                {"url": url, "namespace": "ns", "canary": second["canary"], "requests": "30"},
                work,
                kube_env,
            )
            isvc = kube.objects[("ns", "anomaly-detector")]
            assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]  # promoted
            # A failing check rolls back and fails the task.
            run_task(
                "anomaly-verify",
                {"url": url, "namespace": "ns", "canary": "true", "requests": "5", "slo-p99-ms": "0.001"},
                work,
                kube_env,
                expect_rc=4,
            )
            assert kube.objects[("ns", "anomaly-detector")]["spec"]["predictor"]["canaryTrafficPercent"] == 0
    finally:
        kube.stop()
        registry.stop()

    dsp = FakeKFP()
    token = tmp_path / "token"
    token.write_text(dsp.token)
    try:
        submitted = run_task(
            "anomaly-submit-kfp", {"dsp-host": dsp.url, "namespace": "ns", "token-file": str(token)}, work, {}
        )
        assert submitted["run-id"] in dsp.runs
    finally:
        dsp.stop()


@pytest.mark.slow
def test_failing_gate_fails_the_validate_task(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    run_task("anomaly-data", {"rows": "5000"}, work, {})
    run_task("anomaly-train", {"n-estimators": "20"}, work, {})
    run_task("anomaly-validate", {"max-single-row-p99-ms": "0.001", "champion": ""}, work, {}, expect_rc=3)
    # The windowed default cannot be served by the upstream sklearn runtime: refused, exit 2.
    run_task("anomaly-validate", {"runtime": "sklearn", "champion": ""}, work, {}, expect_rc=2)


def test_the_pipelines_runtime_reaches_validate_and_deploy():
    """One `runtime` parameter: validate refuses a model it cannot serve before publish, and
    deploy uses it."""
    pipeline = yaml.safe_load((ROOT / "manifests" / "tekton" / "pipeline-retraining.yaml").read_text())
    assert {p["name"]: p.get("default") for p in pipeline["spec"]["params"]}["runtime"] == "custom"
    tasks = {t["name"]: {p["name"]: p["value"] for p in t.get("params", [])} for t in pipeline["spec"]["tasks"]}
    assert tasks["validate"]["runtime"] == tasks["deploy"]["runtime"] == "$(params.runtime)"


def test_train_task_defaults_follow_the_train_step():
    """The task's parameter defaults are literals: they must say what `anomaly-mlops train`
    does with no flag (like the compiled KFP pipeline's, tests/test_pipelines.py)."""
    from anomaly_mlops.params import TrainParams

    defaults = TrainParams()
    task = yaml.safe_load((ROOT / "manifests" / "tekton" / "tasks" / "train.yaml").read_text())
    params = {p["name"]: p.get("default") for p in task["spec"]["params"]}
    assert params["window-columns"] == defaults.window_columns
    assert float(params["raw-tree-share"]) == defaults.raw_tree_share
    assert int(params["n-estimators"]) == defaults.n_estimators
    assert float(params["contamination"]) == defaults.contamination
    assert int(params["seed"]) == defaults.seed
    assert params["feature-window"] == params["score-smoothing"] == params["threshold"] == "default"
    assert params["metric-basis"] == "default" and defaults.metric_basis is None
    assert params["fit-labelled-anomalies"] == str(defaults.fit_labelled_anomalies).lower()


def test_the_train_task_fits_labelled_rows_only_when_asked(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    run_task("anomaly-data", {"rows": "3000"}, work, {})
    for value, left_out in (("false", True), ("true", False)):
        run_task("anomaly-train", {"n-estimators": "10", "fit-labelled-anomalies": value}, work, {})
        meta = json.loads((work / "model" / "metadata.json").read_text())
        assert (meta["labelled_anomalous_rows_left_out"] is not None) is left_out
        assert meta["params"]["fit_labelled_anomalies"] is not left_out
    run_task("anomaly-train", {"fit-labelled-anomalies": "yes"}, work, {}, expect_rc=2)


# --------------------------------------------------------------------------- the approval gate


def test_the_approval_gate_sits_between_verify_and_promotion():
    """approve (the manual approval gate's ApprovalTask) runs after verify, only when asked;
    promote after it; a rejected or timed-out gate fails the CustomRun, which the finally task
    reads as `$(tasks.approve.status)` == Failed (tektoncd/pipeline v1.15.0
    pkg/reconciler/pipelinerun/resources/pipelinerunstate.go l.704-721 with
    pipelinerunresolution.go l.403-413: a custom task's failed run counts) and rolls back."""
    import approval_gate

    spec = PIPELINES["anomaly-mlops-retraining"]["spec"]
    tasks = {t["name"]: t for t in spec["tasks"]}
    approve, promote = tasks["approve"], tasks["promote"]
    assert approve["taskRef"] == {"apiVersion": "openshift-pipelines.org/v1alpha1", "kind": "ApprovalTask"}
    assert approve["runAfter"] == ["verify"] and promote["runAfter"] == ["approve"]
    gated = {"input": "$(params.require-approval)", "operator": "in", "values": ["true"]}
    assert gated in approve["when"] and gated in promote["when"]
    verify = {p["name"]: p["value"] for p in tasks["verify"]["params"]}
    assert verify["hold-for-approval"] == "$(params.require-approval)"  # verify leaves the canary alone
    (finally_task,) = spec["finally"]
    assert finally_task["when"] == [{"input": "$(tasks.approve.status)", "operator": "in", "values": ["Failed"]}]
    assert {p["name"]: p["value"] for p in finally_task["params"]}["action"] == "rollback"
    # The gate's controller accepts the params the pipeline passes with its defaults (utils.go
    # l.96-129); approvers must be an array: a string passes validation as JSON yet creates no
    # approvers (createApprovalTask reads ArrayVal only, utils.go l.353-383).
    declared = {p["name"]: p for p in spec["params"]}
    assert declared["approvers"]["type"] == "array"
    passed = {p["name"]: p["value"] for p in approve["params"]}
    assert passed["approvers"] == "$(params.approvers[*])"
    resolved = {"approvers": declared["approvers"]["default"],
                "numberOfApprovalsRequired": declared["approvals-required"]["default"]}  # fmt: skip
    assert approval_gate.validate_params(resolved) == []
    assert approval_gate.validate_params({**resolved, "numberOfApprovalsRequired": "0"}) != []
    assert approval_gate.validate_params({"approvers": ["group: sre"]}) != []


def test_the_gates_wait_fits_the_runs_timeouts():
    """Inside a Pipeline the gate's `timeout` param is ignored: Tekton sets the CustomRun's
    spec.timeout from the pipeline task's timeout, else from the PipelineRun's when that is
    above the 60 min default (tektoncd/pipeline v1.15.0 pkg/reconciler/pipelinerun/pipelinerun.go
    l.1519-1526 and l.1759-1785), and the gate reads its param only when spec.timeout is unset
    (manual-approval-gate v0.9.0 pkg/reconciler/approvaltask/approvaltask.go l.139-155). So the
    approve task carries the timeout, every PipelineRun we ship leaves room for it, and every
    other task has its own (or it would inherit the PipelineRun's 26h)."""
    from test_tekton_rules import pipeline_runs

    def hours(duration: str) -> float:
        match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
        assert match and duration, duration
        h, m, sec = (int(x or 0) for x in match.groups())
        return h + m / 60 + sec / 3600

    spec = PIPELINES["anomaly-mlops-retraining"]["spec"]
    tasks = {t["name"]: t for t in spec["tasks"]}
    assert hours(tasks["approve"]["timeout"]) == 24
    assert "timeout" not in {p["name"] for p in tasks["approve"]["params"]}
    others = sum(hours(t["timeout"]) for name, t in tasks.items() if name != "approve")
    assert all(hours(t["timeout"]) <= 1 for name, t in tasks.items() if name != "approve")
    runs = [run for _, run in pipeline_runs()]
    assert len(runs) == 3
    for run in runs:
        assert hours(run["spec"]["timeouts"]["pipeline"]) >= 24 + 2, run["metadata"]
        assert hours(run["spec"]["timeouts"]["pipeline"]) <= 24 + others


@pytest.mark.slow
def test_the_rollout_task_promotes_on_approval_and_rolls_back_on_rejection(tmp_path, model_dir, fresh_bucket, raw):
    """The decision goes on the version in the registry and on its model card."""
    import approval_gate
    from registry_fake import FakeModelRegistry
    from test_approval import MODEL, NS, kubeconfig_for, release, state_of

    from anomaly_mlops.steps.model_card import publish_release_card
    from anomaly_mlops.store.s3 import S3Settings

    from k8s_fake import FakeKubeAPI

    kube, registry = FakeKubeAPI(), FakeModelRegistry()
    env = {"KUBECONFIG": str(kubeconfig_for(kube, tmp_path)), **fresh_bucket}
    settings = S3Settings.from_env(fresh_bucket)
    for version in ("v2", "v3"):
        publish_release_card(model_dir, MODEL, version, None, "pending", settings)

    def card(version: str) -> str:
        body = raw.get_object(Bucket=fresh_bucket["AWS_S3_BUCKET"], Key=f"{MODEL}/.cards/{version}/model-card.md")
        return body["Body"].read().decode()

    common = {"namespace": NS, "registry-url": registry.url, "model-name": "gated-detector",
              "pipeline-run-namespace": NS}  # fmt: skip
    labels = {"tekton.dev/pipelineTask": "approve"}
    try:
        release(kube, registry, model_dir, "v1", gated=False)
        release(kube, registry, model_dir, "v2", gated=True)
        gate = approval_gate.create("run-1-approve", NS, {"approvers": ["alice"]},
                                    {**labels, "tekton.dev/pipelineRun": "run-1"})  # fmt: skip
        kube.approval_tasks.append(gate)
        # promote refuses while the gate is pending (exit 7), then promotes once alice approves
        run_task("anomaly-rollout", {**common, "action": "promote", "pipeline-run": "run-1"}, tmp_path, env, 7)
        assert kube.objects[(NS, "anomaly-detector")]["spec"]["predictor"]["canaryTrafficPercent"] == 10
        approval_gate.respond(gate, "alice", "approve", "checked the canary")
        run_task("anomaly-rollout", {**common, "action": "promote", "pipeline-run": "run-1"}, tmp_path, env)
        assert "canaryTrafficPercent" not in kube.objects[(NS, "anomaly-detector")]["spec"]["predictor"]
        assert state_of(registry, "v2")[1]["approval_by"] == "alice"
        assert "Status: **approved**." in card("v2") and "by alice through ApprovalTask" in card("v2")
        assert "| threshold |" in card("v2")  # the rest of the card renders as before
        # the next release is rejected: the finally task rolls it back and records who rejected it
        release(kube, registry, model_dir, "v3", gated=True)
        rejected = approval_gate.create("run-2-approve", NS, {"approvers": ["alice", "bob"]},
                                        {**labels, "tekton.dev/pipelineRun": "run-2"})  # fmt: skip
        kube.approval_tasks.append(approval_gate.respond(rejected, "bob", "reject", "too many flags"))
        run_task("anomaly-rollout", {**common, "action": "rollback", "pipeline-run": "run-2"}, tmp_path, env)
        assert kube.objects[(NS, "anomaly-detector")]["spec"]["predictor"]["canaryTrafficPercent"] == 0
        state, properties = state_of(registry, "v3")
        assert state == "ARCHIVED" and properties["approval"] == "rejected" and properties["approval_by"] == "bob"
        assert state_of(registry, "v2")[0] == "LIVE"
        assert "Status: **rejected**." in card("v3")
        assert "by bob through ApprovalTask anomaly/run-2-approve: bob: too many flags." in card("v3")
        run_task("anomaly-rollout", {**common, "action": "sideways", "pipeline-run": "run-2"}, tmp_path, env, 2)
    finally:
        kube.stop()
        registry.stop()
