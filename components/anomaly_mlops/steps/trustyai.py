"""Optional: the released version's training reference in TrustyAI, the drift service
OpenShift AI ships, with its drift metrics scheduled for the InferenceService
(``anomaly-mlops trustyai-register``). Users who already watch TrustyAI see our model there;
our own drift signals (/metrics, manifests/monitoring) do not depend on it.

What it does, against the TrustyAI service's REST API (trustyai-explainability 8c01552e,
../shared/schemas/trustyai/TRUSTYAI-API.md):
1. ``POST /data/upload``: a sample of the rows the version was trained on, as a V2 request
   (one ``[n]`` tensor per metric, named after it) with the version's answers as the response,
   under the data tag ``TRAINING-<version>`` (one reference per released version). Skipped
   when ``GET /info/tags`` already holds that many rows under the tag (a retry).
2. ``POST /metrics/drift/<metric>/request`` for each metric (MeanShift and KSTest by default),
   named ``anomaly-mlops-<metric>``, against that tag; a request of ours for an earlier
   version is deleted first, one for this version kept (a retry).

TrustyAI compares columns by name: the inferences it logs line up with this reference when
clients send V2 per-metric tensors named after the metrics (as here). How it names the
columns of V1 ``instances`` or of one matrix input was not tested.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from anomaly_mlops.errors import ConfigError, DataError
from anomaly_mlops.model.artifacts import LoadedModel
from anomaly_mlops.params import TRUSTYAI_DRIFT_METRICS, TRUSTYAI_REFERENCE_ROWS
from anomaly_mlops.redact import redact

log = logging.getLogger(__name__)

DRIFT_METRICS = ("meanshift", "kstest", "approxkstest", "fouriermmd")
DEFAULT_DRIFT_METRICS = tuple(TRUSTYAI_DRIFT_METRICS.split(","))
REQUEST_PREFIX = "anomaly-mlops-"
TIMEOUT_S = 30.0


@dataclass
class TrustyAIRegistration:
    model_id: str
    data_tag: str
    rows: int
    uploaded: bool
    scheduled: dict[str, str] = field(default_factory=dict)  # metric -> request id
    removed: list[str] = field(default_factory=list)  # request ids of earlier versions


class TrustyAIClient:
    def __init__(self, url: str, token: str | None = None, ca_bundle: str | None = None):
        import requests

        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--trustyai-url must be http(s)://HOST[:PORT], got {redact(url)!r}")
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if ca_bundle:
            self.session.verify = ca_bundle

    def call(self, method: str, path: str, what: str, body=None, ok=(200,)):
        import requests

        try:
            response = self.session.request(method, f"{self.url}{path}", json=body, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            raise DataError(f"cannot reach TrustyAI at {redact(self.url)} to {what}: {redact(str(exc))[:300]}") from exc
        if response.status_code in (401, 403):
            raise DataError(
                f"TrustyAI at {redact(self.url)} refused to {what} ({response.status_code}): pass a token that may "
                "use the service (--token-file)"
            )
        if response.status_code not in ok:
            raise DataError(f"TrustyAI refused to {what} ({response.status_code}): {redact(response.text)[:300]}")
        return response


def reference_sample(X: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    """At most ``rows`` of the training rows, spread over the whole period (in time order)."""
    if len(X) <= rows:
        return X
    chosen = np.sort(np.random.default_rng(seed).choice(len(X), size=rows, replace=False))
    return X[chosen]


def register_with_trustyai(
    model: LoadedModel,
    training_rows: np.ndarray,
    url: str,
    model_id: str,
    version: str,
    *,
    metrics=DEFAULT_DRIFT_METRICS,
    rows: int = TRUSTYAI_REFERENCE_ROWS,
    batch_size: int | None = None,
    token: str | None = None,
    ca_bundle: str | None = None,
) -> TrustyAIRegistration:
    """Upload the version's training reference and schedule its drift metrics (idempotent)."""
    unknown = [m for m in metrics if m not in DRIFT_METRICS]
    if unknown or not metrics:
        raise ConfigError(f"--metrics must name TrustyAI drift metrics ({', '.join(DRIFT_METRICS)}), got {unknown}")
    if rows < 1 or (batch_size is not None and batch_size < 1):
        raise ConfigError("--rows and --batch-size must be at least 1")
    if not model_id or model_id.startswith("_trustyai"):
        raise ConfigError(f"--model-id must name the InferenceService (not starting with _trustyai), got {model_id!r}")
    X = np.asarray(training_rows, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(model.schema) or not len(X):
        raise DataError(f"the training rows must be a non-empty matrix of the {len(model.schema)} schema metrics")
    client = TrustyAIClient(url, token, ca_bundle)
    tag = f"TRAINING-{version}"
    sample = reference_sample(X, rows)
    held = client.call("GET", "/info/tags", "list its data tags").json().get(model_id, {})
    uploaded = int(held.get(tag, 0)) < len(sample)
    if uploaded:
        predictions, scores = model.score(sample)
        names = model.schema.features
        body = {
            "model_name": model_id,
            "data_tag": tag,
            "request": {
                "inputs": [
                    {"name": n, "shape": [len(sample)], "datatype": "FP64", "data": sample[:, j].tolist()}
                    for j, n in enumerate(names)
                ]
            },
            "response": {
                "model_name": model_id,
                "model_version": version,
                "outputs": [
                    {"name": "predictions", "shape": [len(sample)], "datatype": "INT64", "data": predictions.tolist()},
                    {"name": "anomaly_scores", "shape": [len(sample)], "datatype": "FP64", "data": scores.tolist()},
                ],
            },
        }
        client.call("POST", "/data/upload", f"upload the training reference of {model_id} {version}", body)
        log.info("TrustyAI: %d training rows of %s %s uploaded under the tag %s", len(sample), model_id, version, tag)
    else:
        log.info("TrustyAI: %s already holds the tag %s (%s rows); not uploaded again", model_id, tag, held.get(tag))
    result = TrustyAIRegistration(model_id, tag, len(sample), uploaded)
    for metric in metrics:
        root = f"/metrics/drift/{metric}"
        name = f"{REQUEST_PREFIX}{metric}"
        listed = client.call("GET", f"{root}/requests", f"list the scheduled {metric} requests").json()
        for entry in listed.get("requests", []):
            request = entry.get("request") or {}
            if request.get("modelId") != model_id or request.get("requestName") != name:
                continue
            if request.get("referenceTag") == tag:
                result.scheduled[metric] = entry["id"]
            else:  # ours, for an earlier version
                client.call(
                    "DELETE",
                    f"{root}/request",
                    f"remove the {metric} request {entry['id']}",
                    {"requestId": entry["id"]},
                )
                result.removed.append(entry["id"])
        if metric in result.scheduled:
            continue
        body = {"modelId": model_id, "referenceTag": tag, "requestName": name}
        if batch_size is not None:
            body["batchSize"] = batch_size
        answer = client.call("POST", f"{root}/request", f"schedule {metric} drift for {model_id}", body).json()
        result.scheduled[metric] = answer["requestId"]
        log.info("TrustyAI: %s drift of %s against %s scheduled (%s)", metric, model_id, tag, answer["requestId"])
    return result
