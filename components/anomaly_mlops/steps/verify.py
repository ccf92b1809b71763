"""The verify step: post-deployment checks against a served model over HTTP.

Checks, in order: readiness (V1 and V2), a V1 predict and a V2 infer on the same rows
(answers agree), parity with offline scores from the released artifacts, a malformed
request answered with 400, and a latency SLO and error rate over N single-row requests.
A bearer token is sent when given (OpenShift AI with authentication on); it is never logged.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from anomaly_mlops.errors import ConfigError, VerificationError
from anomaly_mlops.model.artifacts import LoadedModel
from anomaly_mlops.params import VerifyPlan

log = logging.getLogger(__name__)


@dataclass
class VerifyResult:
    passed: bool
    checks: list[dict]
    latency_ms: dict
    report_path: Path | None = None
    details: dict = field(default_factory=dict)


class _Client:
    def __init__(self, base_url: str, token: str | None, timeout: float, ca_bundle: str | bool | None):
        import requests

        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if ca_bundle is not None:
            self.session.verify = ca_bundle
        self.timeout = timeout

    def get(self, path: str):
        return self.session.get(self.base + path, timeout=self.timeout)

    def post(self, path: str, body: dict):
        return self.session.post(self.base + path, json=body, timeout=self.timeout)


def _wait_ready(client: _Client, model: str, timeout_s: float) -> tuple[bool, str]:
    import requests

    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            response = client.get(f"/v1/models/{model}")
            if response.status_code == 200 and response.json().get("ready") is True:
                v2 = client.get(f"/v2/models/{model}/ready")
                if v2.status_code == 200:
                    return True, "V1 and V2 report ready"
                last = f"V2 ready answered {v2.status_code}"
            elif response.status_code in (401, 403):
                return False, f"{response.status_code}: the server refused our credentials (pass --token-file?)"
            else:
                last = f"V1 model status {response.status_code}: {response.text[:200]}"
        except requests.RequestException as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    return False, f"not ready after {timeout_s:.0f}s ({last})"


def verify(
    base_url: str,
    model_name: str,
    rows: np.ndarray,
    reference: LoadedModel | None = None,
    *,
    token: str | None = None,
    ca_bundle: str | bool | None = None,
    plan: VerifyPlan | None = None,
    out_dir: str | Path | None = None,
) -> VerifyResult:
    """Run every check, write verify.json when out_dir is given, and return the verdict.

    ``rows`` are feature rows in schema order to send; ``reference`` gives the offline
    scores for parity (skipped, and said so, when None).
    """
    import requests

    plan = plan or VerifyPlan()
    plan.check()
    client = _Client(base_url, token, plan.request_timeout_s, ca_bundle)
    checks: list[dict] = []

    def check(name: str, passed: bool, detail: str) -> bool:
        checks.append({"check": name, "passed": bool(passed), "detail": detail})
        (log.info if passed else log.error)("verify %-12s %s: %s", name, "ok" if passed else "FAILED", detail)
        return passed

    ready, detail = _wait_ready(client, model_name, plan.readiness_timeout_s)
    latency: dict = {}
    if check("readiness", ready, detail):
        sample = rows[: plan.parity_rows]
        v1_scores, v1_labels = _v1_round_trip(client, model_name, sample, check)
        v2_scores = _v2_round_trip(client, model_name, sample, check)
        if v1_scores is not None and v2_scores is not None:
            gap = float(np.max(np.abs(v1_scores - v2_scores)))
            check("v1_v2_agree", gap <= plan.parity_tolerance, f"max |V1 - V2| = {gap:.3g}")
        if reference is None:
            check("parity", True, "skipped: no reference model given")
        elif v1_scores is not None:
            offline_labels, offline = reference.score(sample)
            gap = float(np.max(np.abs(offline - v1_scores)))
            check(
                "parity",
                gap <= plan.parity_tolerance,
                f"max |served - offline| = {gap:.3g} over {len(sample)} rows (tolerance {plan.parity_tolerance})",
            )
            # Labels of rows whose score sits within the tolerance of the threshold may differ.
            clear = np.abs(offline - reference.threshold) > plan.parity_tolerance
            wrong = int(np.sum((v1_labels != offline_labels) & clear))
            check(
                "labels",
                wrong == 0,
                f"{wrong} of {int(clear.sum())} rows labelled unlike the reference (-1 anomaly, 1 normal)",
            )
        try:
            bad = client.post(f"/v1/models/{model_name}:predict", {"instances": [["not-a-number"] * rows.shape[1]]})
            check("bad_input", bad.status_code == 400, f"malformed request answered {bad.status_code}")
        except requests.RequestException as exc:
            check("bad_input", False, f"{type(exc).__name__}: {exc}")
        latency = _latency(client, model_name, rows, plan, check)

    passed = all(c["passed"] for c in checks)
    result = VerifyResult(passed, checks, latency)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        result.report_path = out / "verify.json"
        result.report_path.write_text(
            json.dumps(
                {
                    "base_url": base_url,
                    "model": model_name,
                    "passed": passed,
                    "checks": checks,
                    "latency_ms": latency,
                    "plan": asdict(plan),
                },
                indent=2,
            )
            + "\n"
        )
    log.info(
        "verification %s (%d/%d checks passed)",
        "PASSED" if passed else "FAILED",
        sum(c["passed"] for c in checks),
        len(checks),
    )
    return result


def _v1_round_trip(
    client: _Client, model: str, sample: np.ndarray, check
) -> tuple[np.ndarray | None, np.ndarray | None]:
    import requests

    try:
        response = client.post(f"/v1/models/{model}:predict", {"instances": sample.tolist()})
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    except (requests.RequestException, ValueError) as exc:
        check("v1_predict", False, f"{type(exc).__name__}: {exc}")
        return None, None
    scores = body.get("anomaly_scores")
    predictions = body.get("predictions")
    ok = (
        response.status_code == 200
        and isinstance(scores, list)
        and len(scores) == len(sample)
        # -1 anomaly, 1 normal, JSON integers: what the platform's engine decodes
        and isinstance(predictions, list)
        and len(predictions) == len(sample)
        and all(type(p) is int and p in (-1, 1) for p in predictions)
    )
    check(
        "v1_predict",
        ok,
        f"HTTP {response.status_code}, {len(scores or [])} scores for {len(sample)} rows"
        + ("" if ok else f": {str(body)[:200]}"),
    )
    if not ok:
        return None, None
    return np.asarray(scores, dtype=np.float64), np.asarray(predictions)


def _v2_round_trip(client: _Client, model: str, sample: np.ndarray, check) -> np.ndarray | None:
    import requests

    body = {
        "inputs": [
            {"name": "input-0", "shape": list(sample.shape), "datatype": "FP64", "data": sample.ravel().tolist()}
        ]
    }
    try:
        response = client.post(f"/v2/models/{model}/infer", body)
        answer = response.json()
    except (requests.RequestException, ValueError) as exc:
        check("v2_infer", False, f"{type(exc).__name__}: {exc}")
        return None
    outputs = {o.get("name"): o for o in answer.get("outputs", [])} if isinstance(answer, dict) else {}
    scores = outputs.get("anomaly_scores", {}).get("data")
    ok = (
        response.status_code == 200
        and "predictions" in outputs
        and isinstance(scores, list)
        and len(scores) == len(sample)
    )
    check(
        "v2_infer",
        ok,
        f"HTTP {response.status_code}, outputs {sorted(outputs)}" + ("" if ok else f": {str(answer)[:200]}"),
    )
    return np.asarray(scores, dtype=np.float64) if ok else None


def _latency(client: _Client, model: str, rows: np.ndarray, plan: VerifyPlan, check) -> dict:
    import uuid

    import requests

    timings, errors = [], 0
    path = f"/v1/models/{model}:predict"
    # One series of single rows, as a client sends them; a model that keeps history per
    # entity scores each after the ones before (a fresh id: no earlier run's rows mix in).
    entity = f"verify-{uuid.uuid4().hex[:12]}"
    for i in range(plan.requests):
        row = rows[i % len(rows)]
        started = time.perf_counter()
        try:
            response = client.post(path, {"instances": [row.tolist()], "entity": entity})
            if response.status_code != 200:
                errors += 1
        except requests.RequestException:
            errors += 1
        timings.append((time.perf_counter() - started) * 1000.0)
        if (i + 1) % max(1, plan.requests // 4) == 0:
            log.info("verify latency: %d/%d requests", i + 1, plan.requests)
    samples = np.asarray(timings)
    latency = {q: round(float(np.percentile(samples, int(q[1:]))), 3) for q in ("p50", "p95", "p99")}
    latency["n"] = len(samples)
    error_rate = errors / max(1, plan.requests)
    check(
        "latency_slo",
        latency["p99"] <= plan.slo_p99_ms,
        f"p50 {latency['p50']} ms, p95 {latency['p95']} ms, p99 {latency['p99']} ms over {len(samples)} requests "
        f"(SLO p99 <= {plan.slo_p99_ms} ms)",
    )
    check(
        "error_rate",
        error_rate <= plan.max_error_rate,
        f"{errors}/{plan.requests} requests failed ({error_rate:.2%}, allowed {plan.max_error_rate:.2%})",
    )
    return latency


def verify_rollout(
    url: str,
    isvc_name: str,
    namespace: str,
    rows: np.ndarray,
    reference: LoadedModel | None,
    *,
    canary: bool,
    client=None,
    model_name: str | None = None,
    rollback_on_failure: bool = True,
    registry=None,
    hold_for_approval: bool = False,
    **verify_kwargs,
) -> VerifyResult:
    """Verify the revision just deployed, then decide on its own results: promote a canary
    that passed (unless it is held for approval), roll back one that failed; ``registry``
    (rollout.RegistryTarget) is told what serves. ``url`` must reach that revision alone (the
    deploy step's ``candidate_url``: during a canary, the ``latest`` tag's URL); the service
    URL of a canary sends most checks to the previous model."""
    from anomaly_mlops.steps import rollout
    from anomaly_mlops.steps.deploy import InferenceServiceClient

    try:
        result = verify(url, model_name or isvc_name, rows, reference, **verify_kwargs)
    except ConfigError:  # nothing was checked: the revision must not keep its traffic unverified
        if rollback_on_failure:
            rollout.rollback(client or InferenceServiceClient(), isvc_name, namespace, registry)
        raise
    client = client or InferenceServiceClient()
    if not result.passed and rollback_on_failure:
        rollout.rollback(client, isvc_name, namespace, registry)
    elif result.passed and hold_for_approval:
        log.info("%s/%s passed its checks and waits for approval", namespace, isvc_name)
    elif result.passed and (canary or registry):  # without a canary, promote only tells the registry
        rollout.promote(client, isvc_name, namespace, registry)
    return result


def raise_on_failure(result: VerifyResult) -> None:
    if not result.passed:
        failed = [f"{c['check']}: {c['detail']}" for c in result.checks if not c["passed"]]
        raise VerificationError("post-deployment verification failed: " + "; ".join(failed))
