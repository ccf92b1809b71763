"""The deploy step: create or update the KServe ``serving.kserve.io/v1beta1``
InferenceService, wait until it is Ready, and promote or roll back a rollout.

- Update is get, then create or JSON-merge-patch carrying the resourceVersion read, so a
  concurrent writer yields 409 and we read and try again (bounded).
- Modes: ``RawDeployment`` (KServe 0.17+ / OpenShift AI 3.4+ rename it ``Standard``) is the
  default; ``Serverless`` (``Knative``) on request. Both spellings name one mode wherever a
  mode is read or compared; we write the older spelling, which every KServe accepts.
- Serverless: a new model on a live service goes out as a canary
  (``canaryTrafficPercent``) with tag routing on, so the candidate revision has its own URL
  (``latest-…``) for verification; promote removes the field (100% to the latest revision),
  rollback pins traffic to the previous revision (``canaryTrafficPercent: 0``).
- RawDeployment has no revisions: the predictor being replaced is kept whole in the
  annotation ``anomaly-mlops.io/previous-predictor`` (its storage path and model version
  beside it, for people); rollback restores that predictor and version exactly, a custom
  ``containers:`` predictor included.
- An InferenceService another tool owns (ArgoCD, Helm) is refused unless ``take_over``:
  that tool would revert us. Taking over removes its tracking marks.
- Converting a ``containers:`` predictor (the Self-Healing Platform's today) to a ``model:``
  one clears ``containers`` and ``volumes``: KServe refuses a predictor with both forms.
- Other controllers write into the InferenceService (TrustyAI's ``predictor.logger``, the Model
  Registry's labels and finalizer): an update changes only the predictor fields this step set
  (recorded in ``anomaly-mlops.io/owned-predictor-fields``), never theirs.
- Ready means condition Ready=True with ``status.observedGeneration >= metadata.generation``;
  terminal reasons, in conditions or in the InferenceService's events (``ServerlessModeRejected``:
  Serverless on a cluster without Knative), fail at once instead of waiting out the timeout.
- Rollback never reports success without a change: nothing to roll back to is an error.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from dataclasses import dataclass, field

from anomaly_mlops.errors import AnomalyMLOpsError, ConfigError, DeployError
from anomaly_mlops.params import HISTORY_URL_ENV

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
PREVIOUS_STORAGE_ANNOTATION = "anomaly-mlops.io/previous-storage-path"
MODEL_VERSION_ANNOTATION = "anomaly-mlops.io/model-version"
PREVIOUS_PREDICTOR_ANNOTATION = "anomaly-mlops.io/previous-predictor"
PREVIOUS_VERSION_ANNOTATION = "anomaly-mlops.io/previous-model-version"
TAKEN_OVER_ANNOTATION = "anomaly-mlops.io/taken-over-from"
OWNED_FIELDS_ANNOTATION = "anomaly-mlops.io/owned-predictor-fields"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
RAW, SERVERLESS = "RawDeployment", "Serverless"
# Every spelling KServe accepts for a mode -> the one we write. KServe 0.17+'s mutating webhook
# rewrites RawDeployment to Standard and Serverless to Knative (inference_service_defaults.go).
MODE_NAMES = {"RawDeployment": RAW, "Standard": RAW, "Serverless": SERVERLESS, "Knative": SERVERLESS}
# Predictor fields this step may set; whatever else is there belongs to someone else.
OWN_PREDICTOR_FIELDS = (
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "logger",
    "serviceAccountName",
    "model",
    "canaryTrafficPercent",
)
# Events after which the InferenceService will not become ready without a change.
TERMINAL_EVENT_REASONS = frozenset({"ServerlessModeRejected"})
# Marks by which ArgoCD (and Helm) track an object they own.
OWNER_MARKS = (
    ("annotation", "argocd.argoproj.io/tracking-id", "ArgoCD"),
    ("label", "argocd.argoproj.io/instance", "ArgoCD"),
    ("label", "app.kubernetes.io/instance", "ArgoCD or Helm"),
    ("label", "app.kubernetes.io/managed-by", "Helm"),
)
# Deploy profiles: where a known platform serves the model.
PROFILES = {
    "self-healing-platform": {
        "name": "anomaly-detector",
        "namespace": "self-healing-platform",
        "deployment_mode": RAW,
        "runtime": "custom",
    },
}
TERMINAL_REASONS = frozenset(
    {
        "ServingRuntimeNotFound",
        "NoSupportedRuntime",
        "InvalidStorageSpec",
        "RuntimeNotRecognized",
        "UnsupportedProtocol",
        # modelStatus.lastFailureInfo.reason values in the CRD that no retry mends
        "NoSupportingRuntime",
        "InvalidPredictorSpec",
        "RuntimeDisabled",
        "ModelLoadFailed",
    }
)
MAX_NAME_LENGTH = 36  # OpenShift AI limit on InferenceService names
CUSTOM_RUNTIME = "anomaly-detector-runtime"
CUSTOM_MODEL_FORMAT = "anomaly-isolation-forest"
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
HISTORY_SECRET_KEY = "url"
# The CRD's pattern for resource quantities (requests and limits).
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# KServe's validating webhook: RawDeployment scales with an HPA, Serverless with Knative's KPA.
SCALE_METRICS = {RAW: ("cpu", "memory"), SERVERLESS: ("concurrency", "rps")}


def canonical_mode(name: str) -> str:
    """RawDeployment or Serverless for any spelling KServe accepts; anything else is refused."""
    try:
        return MODE_NAMES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown deployment mode {name!r}: one of RawDeployment (also spelled Standard) or "
            "Serverless (also spelled Knative)"
        ) from None


def mode_of(isvc: dict) -> str | None:
    """The mode an InferenceService runs in, canonical (another mode, e.g. ModelMesh, as written);
    None when neither its annotation nor its status says."""
    name = ((isvc.get("metadata") or {}).get("annotations") or {}).get(MODE_ANNOTATION) or (
        isvc.get("status") or {}
    ).get("deploymentMode")
    return MODE_NAMES.get(name, name) if name else None


def canary_percent(value: int) -> int | None:
    """A canary's traffic share as flags and run parameters give it: a negative for none."""
    return None if value < 0 else value


