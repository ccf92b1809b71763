"""The approval gate (steps/approval.py, steps/rollout.py): approve, reject and timeout, in the
KFP flow (the version waits in the Model Registry; `promote --when-approved` acts on the
decision) and in the Tekton flow (the manual approval gate's ApprovalTask decides; promote
and rollback record it). The real kubernetes and model-registry clients talk to the API
server fake (tests/k8s_fake.py) and the registry fake (tests/registry_fake.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import approval_gate
import pytest
import registry_fake
import yaml

from anomaly_mlops.errors import ConfigError, DeployError
from anomaly_mlops.steps import rollout
from anomaly_mlops.steps.approval import (
    APPROVED,
    PENDING,
    REJECTED,
    TIMED_OUT,
    ApprovalError,
    approval_from_task,
    decide,
    pending_approval,
    read_approval,
)
from anomaly_mlops.steps.deploy import DeploySpec, InferenceServiceClient, deploy
from anomaly_mlops.steps.registry import register_version

from k8s_fake import FakeKubeAPI

pytestmark = pytest.mark.skipif(
    not registry_fake.available(), reason="../shared/schemas/model-registry not found beside the checkout"
)
NS, MODEL = "anomaly", "gated-detector"


@pytest.fixture
def kube():
    server = FakeKubeAPI()
    yield server
    server.stop()


@pytest.fixture
def registry():
    fake = registry_fake.FakeModelRegistry()
    yield fake
    fake.stop()


@pytest.fixture
def target(registry):
    return rollout.RegistryTarget(registry.url, MODEL)


def release(kube, registry, model_dir, version: str, *, gated: bool, mode: str = "Serverless", now=None):
    """Register ``version`` (awaiting approval when ``gated``) and roll it out as deploy does."""
    approval = pending_approval(24, now) if gated else None
    register_version(registry.url, model_dir, MODEL, version, f"s3://models/{MODEL}/{version}/",
                     storage_key="aws-connection-models", approval=approval)  # fmt: skip
    spec = DeploySpec(name="anomaly-detector", namespace=NS, storage_key="aws-connection-models",
                      storage_path=f"{MODEL}/{version}/", model_version=version, deployment_mode=mode)  # fmt: skip
    return deploy(spec, InferenceServiceClient(kube.api()), timeout_s=5, poll_s=0.01)


def state_of(registry, version: str) -> tuple[str, dict]:
    found = next(v for v in registry.versions.values() if v["name"] == version)
    values = {
        k: next(x for key, x in v.items() if key.endswith("_value")) for k, v in found["customProperties"].items()
    }
    return found["state"], values


def predictor(kube) -> dict:
    return kube.objects[(NS, "anomaly-detector")]["spec"]["predictor"]


def check(kube, target, now=None) -> dict:
    return rollout.release_when_approved(InferenceServiceClient(kube.api()), "anomaly-detector", NS, target, now)


def test_kfp_flow_a_canary_waits_for_approval_then_is_promoted(kube, registry, target, model_dir):
    client = InferenceServiceClient(kube.api())
    release(kube, registry, model_dir, "v1", gated=False)
    rollout.promote(client, "anomaly-detector", NS, target)
    canary = release(kube, registry, model_dir, "v2", gated=True)
    assert canary.canary and predictor(kube)["canaryTrafficPercent"] == 10
    # pending: the recurring check changes nothing, however often it runs
    for _ in range(2):
        waiting = check(kube, target)
        assert waiting["action"] == "none" and waiting["reason"].startswith("approval pending until ")
    assert predictor(kube)["canaryTrafficPercent"] == 10
    with pytest.raises(ApprovalError, match="the approval is pending"):  # promote itself refuses an undecided one
        rollout.promote(client, "anomaly-detector", NS, target, read_approval(registry.url, MODEL, "v2")[0])
    decided = decide(registry.url, MODEL, "v2", approve=True, by="alice", message="looks right")
    assert decided.state == APPROVED and decided.by == ("alice",)
    done = check(kube, target)
    assert done["action"] == "promoted" and done["registry_states"] == {"v1": "ARCHIVED", "v2": "LIVE"}
    assert "canaryTrafficPercent" not in predictor(kube)
    state, properties = state_of(registry, "v2")
    assert state == "LIVE" and properties["serving"] == "true"
    assert (properties["approval"], properties["approval_by"], properties["approval_message"]) == (
        "approved", "alice", "looks right",
    )  # fmt: skip
    assert check(kube, target) == {"isvc": f"{NS}/anomaly-detector", "version": "v2", "action": "none",
                                   "reason": "already promoted"}  # fmt: skip


def test_kfp_flow_a_rejected_canary_is_rolled_back_once(kube, registry, target, model_dir):
    client = InferenceServiceClient(kube.api())
    release(kube, registry, model_dir, "v1", gated=False)
    rollout.promote(client, "anomaly-detector", NS, target)
    release(kube, registry, model_dir, "v2", gated=True)
    decide(registry.url, MODEL, "v2", approve=False, by="bob", message="flags too much on node-7")
    done = check(kube, target)
    assert done["action"] == "rolled back" and predictor(kube)["canaryTrafficPercent"] == 0
    assert done["registry_states"] == {"v2": "ARCHIVED", "v1": "LIVE"}
    state, properties = state_of(registry, "v2")
    assert state == "ARCHIVED" and properties["serving"] == "false" and properties["approval"] == REJECTED
    assert check(kube, target)["reason"] == "already rolled back (rejected by bob)"
    with pytest.raises(ApprovalError, match="already rejected by bob; a decision is final"):
        decide(registry.url, MODEL, "v2", approve=True, by="carol")


def test_kfp_flow_an_undecided_version_times_out_and_is_rolled_back(kube, registry, model_dir, settings, raw):
    """RawDeployment has no canary: the version serves while it waits, and a timeout restores
    the previous predictor exactly. The timeout goes on the version's model card."""
    from anomaly_mlops.steps.model_card import card_key, publish_release_card

    target = rollout.RegistryTarget(registry.url, MODEL, cards=settings)
    publish_release_card(model_dir, MODEL, "v2", None, "pending", settings)
    client = InferenceServiceClient(kube.api())
    release(kube, registry, model_dir, "v1", gated=False, mode="RawDeployment")
    rollout.promote(client, "anomaly-detector", NS, target)  # all traffic already: the registry only
    asked = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
    release(kube, registry, model_dir, "v2", gated=True, mode="RawDeployment", now=asked)
    assert predictor(kube)["model"]["storage"]["path"] == f"{MODEL}/v2/"
    assert check(kube, target, now=asked + timedelta(hours=23))["action"] == "none"
    done = check(kube, target, now=asked + timedelta(hours=24, seconds=1))
    assert done["action"] == "rolled back" and predictor(kube)["model"]["storage"]["path"] == f"{MODEL}/v1/"
    state, properties = state_of(registry, "v2")
    assert state == "ARCHIVED" and properties["approval"] == TIMED_OUT
    assert properties["approval_via"] == "anomaly-mlops promote --when-approved"
    card = raw.get_object(Bucket=settings.bucket, Key=card_key(MODEL, "v2") + "model-card.md")["Body"].read().decode()
    assert "Status: **timed-out**." in card and "Decided 2026-12-08T06:00:01Z through anomaly-mlops promote" in card
    assert check(kube, target)["reason"] == "the version was released without the approval gate"  # v1 serves again
    with pytest.raises(ApprovalError, match="already timed-out"):
        decide(registry.url, MODEL, "v2", approve=True, by="alice")


