"""A small HTTP fake of the Kubernetes API server for InferenceServices.

It keeps the semantics our deploy logic relies on: resourceVersion on every write (status
writes included) and 409 Conflict when a write carries a stale one, 409 AlreadyExists,
generation bumped only by spec changes, JSON merge patch (RFC 7386) and 415 for the
strategic merge patch custom resources do not support, 404 with the API server's Status
bodies (object vs. missing CRD), 401 without the bearer token, 403 for namespaces the
caller may not write. Every write is validated as the cluster would: 422 with field paths
against the real InferenceService CRD schema (crd_schema.py), then KServe's validating
webhook rules (400): a predictor is a model or containers, not both; scale metrics by
deployment mode; deploymentMode never changes. With ``kserve_017`` the mutating webhook of
KServe 0.17+ (OpenShift AI 3.4+) renames RawDeployment to Standard and Serverless to Knative
before anything is stored (inference_service_defaults.go).

A scripted controller writes status (deploymentMode included) when the object is read, the
way a KServe controller would reconcile between polls. Its Serverless traffic follows KServe's
ksvc_reconciler.go: with ``canaryTrafficPercent`` and a rolled-out revision, the latest
revision gets that share and the last rolled-out one (tag ``prev``, with its own URL) the rest;
the latest gets the tag ``latest`` and its own URL only with the annotation
``serving.kserve.io/enable-tag-routing: "true"``. Without Knative (``knative=False``) a
Serverless InferenceService gets no condition, only a ``ServerlessModeRejected`` event
(controller.go), listed under /api/v1/namespaces/<ns>/events.

ApprovalTasks (OpenShift Pipelines' manual approval gate, openshift-pipelines.org/v1alpha1)
are listed by label selector from ``approval_tasks``; without the gate installed
(``approval_gate=False``) the API server answers 404 for the resource.
"""

from __future__ import annotations

import copy
import re
import threading

import crd_schema
from fake_http import JsonFakeServer

EVENTS_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/events(?:\?(.*))?$")
APPROVALS_PATH = re.compile(r"^/apis/openshift-pipelines\.org/v1alpha1/namespaces/([^/]+)/approvaltasks/?(?:\?(.*))?$")
PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/?]+))?/?(?:\?.*)?$")


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


KNATIVE_MODES = ("Serverless", "Knative")


