"""A Serverless canary, verified for real: two real model servers (the previous and the new
model) behind a proxy that splits the service URL's traffic the way Knative does, by the
percentages the API-server fake's controller reports; per-revision URLs only with tag
routing (DESIGN.md, platform rules; opendatahub-io/kserve ksvc_reconciler.go).

Verification through the service URL reaches the new model about canary% of the time, so it
fails a good canary; verification at the candidate's own URL decides on the candidate alone.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from anomaly_mlops.adapters.local_services import model_server
from anomaly_mlops.errors import ConfigError
from anomaly_mlops.model.artifacts import load_model_dir
from anomaly_mlops.params import VerifyPlan
from anomaly_mlops.sources.files import load_dataset
from anomaly_mlops.steps.deploy import DeploySpec, InferenceServiceClient, deploy
from anomaly_mlops.steps.train import TrainParams, train
from anomaly_mlops.steps.verify import verify, verify_rollout

from k8s_fake import FakeKubeAPI, ready_controller

NS, NAME = "anomaly", "anomaly-detector"
PLAN = VerifyPlan(requests=20, parity_rows=40, readiness_timeout_s=30)


class SplitProxy:
    """The service URL: each request goes to a revision chosen by the traffic split the fake
    reports now, spread evenly (of 100 requests, exactly `percent` reach each revision)."""

    def __init__(self, fake: FakeKubeAPI, backends: dict[str, str]):
        self.fake, self.backends = fake, backends
        self.counter = itertools.count()
        self.hits: dict[str, int] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                revision = proxy.pick()
                proxy.hits[revision] = proxy.hits.get(revision, 0) + 1
                answer = requests.request(
                    self.command,
                    proxy.backends[revision] + self.path,
                    data=body or None,
                    headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
                    timeout=10,
                )
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def pick(self) -> str:
        obj = self.fake.objects[(NS, NAME)]
        split = [(revision, percent) for revision, percent in self.fake.controller.split(NS, NAME, obj) if percent]
        assert sum(p for _, p in split) == 100, split
        if len(split) == 1:
            return split[0][0]
        (first, percent), (second, _) = split
        k = next(self.counter)
        # Spread evenly: of every 100 requests exactly `percent` go to the first revision.
        return first if (k + 1) * percent // 100 > k * percent // 100 else second

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def rollout(prepared, model_dir, tmp_path_factory):
    """The previous model (the session's) and a new one trained with another seed, each served
    by a real lean server; the fake's revisions 1 and 2 are those servers."""
    new_dir = train(
        str(prepared.train_path),
        tmp_path_factory.mktemp("new") / "model",
        TrainParams(n_estimators=50, seed=8, feature_window=0, score_smoothing=0),
    ).model_dir
    logs = tmp_path_factory.mktemp("servers")
    with (
        model_server(NAME, str(model_dir), log_path=logs / "old.log") as old_url,
        model_server(NAME, str(new_dir), log_path=logs / "new.log") as new_url,
    ):
        yield {"old": (model_dir, old_url), "new": (new_dir, new_url)}


@pytest.fixture
def canary(rollout):
    """A live service on the previous model, then the new one deployed as a 10% canary."""
    fake = FakeKubeAPI()
    fake.controller = ready_controller()
    revisions = {f"{NAME}-predictor-{g:05d}": rollout[k][1] for g, k in [(1, "old"), (2, "new"), (3, "new")]}
    proxy = SplitProxy(fake, revisions)
    fake.controller.urls = {"service": proxy.url, **revisions}
    client = InferenceServiceClient(fake.api())

    def spec(version):
        return DeploySpec(
            NAME, NS, storage_key="c", storage_path=f"m/{version}/", model_version=version, deployment_mode="Serverless"
        )

    deploy(spec("v1"), client, timeout_s=5, poll_s=0.01)
    result = deploy(spec("v2"), client, timeout_s=5, poll_s=0.01)
    assert result.canary and result.url == proxy.url and result.candidate_url == rollout["new"][1]
    yield fake, proxy, client, result
    proxy.stop()
    fake.stop()


def rows(prepared, model):
    return load_dataset(str(prepared.holdout_path), load_model_dir(model).schema).X


def verify_candidate(canary, prepared, reference_dir):
    """What the pipeline's verify step does with deploy's outputs: check the candidate URL
    against the reference model, then promote or roll back."""
    _, _, client, result = canary
    return verify_rollout(
        result.candidate_url,
        NAME,
        NS,
        rows(prepared, reference_dir),
        load_model_dir(reference_dir),
        canary=True,
        client=client,
        plan=PLAN,
    )


def test_checks_sent_to_the_service_url_mostly_reach_the_previous_model(canary, rollout, prepared):
    """What verify did before it took the candidate's own URL: a good canary fails parity."""
    fake, proxy, _, result = canary
    new_dir = rollout["new"][0]
    checked = verify(result.url, NAME, rows(prepared, new_dir), load_model_dir(new_dir), plan=PLAN)
    failed = {c["check"] for c in checked.checks if not c["passed"]}
    assert not checked.passed and "parity" in failed, checked.checks
    assert proxy.hits[f"{NAME}-predictor-00001"] > 5 * proxy.hits[f"{NAME}-predictor-00002"]


def test_a_good_canary_checked_at_its_own_url_is_promoted(canary, rollout, prepared):
    fake, proxy, client, _ = canary
    checked = verify_candidate(canary, prepared, rollout["new"][0])
    assert checked.passed, checked.checks
    assert "canaryTrafficPercent" not in fake.objects[(NS, NAME)]["spec"]["predictor"]
    client.get(NAME, NS)  # the controller reconciles: all traffic to the new revision
    assert fake.controller.split(NS, NAME, fake.objects[(NS, NAME)]) == [(f"{NAME}-predictor-00003", 100)]
    assert proxy.hits == {}  # nothing went through the split URL


def test_a_canary_whose_checks_cannot_run_is_rolled_back(canary, rollout, prepared):
    """A verify plan that would pass whatever the server does (no requests) is refused before
    any request, and the canary does not keep its traffic unverified."""
    fake, proxy, client, result = canary
    new_dir = rollout["new"][0]
    with pytest.raises(ConfigError, match=r"verify requests must be a whole number >= 1, got 0"):
        verify_rollout(
            result.candidate_url, NAME, NS, rows(prepared, new_dir), load_model_dir(new_dir),
            canary=True, client=client, plan=replace(PLAN, requests=0),
        )  # fmt: skip
    assert fake.objects[(NS, NAME)]["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert proxy.hits == {}


def test_a_bad_canary_checked_at_its_own_url_is_rolled_back(canary, rollout, prepared):
    """The candidate is compared with a model it does not serve: parity fails on the candidate
    itself, and traffic is pinned to the previous revision."""
    fake, _, client, _ = canary
    checked = verify_candidate(canary, prepared, rollout["old"][0])
    assert not checked.passed
    assert fake.objects[(NS, NAME)]["spec"]["predictor"]["canaryTrafficPercent"] == 0
    client.get(NAME, NS)
    assert fake.controller.split(NS, NAME, fake.objects[(NS, NAME)]) == [
        (f"{NAME}-predictor-00003", 0),
        (f"{NAME}-predictor-00001", 100),
    ]
