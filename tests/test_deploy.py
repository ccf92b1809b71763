"""InferenceService create/update, canary, rollback and readiness with the real kubernetes
client against an HTTP fake of the API server (tests/k8s_fake.py)."""

import json
import time

import numpy as np
import pytest

from anomaly_mlops.errors import ConfigError, DeployError
from anomaly_mlops.model.artifacts import check_runtime_serves
from anomaly_mlops.model.features import MetricBasis
from anomaly_mlops.steps.deploy import (
    CUSTOM_RUNTIME,
    PREVIOUS_STORAGE_ANNOTATION,
    DeploySpec,
    InferenceServiceClient,
    build_inference_service,
    deploy,
)

from k8s_fake import FakeKubeAPI, failing_controller, ready_controller

NS = "anomaly"


@pytest.fixture
def fake():
    server = FakeKubeAPI()
    yield server
    server.stop()


@pytest.fixture
def isvc_client(fake):
    return InferenceServiceClient(fake.api())


def spec(version="v1", **overrides):
    values = dict(
        name="anomaly-detector",
        namespace=NS,
        storage_key="aws-connection-models",
        storage_path=f"anomaly-detector/{version}/",
        model_version=version,
        deployment_mode="Serverless",  # most tests here are about canaries; the default is RawDeployment
    )
    values.update(overrides)
    return DeploySpec(**values)


def stored(fake, name="anomaly-detector"):
    return fake.objects[(NS, name)]


def test_built_object_for_custom_and_sklearn_runtimes():
    custom = build_inference_service(spec(scale_target=5, scale_metric="concurrency", logger_url="http://log"))
    assert custom["apiVersion"] == "serving.kserve.io/v1beta1" and custom["kind"] == "InferenceService"
    predictor = custom["spec"]["predictor"]
    assert predictor["model"]["modelFormat"] == {"name": "anomaly-isolation-forest", "version": "1"}
    assert predictor["model"]["runtime"] == "anomaly-detector-runtime"
    assert predictor["model"]["storage"] == {"key": "aws-connection-models", "path": "anomaly-detector/v1/"}
    assert (predictor["scaleTarget"], predictor["scaleMetric"]) == (5, "concurrency")
    assert predictor["logger"] == {"mode": "all", "url": "http://log"}
    annotations = custom["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Serverless"
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"

    sk = build_inference_service(
        spec(
            runtime="sklearn",
            storage_key=None,
            storage_path=None,
            storage_uri="s3://models/anomaly-detector/v1/",
            deployment_mode="RawDeployment",
        )
    )
    model = sk["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "sklearn"} and "runtime" not in model
    assert model["storageUri"] == "s3://models/anomaly-detector/v1/" and "storage" not in model
    assert sk["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(name="a" * 37), "at most 36"),
        (dict(name="Anomaly"), "DNS-1035"),
        (dict(storage_uri="s3://x/y"), "either storage_key"),
        (
            dict(deployment_mode="ModelMesh"),
            r"unknown deployment mode 'ModelMesh': one of RawDeployment \(also spelled Standard\)",
        ),
        (dict(deployment_mode="raw"), "unknown deployment mode 'raw'"),
        (dict(canary_traffic_percent=120), "0-100"),
        (dict(cpu_request="lots"), "cpu-request 'lots' is not a Kubernetes quantity"),
        # KServe's webhook: HPA metrics for RawDeployment, Knative's for Serverless, in its words.
        (
            dict(deployment_mode="RawDeployment", scale_metric="concurrency"),
            r"\[concurrency\] is not a supported metric",
        ),
        (dict(deployment_mode="RawDeployment", scale_metric="rps"), r"\[rps\] is not a supported metric"),
        (dict(scale_metric="cpu"), r"\[cpu\] is not a supported metric.*Knative"),
        (dict(scale_metric="memory"), r"\[memory\] is not a supported metric"),
        (dict(deployment_mode="RawDeployment", scale_target=150), r"should be a \[1-100\] integer"),
        (dict(scale_metric="rps", scale_target=0), "the target for rps should be greater than 1"),
    ],
)
def test_bad_specs_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        build_inference_service(spec(**bad))


def test_create_then_ready_reports_url_and_revision(fake, isvc_client):
    result = deploy(spec(), isvc_client, timeout_s=5, poll_s=0.01)
    assert result.action == "created" and not result.canary
    assert result.url == "https://anomaly-detector-anomaly.apps.example.test"
    assert result.revision == "anomaly-detector-predictor-00001"
    assert stored(fake)["metadata"]["generation"] == 1


def test_serverless_update_goes_out_as_canary_then_promotes(fake, isvc_client):
    deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01)
    result = deploy(spec("v2", canary_traffic_percent=20), isvc_client, timeout_s=5, poll_s=0.01)
    obj = stored(fake)
    assert result.action == "updated" and result.canary
    assert obj["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert obj["spec"]["predictor"]["model"]["storage"]["path"] == "anomaly-detector/v2/"
    assert obj["metadata"]["annotations"][PREVIOUS_STORAGE_ANNOTATION] == "aws-connection-models:anomaly-detector/v1/"
    assert obj["metadata"]["generation"] == 2 and result.revision.endswith("00002")
    isvc_client.promote("anomaly-detector", NS)
    assert "canaryTrafficPercent" not in stored(fake)["spec"]["predictor"]


def test_serverless_rollback_pins_the_previous_revision(fake, isvc_client):
    deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01)
    deploy(spec("v2"), isvc_client, timeout_s=5, poll_s=0.01)
    done = isvc_client.rollback("anomaly-detector", NS)
    assert "previous revision" in done
    assert stored(fake)["spec"]["predictor"]["canaryTrafficPercent"] == 0