def check_canary_percent(value: int | None) -> None:
    if value is not None and not 0 <= value <= 100:
        raise ConfigError(f"canary_traffic_percent must be 0-100, got {value}")


@dataclass
class DeploySpec:
    name: str
    namespace: str
    runtime: str = "custom"  # "custom" (labels + scores) or "sklearn" (upstream runtime, labels only)
    serving_runtime: str = CUSTOM_RUNTIME
    storage_key: str | None = None  # data connection secret, e.g. aws-connection-models
    storage_path: str | None = None  # key prefix in that bucket, e.g. anomaly-detector/v1/
    storage_uri: str | None = None  # alternative: s3://bucket/prefix
    model_version: str | None = None
    deployment_mode: str = RAW  # or Serverless; Standard and Knative are the same modes
    canary_traffic_percent: int | None = 10
    min_replicas: int = 1
    # One: a model with per-entity history (the default) is served from one process's memory
    # (model.artifacts.check_replicas) unless history_secret names a shared store; a row-wise model may scale out.
    max_replicas: int = 1
    # A Secret whose key "url" is the Redis/Valkey URL the replicas keep entity history in (serve --history-url).
    history_secret: str | None = None
    scale_target: int | None = None
    scale_metric: str | None = None  # "concurrency", "rps", "cpu", "memory"
    cpu_request: str = "500m"
    memory_request: str = "512Mi"
    cpu_limit: str = "2"
    memory_limit: str = "1Gi"
    prometheus: bool = True
    logger_url: str | None = None
    service_account: str | None = None
    labels: dict = field(default_factory=dict)
    take_over: bool = False  # take an InferenceService over from ArgoCD/Helm

    def __post_init__(self) -> None:
        self.deployment_mode = canonical_mode(self.deployment_mode)

    def check(self) -> None:
        if len(self.name) > MAX_NAME_LENGTH or not _DNS1035.match(self.name):
            raise ConfigError(
                f"InferenceService name {self.name!r} must be a DNS-1035 label of at most {MAX_NAME_LENGTH} "
                "characters (lowercase letters, digits, '-', starting with a letter): OpenShift AI's limit"
            )
        if self.runtime not in ("custom", "sklearn"):
            raise ConfigError(f"runtime must be 'custom' or 'sklearn', got {self.runtime!r}")
        if self.history_secret and (self.runtime != "custom" or not _DNS1123_SUBDOMAIN.match(self.history_secret)):
            raise ConfigError(
                f"history_secret {self.history_secret!r} must name a Secret (a DNS-1123 subdomain) and needs "
                "runtime 'custom' (the upstream runtime keeps no history)"
            )
        if bool(self.storage_uri) == bool(self.storage_key and self.storage_path):
            raise ConfigError("give either storage_key and storage_path (OpenShift AI data connection) or storage_uri")
        if self.storage_uri and not re.match(r"^(s3|pvc)://[^/]+/.+", self.storage_uri):
            raise ConfigError(
                f"storage_uri must be s3://<bucket>/<path> or pvc://<claim>/<path>, got {self.storage_uri!r}"
            )
        check_canary_percent(self.canary_traffic_percent)
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(
                f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas} and {self.max_replicas}"
            )
        for field_name in ("cpu_request", "memory_request", "cpu_limit", "memory_limit"):
            value = getattr(self, field_name)
            if not _QUANTITY.match(str(value)):
                raise ConfigError(
                    f"{field_name.replace('_', '-')} {value!r} is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 1Gi)"
                )
        self._check_scaling()

    def _check_scaling(self) -> None:
        """The refusals of KServe's webhook, with its words, before anything is sent."""
        allowed = SCALE_METRICS[self.deployment_mode]
        scaler = "an HPA" if self.deployment_mode == RAW else "Knative (KPA)"
        metric = self.scale_metric or allowed[0]
        if metric not in allowed:
            raise ConfigError(
                f"KServe refuses scale metric {metric!r} for {self.deployment_mode} "
                f'("[{metric}] is not a supported metric"): {self.deployment_mode} scales with '
                f"{scaler}, on {' or '.join(allowed)}"
            )
        target = self.scale_target
        if target is None:
            return
        if metric == "cpu" and not 1 <= target <= 100:
            raise ConfigError(
                f'KServe refuses scale target {target} for cpu: "the target utilization percentage '
                'should be a [1-100] integer"'
            )
        if metric == "memory" and target < 1:
            raise ConfigError(
                f'KServe refuses scale target {target} for memory: "the target memory should be greater than 1 MiB"'
            )
        if metric == "rps" and target < 1:
            raise ConfigError(
                f'KServe refuses scale target {target} for rps: "the target for rps should be greater than 1"'
            )

    @property
    def storage_location(self) -> str:
        return self.storage_uri or f"{self.storage_key}:{self.storage_path}"


