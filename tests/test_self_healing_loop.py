"""The self-healing loop end to end, with real parts on loopback: a served model (the lean
server), traffic that drifts, a real Prometheus scraping its /metrics and evaluating the rule
file `anomaly-mlops alert-rules` writes, a real Alertmanager routing as
manifests/monitoring/alertmanager-config.yaml does and posting its webhook to the drift
EventListener's rules (tests/tekton_listener.py), then the retraining the PipelineRun asks
for: live metrics from the same Prometheus, validated against the serving version, published
to S3 and served. Bounded by request counts; the waits only wait for the servers."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
import requests
import yaml
from tekton_listener import ROOT, DriftListener, Refused

from anomaly_mlops.adapters.local_services import free_port, model_server
from anomaly_mlops.model.artifacts import load_model_dir
from anomaly_mlops.model.schema import DEFAULT_FEATURES
from anomaly_mlops.params import DriftAlertParams, Gates, LatencyPlan
from anomaly_mlops.serving.alert_rules import FLAGGING_ALERT, NEW_NORMAL_ALERT, rule_groups
from anomaly_mlops.sources.synthetic import generate_synthetic
from anomaly_mlops.steps.champion import resolve_champion
from anomaly_mlops.steps.train import TrainParams, train
from anomaly_mlops.steps.validate import validate
from anomaly_mlops.store.releases import publish

from conftest import running_prometheus
from fake_http import JsonFakeServer

pytestmark = pytest.mark.skipif(
    not (shutil.which("prometheus") and shutil.which("prometheus-alertmanager")),
    reason="needs Prometheus and Alertmanager: make prometheus alertmanager (Debian prometheus, prometheus-alertmanager)",
)

TOKEN = "loop-token-5c1d"
MODEL = "anomaly-detector"
PARAMS = TrainParams(n_estimators=50, feature_window=0, score_smoothing=0)  # row-wise: quick, any row order
ORDINARY_ROWS, DRIFTED_ROWS = 300, 600
BACKFILL_HOURS = 96  # of node metrics; the last 72 drifted: three days of the new normal to refit on


def drifted(frame):
    """The machines' new normal: memory 30 points up, CPU 20 up (a new release's footprint)."""
    moved = frame.copy()
    moved["memory_usage_pct"] = np.clip(moved["memory_usage_pct"] + 30, 0, 100)
    moved["cpu_usage_pct"] = np.clip(moved["cpu_usage_pct"] + 20, 0, 100)
    return moved


class Receiver(JsonFakeServer):
    """The drift EventListener's Service: every post goes through the listener's rules, and
    is accepted (202) as an EventListener accepts before it processes."""

    def __init__(self):
        self.listener = DriftListener({("anomaly-mlops-alerts", "authorization"): f"Bearer {TOKEN}"})
        self.posts = []
        # A post counts once the listener has acted on it, and the test reads the posts and
        # the listener's outcome together: Alertmanager's repeats arrive on their own thread.
        self.lock = threading.Lock()
        super().__init__()

    def handle(self, method, path, headers, body):
        with self.lock:
            try:
                self.listener.receive(body, dict(headers.items()))
            except Refused:
                pass
            self.posts.append(body)
        return 202, {"eventListener": "anomaly-mlops-drift"}

    def retraining_posts(self) -> int:
        """Posts that hold the alert the listener starts a run on."""
        with self.lock:
            return self._retraining_posts()

    def _retraining_posts(self) -> int:
        return sum(any(a["labels"].get("alertname") == NEW_NORMAL_ALERT for a in b["alerts"]) for b in self.posts)

    def outcome(self) -> tuple[int, int, dict, list]:
        """(posts, those holding the retraining alert, runs created, refusals), read at one moment."""
        with self.lock:
            return len(self.posts), self._retraining_posts(), dict(self.listener.created), list(self.listener.refusals)


def alertmanager_config(url: str) -> dict:
    """manifests/monitoring/alertmanager-config.yaml's route and receiver as the Alertmanager
    configuration the operator renders from it, with test timings and the receiver's URL."""
    shipped = yaml.safe_load((ROOT / "manifests" / "monitoring" / "alertmanager-config.yaml").read_text())["spec"]
    route, (receiver,) = shipped["route"], shipped["receivers"]
    (webhook,) = receiver["webhookConfigs"]
    assert webhook["httpConfig"]["authorization"]["type"] == "Bearer"
    # The operator nests an AlertmanagerConfig's route under the root one and adds a matcher
    # on the namespace it lives in (here the served model's, "models").
    return {
        "route": {
            "receiver": "none",
            "routes": [
                {
                    "receiver": receiver["name"],
                    "group_by": route["groupBy"],
                    "matchers": ['namespace="models"']
                    + [f'{m["name"]}{m["matchType"]}"{m["value"]}"' for m in route["matchers"]],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "2s",  # 12h shipped: here, repeats within the test
                }
            ],
        },
        "receivers": [
            {"name": "none"},
            {
                "name": receiver["name"],
                "webhook_configs": [
                    {
                        "url": url,
                        "send_resolved": webhook["sendResolved"],
                        "http_config": {"authorization": {"type": "Bearer", "credentials": TOKEN}},
                    }
                ],
            },
        ],
    }


