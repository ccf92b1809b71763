"""Scheduled retraining on live cluster metrics (issue 14), against a real Prometheus
back-filled with node-exporter and kube-state-metrics series of two nodes carrying injected
incidents, and with ALERTS series firing during exactly those incidents: the built-in
queries (no node names), labels from alert history, the KFP pipeline through kfp.local, the
Tekton data task, and champion/challenger gates."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from anomaly_mlops.adapters import cli
from anomaly_mlops.errors import DataError
from anomaly_mlops.model.schema import FeatureSchema
from anomaly_mlops.sources.prometheus import PrometheusSource, fetch_prometheus
from anomaly_mlops.sources.synthetic import generate_synthetic

from conftest import running_prometheus

NODES = {"node-a": 21, "node-b": 22}  # instance -> generator seed
HOURS = 50  # two days and a bit: training and holdout see every time of day
CLUSTER_ALERT_MINUTES = range(200, 212)  # a cluster-wide alert, on no node in particular


def _exporter_lines(stamps: np.ndarray) -> tuple[list[str], dict[str, np.ndarray]]:
    """Raw series whose built-in queries give back the generator's metrics (as 5-minute
    rates), plus ALERTS for each labelled minute. Returns the lines and, per node, the
    labels the alert history should reproduce."""
    lines, labels = [], {}
    for header in (
        "node_cpu_seconds counter",
        "node_memory_MemAvailable_bytes gauge",
        "node_memory_MemTotal_bytes gauge",
        "node_disk_read_bytes counter",
        "node_disk_written_bytes counter",
        "node_network_receive_bytes counter",
        "node_network_transmit_bytes counter",
        "kube_pod_container_status_restarts gauge",
        "kube_pod_info gauge",
        "ALERTS gauge",
    ):
        lines.append(f"# TYPE {header}")
    body: dict[str, list[str]] = {}
    for node, seed in NODES.items():
        frame = generate_synthetic(rows=len(stamps), seed=seed, anomaly_rate=0.04)
        labels[node] = frame["is_anomaly"].to_numpy()
        idle = np.cumsum((1 - frame.cpu_usage_pct.to_numpy() / 100) * 60)
        written = np.cumsum(frame.disk_io_mbps.to_numpy() * 1e6 * 60)
        received = np.cumsum(frame.network_rx_mbps.to_numpy() * 1e6 / 8 * 60)
        sent = np.cumsum(frame.network_tx_mbps.to_numpy() * 1e6 / 8 * 60)
        restarts = np.cumsum(frame.restart_count.to_numpy())
        available = 16e9 * (1 - frame.memory_usage_pct.to_numpy() / 100)
        pod = f"app-{node}"
        for i, t in enumerate(stamps):
            body.setdefault("node_cpu_seconds", []).append(
                f'node_cpu_seconds_total{{instance="{node}",cpu="0",mode="idle"}} {idle[i]:.3f} {t}'
            )
            body.setdefault("node_memory_MemAvailable_bytes", []).append(
                f'node_memory_MemAvailable_bytes{{instance="{node}"}} {available[i]:.0f} {t}'
            )
            body.setdefault("node_memory_MemTotal_bytes", []).append(
                f'node_memory_MemTotal_bytes{{instance="{node}"}} 16000000000 {t}'
            )
            body.setdefault("node_disk_read_bytes", []).append(
                f'node_disk_read_bytes_total{{instance="{node}",device="sda"}} 0 {t}'
            )
            body.setdefault("node_disk_written_bytes", []).append(
                f'node_disk_written_bytes_total{{instance="{node}",device="sda"}} {written[i]:.0f} {t}'
            )
            for device, counter in (("eth0", 1.0), ("lo", 0.0)):
                body.setdefault("node_network_receive_bytes", []).append(
                    f'node_network_receive_bytes_total{{instance="{node}",device="{device}"}} {received[i] * counter:.0f} {t}'
                )
                body.setdefault("node_network_transmit_bytes", []).append(
                    f'node_network_transmit_bytes_total{{instance="{node}",device="{device}"}} {sent[i] * counter:.0f} {t}'
                )
            body.setdefault("kube_pod_container_status_restarts", []).append(
                f'kube_pod_container_status_restarts_total{{namespace="apps",pod="{pod}",container="c"}} {restarts[i]:.0f} {t}'
            )
            body.setdefault("kube_pod_info", []).append(
                f'kube_pod_info{{namespace="apps",pod="{pod}",node="{node}"}} 1 {t}'
            )
            if labels[node][i]:
                body.setdefault("ALERTS", []).append(
                    f'ALERTS{{alertname="NodeIncident",alertstate="firing",instance="{node}",severity="warning"}} 1 {t}'
                )
            if i in CLUSTER_ALERT_MINUTES:
                body.setdefault("ALERTS", []).append(
                    f'ALERTS{{alertname="ClusterDegraded",alertstate="firing",severity="critical"}} 1 {t}'
                )
    ordered = []
    for header in lines:
        name = header.split()[2]
        ordered += [header, *body.get(name, [])]
    return ordered, labels


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory):
    """A Prometheus whose history ends a minute ago, so runs that read "now" find it."""
    end = math.floor(time.time() / 60) * 60 - 60
    stamps = end - 60 * np.arange(HOURS * 60, -1, -1)
    lines, labels = _exporter_lines(stamps)
    with running_prometheus(tmp_path_factory.mktemp("live-prometheus"), lines) as url:
        yield url, end, stamps, labels


def source(url, end, **overrides):
    values = dict(url=url, lookback="2d", step="60s", end=end, max_gap_steps=0)
    values.update(overrides)
    return PrometheusSource(**values)


def test_built_in_queries_give_one_entity_per_node_and_alerts_label_the_incidents(live_prometheus):
    url, end, stamps, labels = live_prometheus
    frame, schema, report = fetch_prometheus(source(url, end, alerts="NodeIncident|ClusterDegraded"), FeatureSchema())
    assert schema.features == FeatureSchema().features  # the built-in queries cover the default schema
    assert sorted(frame.entity.unique()) == sorted(NODES)
    (alerts,) = report["sources"]
    assert alerts["alerts_fired"] == ["ClusterDegraded", "NodeIncident"] and alerts["rows"] == report["anomalous_rows"]
    grid_index = {int(t): i for i, t in enumerate(stamps)}
    for node in NODES:
        rows = frame[frame.entity == node]
        positions = [grid_index[int(t.timestamp())] for t in rows.timestamp]
        expected = labels[node][positions].astype(bool) | np.isin(positions, list(CLUSTER_ALERT_MINUTES))
        np.testing.assert_array_equal(rows.is_anomaly.to_numpy().astype(bool), expected)
        assert 0 < rows.is_anomaly.sum() < len(rows)
    # The metrics come back in the generator's units (5-minute rates of the raw counters).
    cpu = frame[frame.entity == "node-a"].cpu_usage_pct
    assert 5 < cpu.median() < 95 and (frame.network_rx_mbps >= 0).all()
    assert alerts["intervals"] >= 3


def test_an_alert_that_never_fired_gives_unlabelled_data_and_says_so(live_prometheus, tmp_path, caplog):
    url, end, _, _ = live_prometheus
    with caplog.at_level("WARNING"):
        code = cli.main(
            [
                "data",
                "--prometheus-url",
                url,
                "--lookback",
                "2d",
                "--end",
                str(end),
                "--alerts",
                "NeverFiresAlert",
                "--out",
                str(tmp_path / "d"),
            ]
        )
    assert code == 0
    report = json.loads((tmp_path / "d" / "labels.json").read_text())
    assert report["labelled"] is False and "no source labelled any row" in report["note"]
    assert "no alert matching 'NeverFiresAlert' fired" in report["sources"][0]["note"]
    assert "is_anomaly" not in pd.read_parquet(tmp_path / "d" / "holdout.parquet").columns
    assert "no alert matching 'NeverFiresAlert' fired" in caplog.text


def test_incident_windows_label_rows(live_prometheus, tmp_path):
    url, end, stamps, _ = live_prometheus
    start = pd.Timestamp(int(stamps[-100]), unit="s", tz="UTC")  # inside the 2-day window
    pd.DataFrame(
        {"start": [start.isoformat()], "end": [(start + pd.Timedelta("10min")).isoformat()], "entity": ["node-b"]}
    ).to_csv(tmp_path / "incidents.csv", index=False)
    frame, _, report = fetch_prometheus(source(url, end, incidents=str(tmp_path / "incidents.csv")), FeatureSchema())
    (incidents,) = report["sources"]
    assert incidents == {"source": "incidents", "intervals": 1, "rows": 10}
    labelled = frame[frame.is_anomaly == 1]
    assert set(labelled.entity) == {"node-b"} and len(labelled) == 10


@pytest.mark.parametrize("status", [401, 403])
def test_a_refusing_prometheus_is_one_clear_line(status):
    from fake_http import JsonFakeServer

    class Refusing(JsonFakeServer):
        def handle(self, method, path, headers, body):
            return status, {"status": "error", "error": "forbidden"}

    server = Refusing()
    try:
        with pytest.raises(DataError, match=f"refused the request \\({status}\\): pass a token"):
            fetch_prometheus(source(server.url, None), FeatureSchema())
    finally:
        server.stop()


def test_the_default_lookback_on_a_shorter_history_trains_on_the_history(live_prometheus):
    """The pipelines fetch 14 days unless told; a cluster (or a node) with less history is not
    refused for the days before its metrics begin: every node's rows start where its history
    does, and the alert labels still fall on the incidents' rows."""
    url, end, stamps, labels = live_prometheus
    shorter = source(url, end, alerts="NodeIncident")
    frame, _, report = fetch_prometheus(PrometheusSource(**{**vars(shorter), "lookback": "14d"}), FeatureSchema())
    for node in NODES:
        rows = frame[frame.entity == node]
        # the built-in queries are 5-minute rates: their first sample is 5 minutes into the history
        assert rows.timestamp.iloc[-1].timestamp() == end and rows.timestamp.iloc[0].timestamp() <= stamps[0] + 300
        stamp = (rows.timestamp - pd.Timestamp(0, tz="UTC")) // pd.Timedelta("1s")
        np.testing.assert_array_equal(rows.is_anomaly.to_numpy(), labels[node][np.searchsorted(stamps, stamp)])
    assert report["anomalous_rows"] == int(frame.is_anomaly.sum())