def _drop_unset(patch: dict, current: dict) -> None:
    """Null (a merge patch's delete) every field of ``current`` that ``patch`` does not set."""
    for key, value in current.items():
        if key not in patch:
            patch[key] = None
        elif isinstance(value, dict) and isinstance(patch[key], dict):
            _drop_unset(patch[key], value)


def build_inference_service(spec: DeploySpec) -> dict:
    """The InferenceService object for ``spec`` (no canary: that is decided at update)."""
    spec.check()
    model: dict = {
        "modelFormat": {"name": "sklearn"}
        if spec.runtime == "sklearn"
        else {"name": CUSTOM_MODEL_FORMAT, "version": "1"},
        "resources": {
            "requests": {"cpu": spec.cpu_request, "memory": spec.memory_request},
            "limits": {"cpu": spec.cpu_limit, "memory": spec.memory_limit},
        },
    }
    if spec.runtime == "custom":
        model["runtime"] = spec.serving_runtime
    if spec.history_secret:  # read from the environment, so the URL's password is in no manifest or argv
        ref = {"secretKeyRef": {"name": spec.history_secret, "key": HISTORY_SECRET_KEY}}
        model["env"] = [{"name": HISTORY_URL_ENV, "valueFrom": ref}]
    if spec.storage_uri:
        model["storageUri"] = spec.storage_uri
    else:
        model["storage"] = {"key": spec.storage_key, "path": spec.storage_path}
    predictor: dict = {"minReplicas": spec.min_replicas, "maxReplicas": spec.max_replicas, "model": model}
    if spec.scale_target is not None:
        predictor["scaleTarget"] = spec.scale_target
    if spec.scale_metric:
        predictor["scaleMetric"] = spec.scale_metric
    if spec.logger_url:
        predictor["logger"] = {"mode": "all", "url": spec.logger_url}
    if spec.service_account:
        predictor["serviceAccountName"] = spec.service_account
    annotations = {MODE_ANNOTATION: spec.deployment_mode}
    if spec.deployment_mode == SERVERLESS:
        # The candidate revision gets its own URL (latest-…): verify checks it, not the split.
        annotations[TAG_ROUTING_ANNOTATION] = "true"
    annotations[OWNED_FIELDS_ANNOTATION] = ",".join(k for k in OWN_PREDICTOR_FIELDS if k in predictor)
    if spec.prometheus:
        annotations["serving.kserve.io/enable-prometheus-scraping"] = "true"
    if spec.model_version:
        annotations[MODEL_VERSION_ANNOTATION] = spec.model_version
    labels = {"app.kubernetes.io/part-of": "anomaly-mlops", "opendatahub.io/dashboard": "true", **spec.labels}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels, "annotations": annotations},
        "spec": {"predictor": predictor},
    }