def test_the_check_leaves_a_version_the_registry_does_not_hold(kube, registry, target, model_dir):
    spec = DeploySpec(name="anomaly-detector", namespace=NS, storage_key="k", storage_path=f"{MODEL}/v0/",
                      model_version="v0", deployment_mode="Serverless")  # fmt: skip
    deploy(spec, InferenceServiceClient(kube.api()), timeout_s=5, poll_s=0.01)
    assert check(kube, target)["reason"] == "the Model Registry holds no version 'v0'"


def test_a_rejected_first_release_is_recorded_and_said_to_still_serve(kube, registry, target, model_dir):
    release(kube, registry, model_dir, "v1", gated=True)
    decide(registry.url, MODEL, "v1", approve=False, by="bob")
    with pytest.raises(DeployError, match="nothing served before it, so it still serves"):
        check(kube, target)
    assert state_of(registry, "v1")[1]["approval"] == REJECTED


def test_decisions_are_refused_when_they_cannot_be_taken(registry, model_dir):
    register_version(registry.url, model_dir, MODEL, "v1", f"s3://models/{MODEL}/v1/", storage_key="k")
    with pytest.raises(ConfigError, match="was not registered awaiting approval"):
        decide(registry.url, MODEL, "v1", approve=True, by="alice")
    with pytest.raises(ConfigError, match="holds no version 'v9'"):
        decide(registry.url, MODEL, "v9", approve=True, by="alice")
    register_version(registry.url, model_dir, MODEL, "v2", f"s3://models/{MODEL}/v2/", storage_key="k",
                     approval=pending_approval(1, datetime(2026, 1, 1, tzinfo=UTC)))  # fmt: skip
    with pytest.raises(ConfigError, match="must name one person"):
        decide(registry.url, MODEL, "v2", approve=True, by="alice,bob")
    # refused by name, not as a version the registry does not hold
    with pytest.raises(ConfigError, match="--version must name the model version to decide on, got ''"):
        decide(registry.url, MODEL, "", approve=True, by="alice")
    with pytest.raises(ConfigError, match="--model-name must name the model version to decide on, got ' '"):
        decide(registry.url, " ", "v2", approve=True, by="alice")
    with pytest.raises(ApprovalError, match="timed out at 2026-01-01T01:00:00Z"):
        decide(registry.url, MODEL, "v2", approve=True, by="alice")
    with pytest.raises(ConfigError, match="at most 2160"):
        pending_approval(0)
    registry.stop()
    with pytest.raises(ConfigError, match="cannot reach the Model Registry at http://127.0.0.1"):
        read_approval(registry.url, MODEL, "v2")