# --------------------------------------------------------------------------- champion / challenger


@pytest.fixture(scope="module")
def live_data(live_prometheus, tmp_path_factory):
    url, end, _, _ = live_prometheus
    out = tmp_path_factory.mktemp("live-data")
    assert (
        cli.main(
            [
                "data",
                "--prometheus-url",
                url,
                "--lookback",
                "2d",
                "--end",
                str(end),
                "--alerts",
                "NodeIncident",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def test_a_worse_challenger_is_refused_and_a_better_one_released(live_data, s3_env, tmp_path, monkeypatch):
    from anomaly_mlops.steps.champion import latest_release
    from anomaly_mlops.steps.train import TrainParams, train
    from anomaly_mlops.steps.validate import Gates, LatencyPlan, validate
    from anomaly_mlops.store.releases import publish
    from anomaly_mlops.store.s3 import S3Settings

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    name = f"cc-{int(time.time() * 1000) % 10**8}"
    fast = LatencyPlan(single_row_repeats=20, batch_sizes=(100,), batch_repeats=3)
    good = train(str(live_data / "train.parquet"), tmp_path / "good", TrainParams(seed=1)).model_dir
    # Worse: a forest on one raw feature of a few rows (too few for any window), so it misses
    # most incidents; fitted on their incident rows too (too few normal held-back rows
    # remain without them).
    weak_rows = pd.read_parquet(live_data / "train.parquet").iloc[:64]
    weak_rows.to_parquet(tmp_path / "weak.parquet")
    weak = train(
        str(tmp_path / "weak.parquet"),
        tmp_path / "weak",
        TrainParams(
            n_estimators=2, max_samples=16, max_features=0.2, seed=5, feature_window=0, fit_labelled_anomalies=True
        ),
    ).model_dir
    assert latest_release(name) is None
    publish(weak, name, "v1", S3Settings.from_env())
    assert latest_release(name).endswith(f"/{name}/v1/")

    gates = Gates(min_roc_auc=None, min_pr_auc=None, max_single_row_p99_ms=None)
    assert (
        cli.main(
            [
                "validate",
                "--model",
                str(good),
                "--holdout",
                str(live_data / "holdout.parquet"),
                "--out",
                str(tmp_path / "better"),
                "--champion",
                "latest",
                "--model-name",
                name,
                "--min-roc-auc",
                "-1",
                "--min-pr-auc",
                "-1",
                "--max-single-row-p99-ms",
                "-1",
                "--latency-repeats",
                "20",
            ]
        )
        == 0
    )
    publish(good, name, "v2", S3Settings.from_env())  # often within the same second as v1: a tie on time
    assert latest_release(name).endswith(f"/{name}/v2/")

    from anomaly_mlops.steps.champion import resolve_champion

    champion = resolve_champion("latest", name, tmp_path / "cache")
    worse = validate(weak, str(live_data / "holdout.parquet"), tmp_path / "worse", gates, fast, champion)
    failed = {g["gate"] for g in worse.gates if not g["passed"]}
    assert failed & {"roc_auc_vs_champion", "pr_auc_vs_champion"}, worse.gates
    assert worse.metrics["champion"]["roc_auc"] > worse.metrics["roc_auc"]
    report = worse.report_path.read_text()
    assert "Challenger and champion" in report and "challenger (this model)" in report


def test_without_labels_the_score_shift_from_the_champion_is_gated(live_data, tmp_path):
    from anomaly_mlops.model.artifacts import load_model_dir
    from anomaly_mlops.steps.train import TrainParams, train
    from anomaly_mlops.steps.validate import Gates, LatencyPlan, validate

    # A scheduled retraining without alert labels: neither part is labelled.
    unlabelled = pd.read_parquet(live_data / "holdout.parquet").drop(columns=["is_anomaly"])
    unlabelled.to_parquet(tmp_path / "recent.parquet")
    pd.read_parquet(live_data / "train.parquet").drop(columns=["is_anomaly"]).to_parquet(tmp_path / "train.parquet")
    fast = LatencyPlan(single_row_repeats=20, batch_sizes=(100,), batch_repeats=3)
    champion_dir = train(str(tmp_path / "train.parquet"), tmp_path / "champion", TrainParams(seed=1)).model_dir
    same = train(str(tmp_path / "train.parquet"), tmp_path / "same", TrainParams(seed=2)).model_dir
    # A challenger trained on other data (every metric doubled) scores recent rows very differently.
    shifted = pd.read_parquet(tmp_path / "train.parquet")
    for column in FeatureSchema().features:
        shifted[column] = shifted[column] * 2 + 50
    shifted.to_parquet(tmp_path / "shifted.parquet")
    drifted = train(str(tmp_path / "shifted.parquet"), tmp_path / "drifted", TrainParams(seed=1)).model_dir
    champion = load_model_dir(champion_dir)
    gates = Gates(max_single_row_p99_ms=None)
    ok = validate(same, str(tmp_path / "recent.parquet"), tmp_path / "ok", gates, fast, champion)
    bad = validate(drifted, str(tmp_path / "recent.parquet"), tmp_path / "bad", gates, fast, champion)
    # Another seed on the same rows shifts the scores too (PSI 0.30 here; 0.16 with the
    # principal basis): the gate sits above healthy retrainings (params.py).
    ok_gates = {g["gate"]: g for g in ok.gates}
    assert ok_gates["score_psi_vs_champion"]["passed"] and "skipped" not in ok_gates["score_psi_vs_champion"]
    assert 0 < ok.metrics["champion"]["score_psi"] < gates.max_score_psi
    # This holdout (2.6% anomalies, unlabelled here) is flagged at 3.8-3.9% by the default,
    # within the flagged-rate gate's 6% (7.7% with --metric-basis principal): docs/evidence/quality.md.
    assert [name for name, g in ok_gates.items() if not g["passed"]] == []
    assert not bad.passed and {"score_psi_vs_champion", "flagged_rate"} <= {
        g["gate"] for g in bad.gates if not g["passed"]
    }


def test_a_champion_with_other_tree_sizes_is_not_held_to_the_score_shift_gate(live_data, tmp_path):
    """The first retraining after the default trees grew (256 -> 4096 rows) scores on another
    scale than its champion: without labels the shift gate is skipped, saying why, and the
    flagged-rate gate still judges the challenger."""
    from anomaly_mlops.model.artifacts import load_model_dir
    from anomaly_mlops.steps.train import TrainParams, train
    from anomaly_mlops.steps.validate import Gates, LatencyPlan, validate

    # Without alert labels, like the scheduled run it stands for: neither part is labelled.
    unlabelled = pd.read_parquet(live_data / "holdout.parquet").drop(columns=["is_anomaly"])
    unlabelled.to_parquet(tmp_path / "recent.parquet")
    pd.read_parquet(live_data / "train.parquet").drop(columns=["is_anomaly"]).to_parquet(tmp_path / "train.parquet")
    fast = LatencyPlan(single_row_repeats=20, batch_sizes=(100,), batch_repeats=3)
    old = train(str(tmp_path / "train.parquet"), tmp_path / "old", TrainParams(max_samples="auto")).model_dir
    new = train(str(tmp_path / "train.parquet"), tmp_path / "new", TrainParams()).model_dir
    result = validate(
        new,
        str(tmp_path / "recent.parquet"),
        tmp_path / "v",
        Gates(max_single_row_p99_ms=None),
        fast,
        load_model_dir(old),
    )
    gates = {g["gate"]: g for g in result.gates}
    assert result.metrics["champion"]["score_psi"] > 0  # measured, and shown, but not gated on
    assert "max_samples: auto -> 4096" in gates["score_psi_vs_champion"]["skipped"]
    assert "skipped" not in gates["flagged_rate"] and result.passed


# --------------------------------------------------------------------------- the pipelines


@pytest.mark.slow
def test_the_kfp_pipeline_retrains_on_live_metrics(live_prometheus, s3_env, tmp_path, monkeypatch):
    import boto3
    from kfp import local

    from anomaly_mlops.pipelines.definitions import PipelineOptions, build_training_pipeline

    url, end, _, _ = live_prometheus
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path), raise_on_error=True)
    pipeline = build_training_pipeline(PipelineOptions(image="unused-locally"))
    pipeline(
        prometheus_url=url,
        lookback="2d",
        alerts="NodeIncident",
        n_estimators=40,
        deploy=False,
        version="live-v1",
        model_name="live-model",
        min_pr_auc=0.0,
        min_roc_auc=0.5,
    )
    keys = {
        o["Key"]
        for o in boto3.client(
            "s3",
            endpoint_url=s3_env["AWS_S3_ENDPOINT"],
            aws_access_key_id="x",
            aws_secret_access_key="y",
            region_name="us-east-1",
        ).list_objects_v2(Bucket=s3_env["AWS_S3_BUCKET"], Prefix="live-model/live-v1/")["Contents"]
    }
    assert "live-model/live-v1/MANIFEST.sha256" in keys
    (holdout_meta,) = tmp_path.glob("*/prepare-data/executor_output.json")
    outputs = json.loads(holdout_meta.read_text())["artifacts"]["holdout_data"]["artifacts"][0]["metadata"]
    assert outputs["labelled"] is True and outputs["labels"]["sources"][0]["alerts_fired"] == ["NodeIncident"]


@pytest.mark.slow
def test_the_tekton_data_task_reads_live_metrics(live_prometheus, tmp_path):
    from test_tekton import run_task

    url, _, _, _ = live_prometheus
    work = tmp_path / "work"
    work.mkdir()
    result = run_task("anomaly-data", {"prometheus-url": url, "lookback": "2d", "alerts": "NodeIncident"}, work, {})
    assert int(result["holdout-anomalies"]) > 0
    report = json.loads((work / "data" / "labels.json").read_text())
    assert report["labelled"] and report["sources"][0]["alerts_fired"] == ["NodeIncident"]
    assert sorted(pd.read_parquet(work / "data" / "train.parquet").entity.unique()) == sorted(NODES)