def start_alertmanager(root, url: str):
    (root / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(url)))
    port = free_port()
    process = subprocess.Popen(
        ["prometheus-alertmanager", f"--config.file={root / 'alertmanager.yml'}", f"--storage.path={root / 'am'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=open(root / "alertmanager.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: requests.get(f"{base}/-/ready", timeout=1).status_code == 200, "Alertmanager ready", root)
    return process, base


def wait_for(condition, what: str, root=None, timeout_s: float = 90.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(root.rglob("*.log"))) if root else ""
    pytest.fail(f"timed out waiting for {what}{logs}")


def query(prometheus: str, promql: str) -> list[dict]:
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5).json()
    return answer["data"]["result"]


def stream(url: str, frame) -> list[int]:
    with requests.Session() as session:
        return [
            session.post(f"{url}/v1/models/{MODEL}:predict", json={"instances": [row]}, timeout=10).json()[
                "predictions"
            ][0]
            for row in frame[list(DEFAULT_FEATURES)].to_numpy().tolist()
        ]


def test_drift_in_served_traffic_starts_one_validated_retraining_that_heals_the_flags(tmp_path, s3_env, monkeypatch):
    from anomaly_mlops.store.s3 import S3Settings

    for key, value in s3_env.items():  # the data connection, as the pipeline's pods have it
        monkeypatch.setenv(key, value)

    # The champion: fitted on the machines' old normal, served as the released version.
    # One machine's metrics: 4,000 minutes of its old normal to fit on, then the traffic served.
    machine = generate_synthetic(rows=4000 + ORDINARY_ROWS + DRIFTED_ROWS, seed=5, anomaly_rate=0.0)
    machine.iloc[:4000].to_csv(tmp_path / "normal.csv", index=False)
    ordinary = machine.iloc[4000 : 4000 + ORDINARY_ROWS]
    moved = drifted(machine.iloc[4000 + ORDINARY_ROWS :])
    champion_dir = train(str(tmp_path / "normal.csv"), tmp_path / "champion", PARAMS).model_dir
    settings = S3Settings.from_env(s3_env)
    released = publish(champion_dir, MODEL, "v1", settings)

    # Prometheus: the node's metrics back-filled (old normal, then three days of the new one,
    # ending three hours ago, before the live head block), and the server scraped every second.
    end = math.floor(time.time() / 60) * 60 - 3 * 3600
    points = BACKFILL_HOURS * 60
    stamps = end - 60 * (points - 1) + 60 * np.arange(points)
    history = generate_synthetic(rows=4000 + points, seed=5, anomaly_rate=0.0).iloc[4000:].reset_index(drop=True)
    history.iloc[24 * 60 :] = drifted(history.iloc[24 * 60 :])
    lines = []
    for feature in DEFAULT_FEATURES:
        lines.append(f"# TYPE node_{feature} gauge")
        lines += [f'node_{feature}{{instance="node-a"}} {v:.6f} {t}' for t, v in zip(stamps, history[feature])]
    rules = tmp_path / "drift-rules.yaml"
    # the shipped rules (the flagging alert, then the new normal) with a window and holds the test can wait for
    rules.write_text(
        yaml.safe_dump(rule_groups(DriftAlertParams(window="1m", hold="2s", retrain_after="3s", min_rows=100)))
    )
    receiver = Receiver()
    alertmanager, alertmanager_url = start_alertmanager(tmp_path, receiver.url + "/")
    try:
        with model_server(MODEL, released.uri, env=s3_env, log_path=tmp_path / "v1.log") as served:
            served_version = requests.get(f"{served}/v2/models/{MODEL}", timeout=5).json()["versions"][0]
            target = served.split("://", 1)[1]
            scrape = yaml.safe_dump(
                [
                    {
                        "job_name": "predictor",
                        "static_configs": [{"targets": [target], "labels": {"namespace": "models"}}],
                    }
                ]
            )
            prometheus_dir = tmp_path / "prometheus"
            prometheus_dir.mkdir()
            with running_prometheus(
                prometheus_dir, lines, interval="1s", scrape=scrape, rules=[rules], alerting=alertmanager_url
            ) as prometheus:
                # A counter's increase starts at its first scrape: the traffic waits for it.
                wait_for(lambda: query(prometheus, "anomaly_detector_rows_scored_total"), "the first scrape", tmp_path)
                # Ordinary traffic: flags at the calibrated share, nothing fires, nothing starts.
                assert np.mean(np.array(stream(served, ordinary)) == -1) < 0.1
                wait_for(
                    lambda: any(
                        float(r["value"][1]) >= 0.8 * ORDINARY_ROWS
                        for r in query(prometheus, "anomaly_detector:rows_scored:1m")
                    ),
                    "the ordinary rows in the recorded window",
                    tmp_path,
                )
                time.sleep(4)  # two `for:` holds and an Alertmanager group wait: anything pending would fire
                assert query(prometheus, 'ALERTS{component="anomaly-detector"}') == []
                assert receiver.posts == [] and receiver.listener.created == {}

                # The machines move to a new normal: the detector flags row after row.
                assert np.mean(np.array(stream(served, moved)) == -1) > 0.9
                wait_for(lambda: receiver.retraining_posts() >= 3, "Alertmanager's notifications, repeated", tmp_path)
                firing = {r["metric"]["alertname"] for r in query(prometheus, 'ALERTS{alertstate="firing"}')}
                assert firing == {FLAGGING_ALERT, NEW_NORMAL_ALERT}
                posts, retraining, created, refusals = receiver.outcome()
                (run,) = created.values()  # one retraining for the episode
                # a post before the new normal starts nothing (the filter); each repeat after the run names it again
                filtered = [r for r in refusals if "did not return true" in r]
                assert len(filtered) == posts - retraining
                repeats = [r for r in refusals if r not in filtered]
                assert all("already exists" in r for r in repeats) and len(repeats) == retraining - 1
                params = {p["name"]: p["value"] for p in run["spec"]["params"]}
                assert params["champion"] == f"serving:models/{MODEL}" and params["namespace"] == "models"
                assert run["metadata"]["labels"]["anomaly-mlops/drifted-version"] == served_version

                # The retraining the run asks for: live metrics (the last 3 days), the serving
                # version as champion (serving:models/anomaly-detector is what v1's server serves).
                queries = tmp_path / "queries.json"
                queries.write_text(json.dumps({f: f'node_{f}{{instance="node-a"}}' for f in DEFAULT_FEATURES}))
                from anomaly_mlops.adapters import cli

                assert cli.main(["data", "--prometheus-url", prometheus, "--queries", str(queries), "--lookback",
                                 "3d", "--end", str(end), "--out", str(tmp_path / "live")]) == 0  # fmt: skip
                challenger = train(str(tmp_path / "live" / "train.parquet"), tmp_path / "challenger", PARAMS)
                champion = resolve_champion(released.uri, MODEL, tmp_path / "cache")
                result = validate(
                    challenger.model_dir,
                    str(tmp_path / "live" / "holdout.parquet"),
                    tmp_path / "validation",
                    Gates(),
                    LatencyPlan(single_row_repeats=50, batch_sizes=(100,), batch_repeats=2),
                    champion=champion,
                )
                assert result.passed, result.metrics.get("gates")
                new = publish(challenger.model_dir, MODEL, "v2", settings)
    finally:
        alertmanager.terminate()
        alertmanager.wait(timeout=30)
        receiver.stop()

    # The new version serves the same drifted traffic at about its calibrated flagged share.
    with model_server(MODEL, new.uri, env=s3_env, log_path=tmp_path / "v2.log") as healed:
        flags = np.array(stream(healed, moved)) == -1
        calibrated = load_model_dir(challenger.model_dir).metadata["score_reference"]["flagged_share"]
        assert flags.mean() <= 3 * calibrated + 0.02, (flags.mean(), calibrated)