def test_raw_deployment_keeps_previous_path_and_rolls_back_to_it(fake, isvc_client):
    raw = dict(deployment_mode="RawDeployment")
    deploy(spec("v1", **raw), isvc_client, timeout_s=5, poll_s=0.01)
    result = deploy(spec("v2", **raw), isvc_client, timeout_s=5, poll_s=0.01)
    obj = stored(fake)
    assert not result.canary and "canaryTrafficPercent" not in obj["spec"]["predictor"]
    assert obj["metadata"]["annotations"][PREVIOUS_STORAGE_ANNOTATION] == "aws-connection-models:anomaly-detector/v1/"
    isvc_client.rollback("anomaly-detector", NS)
    obj = stored(fake)
    assert obj["spec"]["predictor"]["model"]["storage"]["path"] == "anomaly-detector/v1/"
    assert PREVIOUS_STORAGE_ANNOTATION not in obj["metadata"]["annotations"]
    with pytest.raises(DeployError, match="nothing to roll back to"):
        isvc_client.rollback("anomaly-detector", NS)


def test_switching_storage_kind_removes_the_old_field(fake, isvc_client):
    deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01)
    deploy(
        spec("v2", storage_key=None, storage_path=None, storage_uri="s3://models/anomaly-detector/v2/"),
        isvc_client,
        timeout_s=5,
        poll_s=0.01,
    )
    model = stored(fake)["spec"]["predictor"]["model"]
    assert model["storageUri"] == "s3://models/anomaly-detector/v2/" and "storage" not in model


def test_runtime_check_reads_only_what_the_sklearn_runtime_needs(tmp_path, model_dir):
    check_runtime_serves("custom", tmp_path / "nothing-here")  # our runtime serves any model
    check_runtime_serves("sklearn", model_dir)  # row-wise, unsmoothed
    with pytest.raises(ConfigError, match="cannot read the model's metadata.json"):
        check_runtime_serves("sklearn", tmp_path / "nothing-here")
    for broken in ("[]", '{"feature_transform": {"window": "wide"}}', "{"):
        (tmp_path / "metadata.json").write_text(broken)
        with pytest.raises(ConfigError, match="cannot read the model's metadata.json"):
            check_runtime_serves("sklearn", tmp_path)
    (tmp_path / "metadata.json").write_text('{"feature_transform": {"window": 0}, "score_smoothing": {"rows": 10}}')
    with pytest.raises(ConfigError, match="uses 10-row score smoothing: deploy it with --runtime custom"):
        check_runtime_serves("sklearn", tmp_path)
    # Row-wise and unsmoothed, but its trees cut rotated metrics, which the sklearn runtime never computes.
    rotated = MetricBasis.fit(np.random.default_rng(0).normal(size=(50, 3))).to_dict()
    (tmp_path / "metadata.json").write_text(json.dumps({"feature_transform": {"window": 0, "basis": rotated}}))
    with pytest.raises(ConfigError, match="uses metrics on their principal axes: deploy it with --runtime custom"):
        check_runtime_serves("sklearn", tmp_path)
    # Row-wise, raw and unsmoothed, but its score adds a reconstruction error the sklearn pipeline lacks.
    (tmp_path / "metadata.json").write_text(
        json.dumps({"feature_transform": {"window": 0}, "reconstruction_score": {}})
    )
    with pytest.raises(ConfigError, match="uses a reconstruction error added to the forest's score: deploy it with"):
        check_runtime_serves("sklearn", tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"feature_transform": {"window": 0, "basis": {"kind": "x"}}}))
    with pytest.raises(ConfigError, match="cannot read the model's metadata.json"):
        check_runtime_serves("sklearn", tmp_path)


