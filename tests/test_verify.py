"""Post-deployment verification against the real KServe server, and against servers
that misbehave."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from anomaly_mlops.adapters.local_services import free_port
from anomaly_mlops.errors import ConfigError, VerificationError
from anomaly_mlops.model.artifacts import load_model_dir
from anomaly_mlops.sources.files import load_dataset
from anomaly_mlops.steps.train import TrainParams, train
from anomaly_mlops.steps.verify import VerifyPlan, raise_on_failure, verify

QUICK = VerifyPlan(requests=40, readiness_timeout_s=5)


@pytest.fixture(scope="module")
def rows(prepared):
    return load_dataset(str(prepared.holdout_path)).X


def test_verify_passes_against_the_served_model(served, rows, model_dir, tmp_path):
    url, name = served
    result = verify(url, name, rows, load_model_dir(model_dir), plan=QUICK, out_dir=tmp_path)
    assert result.passed, result.checks
    assert [c["check"] for c in result.checks] == [
        "readiness",
        "v1_predict",
        "v2_infer",
        "v1_v2_agree",
        "parity",
        "labels",
        "bad_input",
        "latency_slo",
        "error_rate",
    ]
    assert result.latency_ms["n"] == 40 and 0 < result.latency_ms["p50"] <= result.latency_ms["p99"]
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["passed"] is True
    raise_on_failure(result)  # no exception


def test_parity_catches_a_different_model(served, rows, prepared, tmp_path):
    other = train(
        str(prepared.train_path),
        tmp_path / "other",
        TrainParams(n_estimators=50, seed=99, feature_window=0, score_smoothing=0),
    )
    url, name = served
    result = verify(url, name, rows, load_model_dir(other.model_dir), plan=QUICK)
    failed = {c["check"] for c in result.checks if not c["passed"]}
    assert failed == {"parity"}
    with pytest.raises(VerificationError, match="parity: max \\|served - offline\\|"):
        raise_on_failure(result)


def test_slo_failure_is_reported(served, rows):
    url, name = served
    result = verify(url, name, rows, plan=VerifyPlan(requests=10, slo_p99_ms=0.001, readiness_timeout_s=5))
    assert {c["check"] for c in result.checks if not c["passed"]} == {"latency_slo"}


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"requests": 0}, "verify requests must be a whole number >= 1, got 0"),
        ({"slo_p99_ms": float("nan")}, "verify slo_p99_ms must be a finite number above 0, got nan"),
        ({"max_error_rate": 1.0}, r"verify max_error_rate must be in \[0, 1\), got 1.0"),
        ({"readiness_timeout_s": float("inf")}, "verify readiness_timeout_s must be a finite number above 0"),
        ({"parity_tolerance": -1e-6}, "verify parity_tolerance must be a finite number >= 0"),
    ],
)
def test_a_plan_whose_checks_could_not_fail_is_refused_before_any_request(rows, setting, message):
    """No requests, a NaN SLO or an error rate of 1 would pass any server; an infinite
    readiness timeout would wait for ever on a dead one (none is listening here)."""
    with pytest.raises(ConfigError, match=message):
        verify(f"http://127.0.0.1:{free_port()}", "m", rows, plan=VerifyPlan(**setting))


def test_unreachable_server_fails_readiness_quickly(rows):
    result = verify(f"http://127.0.0.1:{free_port()}", "m", rows, plan=VerifyPlan(readiness_timeout_s=1.5))
    assert not result.passed
    assert result.checks[0]["check"] == "readiness" and "not ready after" in result.checks[0]["detail"]


class _AuthServer(ThreadingHTTPServer):
    seen_auth: list


def test_bearer_token_is_sent_and_never_written(rows, tmp_path):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.server.seen_auth.append(self.headers.get("Authorization"))
            self.send_response(403)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = _AuthServer(("127.0.0.1", 0), Handler)
    server.seen_auth = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        token = "sha256~very-secret-token"
        result = verify(
            f"http://127.0.0.1:{server.server_port}",
            "m",
            rows,
            token=token,
            plan=VerifyPlan(readiness_timeout_s=3),
            out_dir=tmp_path,
        )
    finally:
        server.shutdown()
    assert server.seen_auth[0] == f"Bearer {token}"
    assert not result.passed and "refused our credentials" in result.checks[0]["detail"]
    assert token not in (tmp_path / "verify.json").read_text()