def storage_of(isvc: dict) -> str | None:
    model = isvc.get("spec", {}).get("predictor", {}).get("model", {})
    if model.get("storageUri"):
        return model["storageUri"]
    storage = model.get("storage") or {}
    return f"{storage.get('key')}:{storage.get('path')}" if storage else None


def _storage_fields(location: str) -> dict:
    """Inverse of storage_of, as a merge patch for spec.predictor.model."""
    if "://" in location:
        return {"storageUri": location, "storage": None}
    key, _, path = location.partition(":")
    return {"storage": {"key": key, "path": path}, "storageUri": None}


def owned_fields(isvc: dict) -> set[str]:
    """Predictor fields this step set on ``isvc``. Without the record (an older deploy): our
    kinds of field that are there, but the logger, which TrustyAI writes."""
    recorded = ((isvc.get("metadata") or {}).get("annotations") or {}).get(OWNED_FIELDS_ANNOTATION)
    if recorded is not None:
        return {k for k in recorded.split(",") if k}
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    return {k for k in predictor if k in OWN_PREDICTOR_FIELDS and k != "logger"}


def _foreign_fields(isvc: dict) -> set[str]:
    """Predictor fields of our kinds that someone else set (TrustyAI's logger)."""
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    return {k for k in predictor if k in OWN_PREDICTOR_FIELDS and k not in owned_fields(isvc)} - {
        "canaryTrafficPercent"
    }


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch, as the API server applies it."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def candidate_url(isvc: dict) -> str | None:
    """The URL that reaches the revision just deployed, alone: during a Serverless canary the
    ``latest`` tag's URL (only with tag routing), else the service URL. None when a canary has
    no such URL: the service URL would send most checks to the previous model."""
    predictor = (isvc.get("spec") or {}).get("predictor") or {}
    status = isvc.get("status") or {}
    canary = predictor.get("canaryTrafficPercent")
    if mode_of(isvc) != SERVERLESS or canary is None or canary >= 100:
        return status.get("url")
    for target in ((status.get("components") or {}).get("predictor") or {}).get("traffic") or []:
        if target.get("tag") == "latest" and target.get("url"):
            return target["url"]
    return None


def _is_ready(isvc: dict) -> bool:
    status = isvc.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {}).get("status") == "True"
    generation = isvc.get("metadata", {}).get("generation", 0)
    return ready and status.get("observedGeneration", -1) >= generation


@dataclass
class DeployResult:
    name: str
    namespace: str
    action: str  # created, updated, unchanged
    canary: bool
    url: str | None = None
    revision: str | None = None
    previous_storage: str | None = None
    candidate_url: str | None = None  # reaches the new revision alone (verify checks this one)


def _api_error(exc, action: str, name: str, namespace: str) -> AnomalyMLOpsError:
    from kubernetes.client.exceptions import ApiException

    if not isinstance(exc, ApiException):
        return DeployError(f"cannot reach the Kubernetes API server to {action} {namespace}/{name}: {exc}")
    hint = {
        401: "the token is missing or expired (in a pod: the service account token; locally: oc login)",
        403: f"the service account may not {action} inferenceservices in {namespace}; apply manifests/rbac",
        404: "not found: is KServe installed (the InferenceService CRD) and does the namespace exist?",
    }.get(exc.status) or _status_message(exc.body)
    return DeployError(
        f"Kubernetes API refused to {action} InferenceService {namespace}/{name}: {exc.status} {exc.reason}: {hint}"
    )


def _status_message(body) -> str:
    """The API server's own message from a Kubernetes Status body, redacted. Any other body
    (a proxy's page, an echo of our request headers) is not shown: it may hold the token."""
    from anomaly_mlops.redact import redact

    try:
        status = json.loads(body)
    except (TypeError, ValueError):
        return "(the response was not a Kubernetes Status; body not shown)"
    if not isinstance(status, dict) or status.get("kind") != "Status":
        return "(the response was not a Kubernetes Status; body not shown)"
    return redact(str(status.get("message", "")))[:300]