@pytest.mark.parametrize("mode", ["Serverless", "RawDeployment"])
def test_switching_runtime_leaves_nothing_of_the_old_one(fake, isvc_client, mode):
    """custom -> sklearn drops `runtime: anomaly-detector-runtime` and modelFormat.version
    (left, they would pin a sklearn-format model to our runtime); a RawDeployment rollback
    restores the custom predictor whole, and one back from custom drops them again."""
    deploy(spec("v1", deployment_mode=mode), isvc_client, timeout_s=5, poll_s=0.01)
    assert stored(fake)["spec"]["predictor"]["model"]["runtime"] == CUSTOM_RUNTIME
    deploy(spec("v2", deployment_mode=mode, runtime="sklearn"), isvc_client, timeout_s=5, poll_s=0.01)
    model = stored(fake)["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "sklearn"} and "runtime" not in model
    if mode == "RawDeployment":
        isvc_client.rollback("anomaly-detector", NS)
        model = stored(fake)["spec"]["predictor"]["model"]
        assert model["runtime"] == CUSTOM_RUNTIME and model["modelFormat"]["version"] == "1"
        assert model["storage"]["path"] == "anomaly-detector/v1/"
        deploy(spec("v3", deployment_mode=mode, runtime="sklearn"), isvc_client, timeout_s=5, poll_s=0.01)
        deploy(spec("v4", deployment_mode=mode), isvc_client, timeout_s=5, poll_s=0.01)
        isvc_client.rollback("anomaly-detector", NS)
        model = stored(fake)["spec"]["predictor"]["model"]
        assert model["modelFormat"] == {"name": "sklearn"} and "runtime" not in model


def test_reapplying_the_same_spec_writes_nothing(fake, isvc_client):
    deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01)
    rv = stored(fake)["metadata"]["resourceVersion"]
    patches_before = sum(1 for m, _, _ in fake.requests if m == "PATCH")
    result = deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01)
    assert result.action == "unchanged"
    assert sum(1 for m, _, _ in fake.requests if m == "PATCH") == patches_before
    assert stored(fake)["metadata"]["resourceVersion"] == rv


def test_conflicts_are_retried_with_a_fresh_read(fake, isvc_client):
    deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01)
    fake.inject_conflicts = 3
    result = deploy(spec("v2"), isvc_client, timeout_s=5, poll_s=0.01)
    assert result.action == "updated"
    assert stored(fake)["spec"]["predictor"]["model"]["storage"]["path"] == "anomaly-detector/v2/"
    assert fake.inject_conflicts == 0


def test_create_race_turns_into_an_update(fake, isvc_client):
    fake.inject_conflicts = 1  # someone creates it between our GET 404 and our POST
    result = isvc_client.apply(spec("v1"))
    assert result.action in ("updated", "unchanged")
    assert (NS, "anomaly-detector") in fake.objects


def test_a_conflict_storm_gives_up_with_a_clear_error(fake):
    client = InferenceServiceClient(fake.api(), max_conflict_retries=3)
    deploy(spec("v1"), client, timeout_s=5, poll_s=0.01)
    fake.inject_conflicts = 100
    with pytest.raises(DeployError, match="after 3 conflicting writes"):
        client.apply(spec("v2"))


def test_forbidden_namespace_names_rbac(fake, isvc_client):
    fake.forbidden_namespaces.add(NS)
    with pytest.raises(DeployError, match="403 .*apply manifests/rbac"):
        deploy(spec(), isvc_client, timeout_s=1)