def test_the_cli_approves_and_runs_the_recurring_check(kube, registry, model_dir, tmp_path):
    from test_cli import run

    release(kube, registry, model_dir, "v1", gated=False)
    release(kube, registry, model_dir, "v2", gated=True)
    kubeconfig = kubeconfig_for(kube, tmp_path)
    common = ["--name", "anomaly-detector", "--namespace", NS, "--kubeconfig", str(kubeconfig), "--registry-url",
              registry.url, "--registry-model-name", MODEL]  # fmt: skip
    assert json.loads(run("promote", "--when-approved", *common).stdout)["action"] == "none"
    approved = json.loads(run("approve", "--registry-url", registry.url, "--model-name", MODEL, "--version", "v2",
                              "--by", "alice").stdout)  # fmt: skip
    assert approved["state"] == APPROVED and approved["via"] == "anomaly-mlops approve"
    assert json.loads(run("promote", "--when-approved", *common).stdout)["action"] == "promoted"
    unset = run("promote", "--when-approved", "--name", "anomaly-detector", "--namespace", NS, "--kubeconfig",
                str(kubeconfig), check=False)  # fmt: skip
    assert unset.returncode == 2 and "give --registry-url" in unset.stderr


def kubeconfig_for(kube, tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": kube.url}}],
        "users": [{"name": "sa", "user": {"token": kube.token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "sa", "namespace": NS}}],
    }))  # fmt: skip
    return path


# --------------------------------------------------------------------------- the Tekton gate


def gate_task(kube, pipeline_run: str = "retrain-x1", params: dict | None = None) -> dict:
    params = params or {"approvers": ["alice", "group:sre"], "numberOfApprovalsRequired": "1"}
    labels = {"tekton.dev/pipelineRun": pipeline_run, "tekton.dev/pipelineTask": "approve",
              "tekton.dev/pipeline": "anomaly-mlops-retraining"}  # fmt: skip
    task = approval_gate.create(f"{pipeline_run}-approve", NS, params, labels)
    kube.approval_tasks.append(task)
    return task


def test_the_gates_decision_is_read_from_its_approval_task(kube):
    api = kube.api()
    task = gate_task(kube)
    assert approval_from_task(api, NS, "retrain-x1").state == PENDING
    approval_gate.respond(task, "dana", "approve", "ship it", group="sre")
    decided = approval_from_task(api, NS, "retrain-x1")
    assert (decided.state, decided.by, decided.message) == (APPROVED, ("dana",), "dana: ship it")
    assert decided.via == f"ApprovalTask {NS}/retrain-x1-approve"
    other = gate_task(kube, "retrain-x2")
    approval_gate.respond(other, "alice", "reject", "no")
    rejected = approval_from_task(api, NS, "retrain-x2")
    assert (rejected.state, rejected.by) == (REJECTED, ("alice",))
    approval_gate.time_out(gate_task(kube, "retrain-x3"))
    assert approval_from_task(api, NS, "retrain-x3").state == TIMED_OUT
    with pytest.raises(ConfigError, match="no ApprovalTask for pipeline task 'approve' of PipelineRun retrain-x9"):
        approval_from_task(api, NS, "retrain-x9")
    kube.approval_gate = False
    with pytest.raises(ConfigError, match="install OpenShift Pipelines' manual approval gate"):
        approval_from_task(api, NS, "retrain-x1")


def test_tekton_flow_promote_records_who_approved_and_refuses_otherwise(kube, registry, target, model_dir):
    client = InferenceServiceClient(kube.api())
    release(kube, registry, model_dir, "v1", gated=False)
    rollout.promote(client, "anomaly-detector", NS, target)
    release(kube, registry, model_dir, "v2", gated=True)
    task = gate_task(kube)
    with pytest.raises(ApprovalError, match="pending"):
        rollout.promote(client, "anomaly-detector", NS, target, approval_from_task(kube.api(), NS, "retrain-x1"))
    assert predictor(kube)["canaryTrafficPercent"] == 10
    approval_gate.respond(task, "alice", "approve")
    done = rollout.promote(client, "anomaly-detector", NS, target, approval_from_task(kube.api(), NS, "retrain-x1"))
    assert done["approval"] == "approved by alice" and "canaryTrafficPercent" not in predictor(kube)
    _, properties = state_of(registry, "v2")
    assert properties["approval_by"] == "alice" and properties["approval_via"].startswith("ApprovalTask ")