class InferenceServiceClient:
    """Thin wrapper over CustomObjectsApi with the semantics above."""

    def __init__(self, api=None, max_conflict_retries: int = 5, request_timeout_s: float = 30.0):
        from kubernetes import client

        self.api = api or load_custom_objects_api()
        self.core_api = client.CoreV1Api(self.api.api_client)  # events: fail fast on terminal ones
        self._events_readable = True
        self.max_conflict_retries = max_conflict_retries
        # (connect, read): a hung API server becomes an error instead of a stuck step.
        self.timeout = (min(10.0, request_timeout_s), request_timeout_s)

    def get(self, name: str, namespace: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status == 404 and _is_object_not_found(exc):
                return None
            raise _api_error(exc, "get", name, namespace) from exc
        except Exception as exc:
            raise _api_error(exc, "get", name, namespace) from exc

    def _patch(self, name: str, namespace: str, body: dict) -> dict:
        return self.api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=self.timeout
        )

    def apply(self, spec: DeploySpec) -> DeployResult:
        """Create, or patch with canary/rollback bookkeeping; retries on 409."""
        from kubernetes.client.exceptions import ApiException

        desired = build_inference_service(spec)
        for attempt in range(1, self.max_conflict_retries + 1):
            current = self.get(spec.name, spec.namespace)
            try:
                if current is None:
                    self.api.create_namespaced_custom_object(
                        GROUP, VERSION, spec.namespace, PLURAL, desired, _request_timeout=self.timeout
                    )
                    log.info(
                        "created InferenceService %s/%s (%s, %s)",
                        spec.namespace,
                        spec.name,
                        spec.deployment_mode,
                        spec.storage_location,
                    )
                    return DeployResult(spec.name, spec.namespace, "created", canary=False)
                _check_owner_and_mode(spec, current)
                return self._update(spec, desired, current)
            except ApiException as exc:
                if exc.status != 409:
                    raise _api_error(exc, "create or patch", spec.name, spec.namespace) from exc
                log.warning(
                    "conflict writing %s/%s (attempt %d/%d); reading it again",
                    spec.namespace,
                    spec.name,
                    attempt,
                    self.max_conflict_retries,
                )
                time.sleep(min(0.1 * 2**attempt, 2.0))
            except AnomalyMLOpsError:
                raise
            except Exception as exc:
                raise _api_error(exc, "create or patch", spec.name, spec.namespace) from exc
        raise DeployError(
            f"gave up on {spec.namespace}/{spec.name} after {self.max_conflict_retries} conflicting writes"
        )

    def _update(self, spec: DeploySpec, desired: dict, current: dict) -> DeployResult:
        previous = storage_of(current)
        current_predictor = current.get("spec", {}).get("predictor", {})
        changed_model = previous != spec.storage_location or "containers" in current_predictor
        live = _is_ready(current)
        patch = copy.deepcopy(desired)
        patch["metadata"].pop("name")
        patch["metadata"].pop("namespace")
        patch["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        annotations = patch["metadata"]["annotations"]
        current_annotations = current["metadata"].get("annotations", {})
        predictor_patch = patch["spec"]["predictor"]
        # Remove what we set before and no longer set; other controllers' fields stay.
        for key in owned_fields(current) - set(predictor_patch) - {"canaryTrafficPercent"}:
            if key in current_predictor:
                predictor_patch[key] = None
        # A custom-container predictor (the Self-Healing Platform's) becomes a model one:
        # KServe refuses a predictor with both forms.
        for key in ("containers", "volumes"):
            if key in current_predictor:
                predictor_patch[key] = None
        # In the model (ours whole), at any depth: storage <-> storageUri, and a runtime switch's
        # `runtime` and modelFormat.version (left behind, they pin the model to the old runtime).
        _drop_unset(predictor_patch["model"], current_predictor.get("model") or {})
        canary = False
        if changed_model:
            foreign = _foreign_fields(current)
            kept = {k: v for k, v in current_predictor.items() if k != "canaryTrafficPercent" and k not in foreign}
            annotations[PREVIOUS_STORAGE_ANNOTATION] = previous
            annotations[PREVIOUS_PREDICTOR_ANNOTATION] = json.dumps(kept, sort_keys=True, separators=(",", ":"))
            annotations[PREVIOUS_VERSION_ANNOTATION] = current_annotations.get(MODEL_VERSION_ANNOTATION)
        else:
            for key in (PREVIOUS_STORAGE_ANNOTATION, PREVIOUS_PREDICTOR_ANNOTATION, PREVIOUS_VERSION_ANNOTATION):
                annotations[key] = current_annotations.get(key)
        if spec.take_over:
            evidence = _foreign_owner(current)
            if evidence:
                annotations[TAKEN_OVER_ANNOTATION] = evidence
                for kind, key, _ in OWNER_MARKS:
                    if kind == "annotation" and key in current_annotations:
                        annotations[key] = None
                    elif kind == "label" and key in current["metadata"].get("labels", {}):
                        patch["metadata"]["labels"][key] = None
        if (
            spec.deployment_mode == SERVERLESS
            and changed_model
            and live
            and spec.canary_traffic_percent is not None
            and spec.canary_traffic_percent < 100
        ):
            predictor_patch["canaryTrafficPercent"] = spec.canary_traffic_percent
            canary = True
        else:
            predictor_patch["canaryTrafficPercent"] = None
        if _same(current, desired, canary):
            log.info("InferenceService %s/%s already serves %s; nothing to change", spec.namespace, spec.name, previous)
            return DeployResult(spec.name, spec.namespace, "unchanged", canary=False, previous_storage=previous)
        self._patch(spec.name, spec.namespace, patch)
        log.info(
            "updated InferenceService %s/%s: %s -> %s%s",
            spec.namespace,
            spec.name,
            previous or "a custom container predictor",
            spec.storage_location,
            f" as a {spec.canary_traffic_percent}% canary" if canary else "",
        )
        return DeployResult(spec.name, spec.namespace, "updated", canary=canary, previous_storage=previous)

    def wait_ready(self, name: str, namespace: str, timeout_s: float = 600, poll_s: float = 2.0) -> DeployResult:
        deadline = time.monotonic() + timeout_s
        last = "no status yet"
        while True:
            isvc = self.get(name, namespace)
            if isvc is None:
                raise DeployError(f"InferenceService {namespace}/{name} disappeared while waiting for it")
            terminal = _terminal_failure(isvc) or (None if _is_ready(isvc) else self._terminal_event(isvc))
            if terminal:
                raise DeployError(f"InferenceService {namespace}/{name} cannot become ready: {terminal}")
            if _is_ready(isvc):
                status = isvc.get("status", {})
                predictor = status.get("components", {}).get("predictor", {})
                result = DeployResult(
                    name,
                    namespace,
                    "ready",
                    canary=False,
                    url=status.get("url"),
                    revision=predictor.get("latestReadyRevision") or predictor.get("latestCreatedRevision"),
                    candidate_url=candidate_url(isvc),
                )
                log.info(
                    "InferenceService %s/%s is ready at %s (revision %s)", namespace, name, result.url, result.revision
                )
                return result
            last = _describe_status(isvc)
            if time.monotonic() >= deadline:
                raise DeployError(f"InferenceService {namespace}/{name} not ready after {timeout_s:.0f}s: {last}")
            log.info("waiting for %s/%s: %s", namespace, name, last)
            time.sleep(poll_s)

    def _terminal_event(self, isvc: dict) -> str | None:
        """A warning event no wait mends (ServerlessModeRejected carries no condition). Events are
        a hint: without the right to list them the wait goes on, said once."""
        if not self._events_readable:
            return None
        meta = isvc.get("metadata", {})
        try:
            events = self.core_api.list_namespaced_event(
                meta.get("namespace"),
                field_selector=f"involvedObject.kind=InferenceService,involvedObject.name={meta.get('name')}",
                _request_timeout=self.timeout,
            )
        except Exception as exc:  # any failure only turns the hint off
            self._events_readable = False
            log.warning(
                "cannot list events of %s/%s (%s); waiting on conditions only",
                meta.get("namespace"),
                meta.get("name"),
                getattr(exc, "status", type(exc).__name__),
            )
            return None
        for event in events.items or []:
            involved = event.involved_object
            if event.reason in TERMINAL_EVENT_REASONS and (involved.uid or meta.get("uid")) == meta.get("uid"):
                return f"{event.reason}: {event.message or ''}".strip()
        return None

    def promote(self, name: str, namespace: str) -> None:
        """All traffic to the latest revision (Serverless); a no-op for RawDeployment."""
        self._patch_with_retry(
            name, namespace, lambda isvc: {"spec": {"predictor": {"canaryTrafficPercent": None}}}, "promote"
        )
        log.info("promoted %s/%s: 100%% of traffic to the latest revision", namespace, name)

    def rollback(self, name: str, namespace: str) -> str:
        """Serverless: pin traffic to the previous revision. RawDeployment: restore the previous
        predictor and model version. Returns what was done; nothing to undo is an error."""

        def body(isvc: dict) -> dict:
            where = f"{namespace}/{name}"
            annotations = isvc["metadata"].get("annotations", {})
            predictor = isvc.get("spec", {}).get("predictor", {})
            mode = mode_of(isvc)
            if mode == SERVERLESS:
                if not annotations.get(PREVIOUS_STORAGE_ANNOTATION) and not annotations.get(
                    PREVIOUS_PREDICTOR_ANNOTATION
                ):
                    # KServe sends all traffic to the only revision whatever the percent says.
                    raise DeployError(f"{where} has served one model only: nothing to roll back to")
                if predictor.get("canaryTrafficPercent") == 0:
                    raise DeployError(f"{where}: traffic is already pinned to the previous revision; nothing changed")
                return {"spec": {"predictor": {"canaryTrafficPercent": 0}}}
            if mode != RAW:
                raise DeployError(
                    f"cannot roll back {where}: its deployment mode is {mode or 'not recorded (no annotation, no status)'}"
                )
            kept = annotations.get(PREVIOUS_PREDICTOR_ANNOTATION)
            previous = annotations.get(PREVIOUS_STORAGE_ANNOTATION)
            if not kept and not previous:
                raise DeployError(f"{where} has no {PREVIOUS_PREDICTOR_ANNOTATION}: nothing to roll back to")
            forget = {
                PREVIOUS_STORAGE_ANNOTATION: None,
                PREVIOUS_PREDICTOR_ANNOTATION: None,
                PREVIOUS_VERSION_ANNOTATION: None,
                MODEL_VERSION_ANNOTATION: annotations.get(PREVIOUS_VERSION_ANNOTATION),
            }
            if not kept:  # written by an older version of this step: the storage path only
                restored = {"model": _storage_fields(previous)}
            else:
                restored = json.loads(kept)
                # Ours that the previous predictor lacks go; other controllers' fields stay.
                for key in owned_fields(isvc) - set(restored):
                    if key in predictor:
                        restored[key] = None
                if isinstance(restored.get("model"), dict):
                    _drop_unset(restored["model"], predictor.get("model") or {})
                forget[OWNED_FIELDS_ANNOTATION] = ",".join(
                    k for k in OWN_PREDICTOR_FIELDS if restored.get(k) is not None
                )
            if merge_patch(predictor, restored) == predictor:
                raise DeployError(f"{where} already serves the previous predictor; nothing changed")
            return {"metadata": {"annotations": forget}, "spec": {"predictor": restored}}

        patch = self._patch_with_retry(name, namespace, body, "roll back")
        predictor = patch["spec"]["predictor"]
        if "canaryTrafficPercent" in predictor and len(predictor) == 1:
            done = "pinned traffic to the previous revision"
        elif predictor.get("model"):
            done = f"restored the previous predictor (storage {storage_of({'spec': patch['spec']})})"
        else:
            done = "restored the previous predictor (custom containers)"
        log.warning("rolled back %s/%s: %s", namespace, name, done)
        return done

    def _patch_with_retry(self, name: str, namespace: str, make_body, action: str) -> dict:
        from kubernetes.client.exceptions import ApiException

        for attempt in range(1, self.max_conflict_retries + 1):
            isvc = self.get(name, namespace)
            if isvc is None:
                raise DeployError(f"cannot {action} {namespace}/{name}: it does not exist")
            body = make_body(isvc)
            body.setdefault("metadata", {})["resourceVersion"] = isvc["metadata"]["resourceVersion"]
            try:
                self._patch(name, namespace, body)
                return body
            except ApiException as exc:
                if exc.status != 409:
                    raise _api_error(exc, action, name, namespace) from exc
                time.sleep(min(0.1 * 2**attempt, 2.0))
        raise DeployError(f"gave up trying to {action} {namespace}/{name} after {self.max_conflict_retries} conflicts")


def _foreign_owner(isvc: dict) -> str | None:
    """Which other tool tracks this object, as evidence for a message; None when none does."""
    metadata = isvc.get("metadata", {})
    found = []
    for kind, key, tool in OWNER_MARKS:
        value = metadata.get("annotations" if kind == "annotation" else "labels", {}).get(key)
        if value and not (key == "app.kubernetes.io/managed-by" and value != "Helm"):
            found.append(f"{tool}: {kind} {key}={value}")
    return "; ".join(found) or None


def _check_owner_and_mode(spec: DeploySpec, current: dict) -> None:
    """Refusals before any write: another owner (unless take_over), a mode change."""
    where = f"{spec.namespace}/{spec.name}"
    evidence = _foreign_owner(current)
    if evidence and not spec.take_over:
        raise DeployError(
            f"InferenceService {where} is managed by another tool ({evidence}), which would revert "
            "our changes; take it out of that tool (docs/reference/self-healing-platform.md) "
            "and pass --take-over"
        )
    # Without the annotation the cluster's default mode applies; status names it once reconciled.
    mode = mode_of(current)
    if mode and mode != spec.deployment_mode:
        raise DeployError(
            f'InferenceService {where} runs as {mode}; KServe refuses the change ("update rejected: '
            f"deploymentMode cannot be changed from '{mode}' to '{spec.deployment_mode}'\"): deploy with "
            f"--mode {mode}, or delete it and deploy again"
        )


def _same(current: dict, desired: dict, canary: bool) -> bool:
    """Whether ``current`` already is ``desired`` in everything this step owns (the mode in
    either spelling; other controllers' fields ignored)."""
    cur_meta = current.get("metadata", {})
    want_meta = desired["metadata"]
    annotations_ok = mode_of(current) == mode_of(desired) and all(
        cur_meta.get("annotations", {}).get(k) == v for k, v in want_meta["annotations"].items() if k != MODE_ANNOTATION
    )
    labels_ok = all(cur_meta.get("labels", {}).get(k) == v for k, v in want_meta["labels"].items())
    cur_predictor = current.get("spec", {}).get("predictor", {})
    ours = owned_fields(current) | set(desired["spec"]["predictor"])
    cur_ours = {k: v for k, v in cur_predictor.items() if k in ours and k != "canaryTrafficPercent"}
    return (
        annotations_ok
        and labels_ok
        and not canary
        and cur_predictor.get("canaryTrafficPercent") is None
        and "containers" not in cur_predictor
        and cur_ours == desired["spec"]["predictor"]
    )


def _is_object_not_found(exc) -> bool:
    import json

    try:
        body = json.loads(exc.body)
    except (TypeError, ValueError):
        return False
    return body.get("reason") == "NotFound" and body.get("details", {}).get("kind") == PLURAL


def _terminal_failure(isvc: dict) -> str | None:
    status = isvc.get("status") or {}
    generation = isvc.get("metadata", {}).get("generation", 0)
    if status.get("observedGeneration", -1) < generation:
        return None  # status describes an older spec
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("reason") in TERMINAL_REASONS:
            return f"{condition['type']}: {condition['reason']}: {condition.get('message', '')}".strip()
    failure = (status.get("modelStatus") or {}).get("lastFailureInfo") or {}
    if failure.get("reason") in TERMINAL_REASONS:
        return f"{failure['reason']}: {failure.get('message', '')}".strip()
    return None


def _describe_status(isvc: dict) -> str:
    status = isvc.get("status") or {}
    generation = isvc.get("metadata", {}).get("generation")
    if status.get("observedGeneration", -1) < (generation or 0):
        return f"controller has not seen generation {generation} yet"
    parts = [
        f"{c.get('type')}={c.get('status')}" + (f" ({c['reason']})" if c.get("reason") else "")
        for c in status.get("conditions") or []
    ]
    return ", ".join(parts) or "no conditions yet"


POD_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def current_namespace(explicit: str | None = None) -> str:
    """The given namespace, else the pod's own (KFP and Tekton steps run in the project)."""
    if explicit:
        return explicit
    try:
        with open(POD_NAMESPACE_FILE) as handle:
            return handle.read().strip()
    except OSError as exc:
        raise ConfigError("no namespace given and not running in a pod: pass --namespace") from exc


def load_custom_objects_api(kubeconfig: str | None = None, context: str | None = None):
    """In-cluster config inside a pod, else kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config(config_file=kubeconfig, context=context)
        except Exception as exc:
            raise ConfigError(
                f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({exc}); run 'oc login' or set KUBECONFIG"
            ) from exc
    return client.CustomObjectsApi()


def deploy(
    spec: DeploySpec, client: InferenceServiceClient | None = None, timeout_s: float = 600, poll_s: float = 2.0
) -> DeployResult:
    """Apply, wait for Ready; on a failed rollout of a live service, roll back and raise."""
    spec.check()
    client = client or InferenceServiceClient()
    applied = client.apply(spec)
    try:
        ready = client.wait_ready(spec.name, spec.namespace, timeout_s, poll_s)
        if applied.canary and ready.candidate_url is None:
            raise DeployError(
                f"{spec.namespace}/{spec.name}: the canary revision has no URL of its own (annotation "
                f"{TAG_ROUTING_ANNOTATION} missing?); the service URL would verify mostly the previous model"
            )
    except DeployError:
        if applied.action == "updated":
            client.rollback(spec.name, spec.namespace)
        raise
    ready.action, ready.canary, ready.previous_storage = applied.action, applied.canary, applied.previous_storage
    return ready