def test_missing_crd_and_bad_token(fake):
    fake.crd_installed = False
    with pytest.raises(DeployError, match="404 .*is KServe installed"):
        InferenceServiceClient(fake.api()).apply(spec())
    fake.crd_installed = True
    stale = InferenceServiceClient(fake.api())
    fake.token = "rotated"
    with pytest.raises(DeployError, match="401 .*token is missing or expired"):
        stale.apply(spec())


def test_unreachable_api_server():
    from kubernetes import client

    from anomaly_mlops.adapters.local_services import free_port

    api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{free_port()}")))
    api.api_client.configuration.retries = 0
    with pytest.raises(DeployError, match="cannot reach the Kubernetes API server"):
        InferenceServiceClient(api).apply(spec())


@pytest.mark.parametrize(
    "reason",
    [
        "ServingRuntimeNotFound",
        "NoSupportedRuntime",
        "InvalidStorageSpec",
        "RuntimeNotRecognized",
        "UnsupportedProtocol",
    ],
)
def test_terminal_reasons_fail_fast(fake, isvc_client, reason):
    fake.controller = failing_controller(reason)
    started = time.monotonic()
    with pytest.raises(DeployError, match=f"cannot become ready: .*{reason}"):
        deploy(spec(), isvc_client, timeout_s=30, poll_s=0.01)
    assert time.monotonic() - started < 5


def test_failed_update_rolls_back(fake, isvc_client):
    deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01)
    fake.controller = failing_controller("InvalidStorageSpec")
    with pytest.raises(DeployError, match="InvalidStorageSpec"):
        deploy(spec("v2"), isvc_client, timeout_s=5, poll_s=0.01)
    assert stored(fake)["spec"]["predictor"]["canaryTrafficPercent"] == 0


def test_stale_ready_status_is_not_trusted(fake, isvc_client):
    """Ready=True for generation 1 says nothing about generation 2."""
    deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01)
    fake.controller = None  # controller stalls: status still describes generation 1
    with pytest.raises(DeployError, match="not ready after .*has not seen generation 2"):
        deploy(spec("v2"), isvc_client, timeout_s=0.3, poll_s=0.05)


def test_waits_for_the_controller(fake, isvc_client):
    fake.controller = ready_controller(reads_until_ready=4)
    result = deploy(spec(), isvc_client, timeout_s=5, poll_s=0.01)
    assert result.url and fake.reads[(NS, "anomaly-detector")] >= 4


