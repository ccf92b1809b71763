"""The TrustyAI service's REST API as far as steps/trustyai.py uses it, with the rules the
service's own validators apply (trustyai-explainability 8c01552e, read from the Java source:
../shared/schemas/trustyai/8c01552e/TRUSTYAI-API.md):

- ``POST /data/upload``: ``model_name`` required; ``data_tag`` must not start with
  ``_trustyai`` (400); the request needs at least one input and the response its outputs
  ("No output payload specified in request", 400); every tensor's shape matches its data and
  all tensors hold the same rows; answers text "<n> datapoints successfully added to <m> data.";
- ``GET /info/tags``: ``{model: {tag: rows}}``;
- ``POST /metrics/drift/<metric>/request``: ``modelId`` must name a model with data,
  ``referenceTag`` must be one of its tags and not ``_trustyai``-prefixed, ``batchSize`` > 0,
  ``fitColumns`` its columns; fields outside the request class refused; answers
  ``{"requestId", "timestamp"}``; ``GET <root>/requests`` lists them; ``DELETE <root>/request``
  with ``{"requestId"}`` answers text "Removed", or 404.
"""

from __future__ import annotations

import threading
import uuid

from fake_http import JsonFakeServer

DRIFT_FIELDS = {
    "modelId", "referenceTag", "requestName", "batchSize", "thresholdDelta", "fitColumns", "metricName", "@type",
}  # fmt: skip
PER_METRIC = {"meanshift": {"fitting"}, "kstest": set(), "approxkstest": {"epsilon", "sketchFitting"},
              "fouriermmd": {"parameters", "gamma", "fitting"}}  # fmt: skip


class FakeTrustyAI(JsonFakeServer):
    def __init__(self, token: str | None = None):
        self.token = token
        self.rows: dict[str, list[tuple[str, dict]]] = {}  # model -> [(tag, row by column)]
        self.requests: dict[str, dict[str, dict]] = {m: {} for m in PER_METRIC}  # metric -> id -> request
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        super().__init__()

    def tags(self) -> dict:
        out: dict[str, dict[str, int]] = {}
        for model, rows in self.rows.items():
            for tag, _ in rows:
                out.setdefault(model, {}).setdefault(tag, 0)
                out[model][tag] += 1
        return out

    def invalid_json(self) -> tuple:
        return 400, "Unable to process JSON", "text/plain"

    def handle(self, method: str, path: str, headers, body) -> tuple:
        """(status, payload, content type): the service answers text or JSON by endpoint."""
        self.calls.append((method, path))
        if self.token and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, "Unauthorized", "text/plain"
        with self.lock:
            code, kind, payload = self._handle(method, path, body)
        return code, payload, kind

    def _handle(self, method: str, path: str, body):
        text, as_json = "text/plain", "application/json"
        if (method, path) == ("GET", "/info/tags"):
            return 200, as_json, self.tags()
        if (method, path) == ("POST", "/data/upload"):
            return self.upload(body)
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[:2] == ["metrics", "drift"] and parts[2] in PER_METRIC:
            metric, rest = parts[2], parts[3:]
            if (method, rest) == ("POST", ["request"]):
                return self.schedule(metric, body)
            if (method, rest) == ("GET", ["requests"]):
                listed = [{"id": i, "request": r} for i, r in self.requests[metric].items()]
                return 200, as_json, {"requests": listed}
            if (method, rest) == ("DELETE", ["request"]):
                request_id = (body or {}).get("requestId")
                if request_id not in self.requests[metric]:
                    return 404, text, f"Request {request_id} not found"
                del self.requests[metric][request_id]
                return 200, text, "Removed"
        return 404, text, "Not Found"

    def upload(self, body):
        text = "text/plain"
        if not isinstance(body, dict) or not isinstance(body.get("model_name"), str) or not body["model_name"]:
            return 400, text, "model_name is required"
        tag = body.get("data_tag") or "_trustyai_unlabeled"
        if body.get("data_tag", "").startswith("_trustyai"):
            return 400, text, "The tag prefix '_trustyai' is reserved for internal TrustyAI use only."
        inputs = ((body.get("request") or {}).get("inputs")) or []
        if not inputs:
            return 400, text, "No inputs specified in request"
        outputs = ((body.get("response") or {}).get("outputs")) or []
        if not outputs:
            return 400, text, "No output payload specified in request"
        counts = set()
        columns = {}
        for tensor in inputs + outputs:
            if not {"name", "shape", "datatype", "data"} <= set(tensor):
                return 400, text, f"tensor {tensor.get('name')} needs name, shape, datatype and data"
            size = 1
            for dim in tensor["shape"]:
                size *= int(dim)
            if size != len(tensor["data"]):
                return 400, text, f"tensor {tensor['name']}: shape {tensor['shape']} does not match its data"
            counts.add(tensor["shape"][0])
            columns[tensor["name"]] = tensor["data"]
        if len(counts) != 1:
            return 400, text, "every tensor must hold the same number of rows"
        (n,) = counts
        model = body["model_name"]
        for i in range(n):
            self.rows.setdefault(model, []).append((tag, {c: v[i] for c, v in columns.items()}))
        return 200, text, f"{n} datapoints successfully added to {model} data."

    def schedule(self, metric: str, body):
        text = "text/plain"
        if not isinstance(body, dict):
            return 400, text, "a drift request must be a JSON object"
        unknown = set(body) - DRIFT_FIELDS - PER_METRIC[metric]
        if unknown:
            return 400, text, f"Unrecognized field(s) {sorted(unknown)}"
        model = body.get("modelId")
        if model not in self.rows:
            return 400, text, f"No metadata found for model={model}."
        tag = body.get("referenceTag")
        if not tag or tag.startswith("_trustyai"):
            return 400, text, "Must provide a reference tag that is not reserved for internal TrustyAI use"
        if tag not in self.tags()[model]:
            return 400, text, f"Reference tag {tag} does not exist for model {model}"
        if "batchSize" in body and not (isinstance(body["batchSize"], int) and body["batchSize"] > 0):
            return 400, text, "Request batch size must be bigger than 0."
        known = set(self.rows[model][0][1])
        if any(c not in known for c in body.get("fitColumns") or []):
            return 400, text, "fitColumns must be columns of the model's data"
        request_id = str(uuid.uuid4())
        self.requests[metric][request_id] = {**body, "metricName": metric.upper()}
        return 200, "application/json", {"requestId": request_id, "timestamp": "2026-12-07T00:00:00.000+00:00"}