class ready_controller:  # noqa: N801 - used like the factory functions beside it
    """Marks the current generation Ready after N reads; revisions count generations.

    ``urls`` maps "service" and revision names to the URLs status reports (default: made-up
    hosts), so a test can put real servers behind them."""

    def __init__(self, reads_until_ready: int = 1, default_mode: str = "Serverless", knative: bool = True):
        self.reads_until_ready = reads_until_ready
        self.default_mode = default_mode
        self.knative = knative
        self.urls: dict[str, str] = {}
        self.rolled_out: dict[tuple[str, str], str] = {}  # (namespace, name) -> last rolled-out revision
        self.events: list[dict] = []

    def __call__(self, obj: dict, reads: int) -> dict | None:
        meta = obj["metadata"]
        name, namespace, generation = meta["name"], meta["namespace"], meta["generation"]
        annotations = meta.get("annotations") or {}
        mode = annotations.get("serving.kserve.io/deploymentMode", self.default_mode)
        if mode in KNATIVE_MODES and not self.knative:
            event = {
                "metadata": {"name": f"{name}.{generation}", "namespace": namespace},
                "involvedObject": {
                    "kind": "InferenceService",
                    "name": name,
                    "namespace": namespace,
                    "uid": meta["uid"],
                },
                "reason": "ServerlessModeRejected",
                "message": "It is not possible to use Knative deployment mode when Knative Services are not available",
                "type": "Warning",
            }
            if event not in self.events:
                self.events.append(event)
            return {"deploymentMode": mode}  # updateStatus: no condition
        if reads < self.reads_until_ready:
            return None
        latest = f"{name}-predictor-{generation:05d}"
        service_url = self.urls.get("service", f"https://{name}-{namespace}.apps.example.test")
        predictor_status = {"latestCreatedRevision": latest, "latestReadyRevision": latest}
        if mode in KNATIVE_MODES:
            predictor_status["traffic"] = self._traffic(obj, latest)
        return {
            "observedGeneration": generation,
            "deploymentMode": mode,
            "url": service_url,
            "conditions": [{"type": "PredictorReady", "status": "True"}, {"type": "Ready", "status": "True"}],
            "components": {"predictor": predictor_status},
        }

    def _traffic(self, obj: dict, latest: str) -> list[dict]:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        tagged = (meta.get("annotations") or {}).get("serving.kserve.io/enable-tag-routing") == "true"
        canary = obj["spec"]["predictor"].get("canaryTrafficPercent")
        previous = self.rolled_out.get(key)
        latest_target = {"latestRevision": True, "revisionName": latest}
        if tagged:
            latest_target.update(tag="latest", url=self.urls.get(latest, f"http://latest-{meta['name']}.example.test"))
        if canary is not None and previous:
            targets = [{**latest_target, "percent": canary}]
            if canary < 100:
                url = self.urls.get(previous, f"http://prev-{meta['name']}.example.test")
                targets.append(
                    {
                        "revisionName": previous,
                        "latestRevision": False,
                        "percent": 100 - canary,
                        "tag": "prev",
                        "url": url,
                    }
                )
            return targets
        self.rolled_out[key] = latest
        return [{**latest_target, "percent": 100}]

    def split(self, namespace: str, name: str, obj: dict) -> list[tuple[str, int]]:
        """(revision, percent) of the service URL's traffic now."""
        status = (obj.get("status") or {}).get("components", {}).get("predictor", {})
        return [(t["revisionName"], t["percent"]) for t in status.get("traffic", [])]


def failing_controller(reason: str):
    def reconcile(obj: dict, reads: int) -> dict:
        return {
            "observedGeneration": obj["metadata"]["generation"],
            "conditions": [
                {"type": "PredictorReady", "status": "False", "reason": reason, "message": "scripted"},
                {"type": "Ready", "status": "False", "reason": reason},
            ],
            "modelStatus": {"transitionStatus": "InvalidSpec", "lastFailureInfo": {"reason": reason}},
        }

    return reconcile