def test_cli_deploys_with_a_kubeconfig(fake, tmp_path, windowed, model_dir):
    import json

    import yaml
    from test_cli import run

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                "users": [{"name": "sa", "user": {"token": fake.token}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "sa"}}],
            }
        )
    )
    common = ["--namespace", NS, "--kubeconfig", str(kubeconfig)]
    serverless = ["--mode", "Serverless"]  # canaries; the default is RawDeployment
    out = json.loads(
        run(
            "deploy",
            *common,
            *serverless,
            "--storage-key",
            "aws-connection-models",
            "--storage-path",
            "anomaly-detector/v1/",
            "--timeout",
            "10",
        ).stdout
    )
    assert out["action"] == "created" and out["revision"] == "anomaly-detector-predictor-00001"
    run(
        "deploy",
        *common,
        *serverless,
        "--storage-key",
        "aws-connection-models",
        "--storage-path",
        "anomaly-detector/v2/",
        "--canary-percent",
        "25",
        "--timeout",
        "10",
    )
    assert stored(fake)["spec"]["predictor"]["canaryTrafficPercent"] == 25
    # The upstream sklearn runtime scores rows alone: a windowed, smoothed model is refused
    # before anything is sent; a row-wise one goes out.
    v3 = [
        *serverless,
        "--runtime",
        "sklearn",
        "--storage-key",
        "aws-connection-models",
        "--storage-path",
        "anomaly-detector/v3/",
    ]
    before = stored(fake)
    refused = run("deploy", *common, *v3, "--model-dir", str(windowed[0].model_dir), check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert (
        "--runtime sklearn scores each row alone on the metrics as sent, but this model uses a 15-row feature "
        "window, metrics on their principal axes, 4-row score smoothing, a reconstruction error added to the "
        "forest's score: deploy it with --runtime custom"
    ) in " ".join(refused.stderr.split())
    assert stored(fake) == before
    run("deploy", *common, *v3, "--model-dir", str(model_dir), "--canary-percent", "-1", "--timeout", "10")
    assert stored(fake)["spec"]["predictor"]["model"]["modelFormat"] == {"name": "sklearn"}
    run("promote", *common)
    assert "canaryTrafficPercent" not in stored(fake)["spec"]["predictor"]
    fake.forbidden_namespaces.add(NS)
    denied = run("rollback", *common, check=False)
    assert denied.returncode == 5 and "403" in denied.stderr and "Traceback" not in denied.stderr


def test_a_hung_api_server_times_out_with_a_clear_error(fake):
    fake.delay_s = 3
    client = InferenceServiceClient(fake.api(), request_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(DeployError, match="cannot reach the Kubernetes API server .*timed out|Read timed out"):
        client.apply(spec())
    assert time.monotonic() - started < 2.5


def test_the_fake_refuses_what_the_cluster_refuses(fake, isvc_client):
    """422 with field paths from the real CRD schema, 400 from KServe's webhook rules, 415
    for strategic merge patch: checks our own validation cannot hide."""
    from kubernetes.client.exceptions import ApiException

    deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01)
    api = fake.api()
    for patch, status_code, message in [
        (
            {"spec": {"predictor": {"model": {"resources": {"requests": {"cpu": "lots"}}}}}},
            422,
            'spec.predictor.model.resources.requests.cpu: Invalid value: "lots"',
        ),
        ({"spec": {"predictor": {"replicas": 3}}}, 422, "spec.predictor.replicas: unknown field"),
        ({"spec": {"predictor": {"scaleMetric": "cpu"}}}, 400, "[cpu] is not a supported metric"),
        (
            {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}}},
            400,
            "deploymentMode cannot be changed from 'Serverless' to 'RawDeployment'",
        ),
    ]:
        with pytest.raises(ApiException) as info:
            api.patch_namespaced_custom_object(
                "serving.kserve.io", "v1beta1", NS, "inferenceservices", "anomaly-detector", patch
            )
        assert info.value.status == status_code and message in json.loads(info.value.body)["message"], info.value.body
    with pytest.raises(ApiException) as info:
        api.api_client.call_api(
            f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices/anomaly-detector",
            "PATCH",
            header_params={"Content-Type": "application/strategic-merge-patch+json"},
            body={"spec": {}},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )
    assert info.value.status == 415


def test_a_schema_refusal_reaches_the_user_as_one_line(fake, isvc_client, monkeypatch):
    """Were our own check skipped, the cluster's 422 names the field."""
    monkeypatch.setattr(DeploySpec, "check", lambda self: None)
    with pytest.raises(DeployError, match=r"422 .*spec.predictor.model.resources.requests.cpu: Invalid value"):
        isvc_client.apply(spec("v1", cpu_request="lots"))


# --------------------------------------------------------------------------- platform rules
# KServe 0.17+ (opendatahub-io/kserve odh-v3.4+): pkg/apis/serving/v1beta1/inference_service_defaults.go
# DefaultInferenceService rewrites RawDeployment -> Standard, Serverless -> Knative
# (pkg/constants/constants.go: "deprecated: use Standard/Knative").


def test_the_default_mode_is_raw_deployment():
    assert DeploySpec("x", NS, storage_uri="s3://b/x/v1/").deployment_mode == "RawDeployment"
    built = build_inference_service(DeploySpec("x", NS, storage_uri="s3://b/x/v1/"))
    assert built["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert "serving.kserve.io/enable-tag-routing" not in built["metadata"]["annotations"]
    for spelling, canonical in [("Standard", "RawDeployment"), ("Knative", "Serverless")]:
        assert DeploySpec("x", NS, storage_uri="s3://b/x/v1/", deployment_mode=spelling).deployment_mode == canonical


@pytest.mark.parametrize("mode", ["RawDeployment", "Serverless"])
def test_a_service_the_kserve_017_webhook_renamed_is_still_ours(fake, isvc_client, mode):
    fake.kserve_017 = True
    deploy(spec("v1", deployment_mode=mode), isvc_client, timeout_s=5, poll_s=0.01)
    renamed = {"RawDeployment": "Standard", "Serverless": "Knative"}[mode]
    assert stored(fake)["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == renamed
    again = deploy(spec("v1", deployment_mode=mode), isvc_client, timeout_s=5, poll_s=0.01)
    assert again.action == "unchanged"
    updated = deploy(spec("v2", deployment_mode=mode), isvc_client, timeout_s=5, poll_s=0.01)
    assert updated.action == "updated"
    done = isvc_client.rollback("anomaly-detector", NS)
    predictor = stored(fake)["spec"]["predictor"]
    if mode == "RawDeployment":  # no canary field there: the previous predictor comes back
        assert done.startswith("restored the previous predictor")
        assert predictor["model"]["storage"]["path"] == "anomaly-detector/v1/"
        assert "canaryTrafficPercent" not in predictor
        assert stored(fake)["metadata"]["annotations"]["anomaly-mlops.io/model-version"] == "v1"
    else:
        assert predictor["canaryTrafficPercent"] == 0


def test_a_standard_service_refuses_a_serverless_deploy_by_either_name(fake, isvc_client):
    fake.kserve_017 = True
    deploy(spec("v1", deployment_mode="RawDeployment"), isvc_client, timeout_s=5, poll_s=0.01)
    with pytest.raises(DeployError, match="runs as RawDeployment; KServe refuses the change"):
        deploy(spec("v2", deployment_mode="Knative"), isvc_client, timeout_s=5, poll_s=0.01)


def test_raw_rollback_never_reports_success_without_a_change(fake, isvc_client):
    deploy(spec("v1", deployment_mode="RawDeployment"), isvc_client, timeout_s=5, poll_s=0.01)
    with pytest.raises(DeployError, match="nothing to roll back to"):
        isvc_client.rollback("anomaly-detector", NS)
    deploy(spec("v2", deployment_mode="RawDeployment"), isvc_client, timeout_s=5, poll_s=0.01)
    isvc_client.rollback("anomaly-detector", NS)
    assert stored(fake)["spec"]["predictor"]["model"]["storage"]["path"] == "anomaly-detector/v1/"
    with pytest.raises(DeployError, match="nothing to roll back to"):
        isvc_client.rollback("anomaly-detector", NS)


def test_serverless_without_knative_fails_fast_on_the_event(fake, isvc_client):
    """OpenShift AI 3.x without Knative: only a ServerlessModeRejected event, no condition
    (opendatahub-io/kserve pkg/controller/v1beta1/inferenceservice/controller.go l.250-256)."""
    fake.controller = ready_controller(knative=False)
    started = time.monotonic()
    with pytest.raises(DeployError, match="ServerlessModeRejected: It is not possible to use Knative"):
        deploy(spec("v1", deployment_mode="Serverless"), isvc_client, timeout_s=60, poll_s=0.01)
    assert time.monotonic() - started < 10


def test_a_terminal_event_of_another_object_does_not_stop_the_wait(fake, isvc_client):
    fake.controller = ready_controller()
    fake.controller.events.append(
        {
            "metadata": {"name": "other.1", "namespace": NS},
            "involvedObject": {"kind": "InferenceService", "name": "other", "namespace": NS, "uid": "uid-x"},
            "reason": "ServerlessModeRejected",
            "message": "not ours",
            "type": "Warning",
        }
    )
    assert deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01).action == "created"


def _other_controllers_write(fake):
    """TrustyAI's logger, the Model Registry controller's labels and finalizer."""
    obj = stored(fake)
    obj["spec"]["predictor"]["logger"] = {"mode": "all", "url": "http://trustyai-service.anomaly.svc/consumer"}
    obj["metadata"]["labels"]["modelregistry.kubeflow.org/registered-model-id"] = "7"
    obj["metadata"]["finalizers"] = ["modelregistry.kubeflow.org/finalizer"]


def _still_there(fake):
    obj = stored(fake)
    assert obj["spec"]["predictor"]["logger"]["url"] == "http://trustyai-service.anomaly.svc/consumer"
    assert obj["metadata"]["labels"]["modelregistry.kubeflow.org/registered-model-id"] == "7"
    assert obj["metadata"]["finalizers"] == ["modelregistry.kubeflow.org/finalizer"]


@pytest.mark.parametrize("mode", ["RawDeployment", "Serverless"])
def test_fields_other_controllers_write_survive_deploy_promote_and_rollback(fake, isvc_client, mode):
    deploy(spec("v1", deployment_mode=mode), isvc_client, timeout_s=5, poll_s=0.01)
    _other_controllers_write(fake)
    assert deploy(spec("v1", deployment_mode=mode), isvc_client, timeout_s=5, poll_s=0.01).action == "unchanged"
    deploy(spec("v2", deployment_mode=mode), isvc_client, timeout_s=5, poll_s=0.01)
    _still_there(fake)
    if mode == "Serverless":
        isvc_client.promote("anomaly-detector", NS)
        _still_there(fake)
        deploy(spec("v3", deployment_mode=mode), isvc_client, timeout_s=5, poll_s=0.01)
    isvc_client.rollback("anomaly-detector", NS)
    _still_there(fake)


def test_fields_we_no_longer_set_are_removed(fake, isvc_client):
    deploy(spec("v1", scale_target=5, scale_metric="concurrency", logger_url="http://ours"), isvc_client, 5, 0.01)
    deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01)
    predictor = stored(fake)["spec"]["predictor"]
    assert "scaleTarget" not in predictor and "scaleMetric" not in predictor and "logger" not in predictor