class FakeKubeAPI(JsonFakeServer):
    def __init__(self, token: str = "test-token"):
        self.token = token
        self.objects: dict[tuple[str, str], dict] = {}
        self.reads: dict[tuple[str, str], int] = {}
        self.forbidden_namespaces: set[str] = set()
        self.crd_installed = True
        self.controller = ready_controller()
        self.inject_conflicts = 0  # the next N writes meet a concurrent writer
        self.requests: list[tuple[str, str, dict | None]] = []
        self.delay_s = 0.0  # answer this late (a hung API server)
        self.kserve_017 = False  # the mutating webhook renames RawDeployment/Serverless
        self.approval_tasks: list[dict] = []  # ApprovalTask objects, listed by label selector
        self.approval_gate = True  # the manual approval gate's CRD is installed
        self._rv = 1000
        self._lock = threading.Lock()
        super().__init__()

    def api(self):
        from kubernetes import client

        configuration = client.Configuration(
            host=self.url, api_key={"authorization": self.token}, api_key_prefix={"authorization": "Bearer"}
        )
        return client.CustomObjectsApi(client.ApiClient(configuration))

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    # ------------------------------------------------------------------ request handling

    def handle(self, method: str, path: str, headers, body: dict | None) -> tuple[int, dict]:
        self.requests.append((method, path, body))
        if self.delay_s:
            import time

            time.sleep(self.delay_s)
        if headers.get("Authorization") != f"Bearer {self.token}":
            return 401, status(401, "Unauthorized", "Unauthorized")
        events = EVENTS_PATH.match(path)
        if events and method == "GET":
            return self._events(events.group(1), events.group(2) or "")
        approvals = APPROVALS_PATH.match(path)
        if approvals and method == "GET" and self.approval_gate:
            return self._approval_tasks(approvals.group(1), approvals.group(2) or "")
        match = PATH.match(path)
        if not self.crd_installed or not match:
            return 404, status(404, "NotFound", "the server could not find the requested resource")
        namespace, name = match.group(1), match.group(2)
        if namespace in self.forbidden_namespaces:
            verb = {"GET": "get", "POST": "create", "PATCH": "patch"}[method]
            return 403, status(
                403,
                "Forbidden",
                f'inferenceservices.serving.kserve.io "{name or ""}" is forbidden: User '
                f'"system:serviceaccount:{namespace}:pipeline-runner-dspa" cannot {verb} resource '
                f'"inferenceservices" in API group "serving.kserve.io" in the namespace "{namespace}"',
            )
        with self._lock:
            if method == "GET" and name:
                return self._get(namespace, name)
            if method == "POST" and not name:
                return self._create(namespace, body)
            if method == "PATCH" and name:
                return self._patch(namespace, name, body, headers.get("Content-Type", ""))
        return 405, status(405, "MethodNotAllowed", f"{method} not supported by the fake")

    def _events(self, namespace: str, query: str):
        from urllib.parse import parse_qs

        selector = dict(
            part.split("=", 1) for part in (parse_qs(query).get("fieldSelector") or [""])[0].split(",") if "=" in part
        )
        items = []
        for event in getattr(self.controller, "events", []):
            involved = event["involvedObject"]
            fields = {f"involvedObject.{k}": v for k, v in involved.items()}
            if event["metadata"]["namespace"] == namespace and all(fields.get(k) == v for k, v in selector.items()):
                items.append(event)
        return 200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items}

    def _approval_tasks(self, namespace: str, query: str):
        from urllib.parse import parse_qs

        wanted = (parse_qs(query).get("labelSelector") or [""])[0]
        selector = dict(part.split("=", 1) for part in wanted.split(",") if "=" in part)
        items = [
            copy.deepcopy(task)
            for task in self.approval_tasks
            if task["metadata"]["namespace"] == namespace
            and all(task["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]
        return 200, {"apiVersion": "openshift-pipelines.org/v1alpha1", "kind": "ApprovalTaskList", "metadata": {},
                     "items": items}  # fmt: skip

    def _get(self, namespace, name):
        key = (namespace, name)
        if key not in self.objects:
            return 404, not_found(name)
        self.reads[key] = self.reads.get(key, 0) + 1
        obj = self.objects[key]
        new_status = self.controller(obj, self.reads[key]) if self.controller else None
        if new_status is not None and new_status != obj.get("status"):
            obj["status"] = new_status
            obj["metadata"]["resourceVersion"] = self._next_rv()
        return 200, copy.deepcopy(obj)

    def _create(self, namespace, body):
        name = body["metadata"]["name"]
        key = (namespace, name)
        if key in self.objects:
            return 409, status(409, "AlreadyExists", f'inferenceservices.serving.kserve.io "{name}" already exists')
        if self.inject_conflicts:
            # Someone else creates it first.
            self.inject_conflicts -= 1
            self.objects[key] = self._new(namespace, body)
            return 409, status(409, "AlreadyExists", f'inferenceservices.serving.kserve.io "{name}" already exists')
        body = self._mutate(body)
        refused = admission(body)
        if refused:
            return refused
        obj = self._new(namespace, body)
        self.objects[key] = obj
        return 201, copy.deepcopy(obj)

    def _mutate(self, obj: dict) -> dict:
        """KServe's mutating webhook: 0.17+ normalizes the deprecated mode names."""
        annotations = (obj.get("metadata") or {}).get("annotations") or {}
        mode = annotations.get("serving.kserve.io/deploymentMode")
        if self.kserve_017 and mode in ("RawDeployment", "Serverless"):
            obj = copy.deepcopy(obj)
            obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = {
                "RawDeployment": "Standard",
                "Serverless": "Knative",
            }[mode]
        return obj

    def _new(self, namespace, body):
        obj = copy.deepcopy(body)
        obj.pop("status", None)
        meta = obj["metadata"]
        meta.update(namespace=namespace, generation=1, resourceVersion=self._next_rv(), uid=f"uid-{self._rv}")
        self.reads[(namespace, meta["name"])] = 0
        return obj

    def _patch(self, namespace, name, body, content_type):
        if content_type.split(";")[0].strip() != "application/merge-patch+json":
            return 415, status(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            )
        key = (namespace, name)
        if key not in self.objects:
            return 404, not_found(name)
        current = self.objects[key]
        if self.inject_conflicts:
            self.inject_conflicts -= 1
            current["metadata"]["resourceVersion"] = self._next_rv()  # a concurrent writer got there first
        wanted_rv = (body.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and wanted_rv != current["metadata"]["resourceVersion"]:
            return 409, status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on inferenceservices.serving.kserve.io "{name}": '
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        patched = self._mutate(merge_patch(current, body))
        refused = admission(patched, current)
        if refused:
            return refused
        patched["metadata"]["resourceVersion"] = self._next_rv()
        if patched.get("spec") != current.get("spec"):
            patched["metadata"]["generation"] = current["metadata"]["generation"] + 1
            self.reads[key] = 0
        patched["status"] = current.get("status", {})
        self.objects[key] = patched
        return 200, copy.deepcopy(patched)


def admission(obj: dict, old: dict | None = None) -> tuple[int, dict] | None:
    """What the API server and KServe's validating webhook refuse, in that order."""
    if crd_schema.available():
        problems = crd_schema.errors(obj)
        if problems:
            name = obj.get("metadata", {}).get("name", "")
            body = status(
                422, "Invalid", f'InferenceService.serving.kserve.io "{name}" is invalid: ' + "; ".join(problems[:5])
            )
            body["details"] = {
                "name": name,
                "group": "serving.kserve.io",
                "kind": "InferenceService",
                "causes": [{"field": p.split(":", 1)[0], "message": p} for p in problems[:5]],
            }
            return 422, body
    reason = webhook_reason(obj, old)
    if reason:
        return 400, status(
            400,
            "BadRequest",
            f'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request: {reason}',
        )
    return None


def webhook_reason(obj: dict, old: dict | None) -> str | None:
    """KServe's validation (pkg/apis/serving/v1beta1/inference_service_validation.go)."""
    predictor = (obj.get("spec") or {}).get("predictor") or {}
    if predictor.get("model") and predictor.get("containers"):
        return "exactly one of [model, containers] may be set in the predictor"
    mode = (obj.get("metadata", {}).get("annotations") or {}).get("serving.kserve.io/deploymentMode")
    recorded = ((old or {}).get("status") or {}).get("deploymentMode")
    if recorded and mode and mode != recorded:
        return f"update rejected: deploymentMode cannot be changed from '{recorded}' to '{mode}'"
    raw = mode in ("RawDeployment", "Standard")
    metric = predictor.get("scaleMetric") or ("cpu" if raw else "concurrency")
    if metric not in (("cpu", "memory") if raw else ("concurrency", "rps")):
        return f"[{metric}] is not a supported metric"
    target = predictor.get("scaleTarget")
    if target is not None:
        if raw and metric == "cpu" and not 1 <= target <= 100:
            return "the target utilization percentage should be a [1-100] integer"
        if raw and metric == "memory" and target < 1:
            return "the target memory should be greater than 1 MiB"
        if not raw and metric == "rps" and target < 1:
            return "the target for rps should be greater than 1"
    return None


def status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
        "details": {},
    }


def not_found(name: str) -> dict:
    body = status(404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found')
    body["details"] = {"name": name, "group": "serving.kserve.io", "kind": "inferenceservices"}
    return body