def test_a_canary_is_verified_at_its_own_url(fake, isvc_client):
    deploy(spec("v1"), isvc_client, timeout_s=5, poll_s=0.01)
    result = deploy(spec("v2", canary_traffic_percent=10), isvc_client, timeout_s=5, poll_s=0.01)
    assert result.canary and result.url == "https://anomaly-detector-anomaly.apps.example.test"
    assert result.candidate_url == "http://latest-anomaly-detector.example.test"
    annotations = stored(fake)["metadata"]["annotations"]
    assert annotations["serving.kserve.io/enable-tag-routing"] == "true"


def test_a_canary_without_tag_routing_has_no_candidate_url():
    from anomaly_mlops.steps.deploy import candidate_url

    isvc = {
        "metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Serverless"}},
        "spec": {"predictor": {"canaryTrafficPercent": 10}},
        "status": {
            "url": "http://split",
            "components": {"predictor": {"traffic": [{"latestRevision": True, "percent": 10}, {"tag": "prev"}]}},
        },
    }
    assert candidate_url(isvc) is None
    isvc["spec"]["predictor"].pop("canaryTrafficPercent")
    assert candidate_url(isvc) == "http://split"


def test_a_model_with_entity_history_is_deployed_as_one_replica(windowed, model_dir):
    """Behind several replicas each server holds part of an entity's rows (no affinity in
    Knative or KServe's raw Service: DESIGN.md, platform rules) and answers wrongly."""
    from anomaly_mlops.model.artifacts import check_replicas

    assert DeploySpec("x", NS, storage_uri="s3://b/x/v1/").max_replicas == 1
    with pytest.raises(ConfigError, match="behind 3 replicas each would see part of an entity's rows"):
        check_replicas(3, windowed[0].model_dir)
    check_replicas(1, windowed[0].model_dir)
    check_replicas(5, model_dir)  # row-wise: scales out


def test_a_windowed_model_scales_out_with_a_shared_history_store(windowed):
    """With --history-secret the replicas keep entity history in one store
    (tests/test_shared_history.py), so several are allowed; the URL (it may hold a password)
    reaches the server from the Secret through the environment, never in the object."""
    from anomaly_mlops.model.artifacts import check_replicas
    from anomaly_mlops.params import HISTORY_URL_ENV
    from anomaly_mlops.steps.deploy import build_inference_service

    import crd_schema

    check_replicas(4, windowed[0].model_dir, shared_history=True)
    spec = DeploySpec("x", NS, storage_uri="s3://b/x/v1/", max_replicas=4, history_secret="anomaly-history")
    spec.check()
    isvc = build_inference_service(spec)
    env = isvc["spec"]["predictor"]["model"]["env"]
    assert env == [{"name": HISTORY_URL_ENV, "valueFrom": {"secretKeyRef": {"name": "anomaly-history", "key": "url"}}}]
    if crd_schema.available():
        assert crd_schema.errors(isvc) == []
    for bad in (
        DeploySpec("x", NS, storage_uri="s3://b/x/v1/", history_secret="Not_A_Name"),
        DeploySpec("x", NS, storage_uri="s3://b/x/v1/", history_secret="h", runtime="sklearn"),
    ):
        with pytest.raises(ConfigError, match="history_secret"):
            bad.check()


def test_cli_deploy_refuses_replicas_for_a_windowed_model_before_anything_is_sent(fake, tmp_path, windowed):
    from test_cli import run

    result = run(
        "deploy",
        "--namespace",
        NS,
        "--storage-uri",
        "s3://b/x/v1/",
        "--model-dir",
        str(windowed[0].model_dir),
        "--max-replicas",
        "3",
        check=False,
    )
    assert result.returncode == 2 and "--max-replicas 1" in result.stderr and fake.requests == []


@pytest.mark.skipif(not __import__("registry_fake").available(), reason="../shared/schemas/model-registry not found")
def test_deploy_from_the_registry_labels_the_inference_service_with_its_ids(
    fake, tmp_path, model_dir, settings, s3_env, monkeypatch
):
    """`deploy --from-registry NAME[:VERSION]` takes the storage from the version's model
    artifact and puts the registry's labels on the InferenceService; without a version, the
    newest LIVE one."""
    import json

    import yaml
    from registry_fake import FakeModelRegistry
    from test_cli import run

    from anomaly_mlops.steps.registry import LABEL_MODEL_ID, LABEL_REGISTRY, LABEL_VERSION_ID, register_version
    from anomaly_mlops.store.releases import publish

    registry = FakeModelRegistry()
    try:
        for version in ("v1", "v2"):
            release = publish(model_dir, "reg-deploy", version, settings)
            register_version(
                registry.url, model_dir, "reg-deploy", version, release.uri, storage_key="aws-connection-models"
            )
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1", "kind": "Config", "current-context": "fake",
                    "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                    "users": [{"name": "sa", "user": {"token": fake.token}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "sa"}}],
                }
            )
        )  # fmt: skip
        common = ["--namespace", NS, "--kubeconfig", str(kubeconfig), "--timeout", "10", "--registry-url",
                  registry.url, "--registry-name", "modelregistry-public"]  # fmt: skip
        out = json.loads(run("deploy", *common, "--from-registry", "reg-deploy").stdout)
        assert out["action"] == "created"
        isvc = stored(fake)
        newest = [v for v in registry.versions.values() if v["name"] == "v2"][0]
        assert isvc["metadata"]["labels"][LABEL_VERSION_ID] == newest["id"]
        assert isvc["metadata"]["labels"][LABEL_MODEL_ID] == newest["registeredModelId"]
        assert isvc["metadata"]["labels"][LABEL_REGISTRY] == "modelregistry-public"
        assert isvc["spec"]["predictor"]["model"]["storage"] == {
            "key": "aws-connection-models",
            "path": "reg-deploy/v2/",
        }
        run("deploy", *common, "--from-registry", "reg-deploy:v1")
        assert stored(fake)["spec"]["predictor"]["model"]["storage"]["path"] == "reg-deploy/v1/"
        # the registry says what serves: promote marks v1 LIVE and serving ...
        kube = ["--namespace", NS, "--kubeconfig", str(kubeconfig), "--registry-url", registry.url,
                "--registry-model-name", "reg-deploy"]  # fmt: skip
        promoted = json.loads(run("promote", *kube).stdout)
        assert promoted["registry_states"] == {"v2": "ARCHIVED", "v1": "LIVE"}  # v1 serves, v2 was before it
        by_name = {v["name"]: v for v in registry.versions.values()}
        assert by_name["v1"]["state"] == "LIVE" and by_name["v2"]["state"] == "ARCHIVED"
        assert by_name["v1"]["customProperties"]["serving"]["string_value"] == "true"
        # ... a rollback the other way round, and champion registry:NAME follows it
        rolled = json.loads(run("rollback", *kube).stdout)
        assert rolled["registry_states"] == {"v1": "ARCHIVED", "v2": "LIVE"}

        from anomaly_mlops.steps.champion import resolve_champion
        from anomaly_mlops.steps.registry import serving_from_registry

        monkeypatch.setenv("ANOMALY_MLOPS_REGISTRY_URL", registry.url)
        for key, value in s3_env.items():
            monkeypatch.setenv(key, value)
        assert serving_from_registry("reg-deploy") == f"s3://{settings.bucket}/reg-deploy/v2/"
        assert resolve_champion("registry:reg-deploy", "reg-deploy", tmp_path / "cache") is not None
        missing = run("deploy", *common, "--from-registry", "reg-deploy:v9", check=False)
        assert missing.returncode == 2 and "has no version 'v9'" in missing.stderr
        unnamed = run("deploy", "--namespace", NS, "--kubeconfig", str(kubeconfig), "--from-registry", "x", check=False)
        assert unnamed.returncode == 2 and "needs --registry-url and --registry-name" in unnamed.stderr
    finally:
        registry.stop()
