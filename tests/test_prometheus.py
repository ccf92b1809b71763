"""The Prometheus data source against a real Prometheus server (Debian package, started
on loopback by the `prometheus` fixture with back-filled history)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from anomaly_mlops.adapters.local_services import free_port
from anomaly_mlops.errors import ConfigError, DataError
from anomaly_mlops.model.schema import DEFAULT_FEATURES
from anomaly_mlops.sources.prometheus import fetch_range, load_queries, parse_duration
from anomaly_mlops.sources.synthetic import generate_synthetic

QUERIES = {f: f'mlops_{f}{{instance="node-1"}}' for f in DEFAULT_FEATURES}


def test_query_range_is_aligned_into_the_schema(prometheus):
    url, end, expected = prometheus
    frame = fetch_range(url, QUERIES, lookback_s=6 * 3600, step_s=60, end=end)
    assert list(frame.columns) == ["timestamp", "entity", *DEFAULT_FEATURES] and len(frame) == 361
    assert frame.timestamp.iloc[-1].timestamp() == end
    np.testing.assert_allclose(frame[list(DEFAULT_FEATURES)].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-9)
    # A coarser step samples the same history.
    coarse = fetch_range(url, QUERIES, lookback_s=5 * 3600, step_s=300, end=end)
    stamps = [int(t.timestamp()) for t in coarse.timestamp]
    assert len(coarse) == 61 and all(t % 300 == 0 for t in stamps)
    np.testing.assert_allclose(
        coarse.cpu_usage_pct.to_numpy(), expected.cpu_usage_pct.loc[stamps].to_numpy(), atol=1e-9
    )


@pytest.mark.parametrize(
    "query, message",
    [
        ("mlops_absent_metric", "returned no data"),
        (
            'label_replace(mlops_cpu_usage_pct, "job", "a", "", "") or label_replace(mlops_cpu_usage_pct, "job", "b", "", "")',
            "4 series that no single label tells apart",
        ),
        ('mlops_nan{instance="node-1"}', "1 NaN/Inf samples"),
        ('mlops_gappy{instance="node-1"}', r"missing steps of 361 \(longest gap \d+ steps"),
        ("rate(mlops_cpu_usage_pct[5m", "refused the query .*bad_data"),
    ],
)
def test_bad_series_are_clear_errors(prometheus, query, message):
    url, end, _ = prometheus
    with pytest.raises(DataError, match=message):
        fetch_range(url, {**QUERIES, "cpu_usage_pct": query}, lookback_s=6 * 3600, step_s=60, end=end)


def test_nodes_that_join_or_leave_inside_the_window_keep_the_steps_they_have(prometheus, caplog):
    """A node that joined or left inside the window, or a window reaching before the metrics
    begin (a lookback longer than the cluster's history), is not a gap: each entity's rows are
    the steps where every feature has a sample, and what is left out is logged. A gap between
    samples is still refused (above); an entity none of whose steps has every feature is
    refused by name."""
    import logging

    url, end, _ = prometheus
    with caplog.at_level(logging.WARNING, logger="anomaly_mlops.sources.prometheus"):
        frame = fetch_range(url, {**QUERIES, "cpu_usage_pct": "mlops_fleet"}, lookback_s=6 * 3600, step_s=60, end=end)
    rows = frame.groupby("entity").timestamp.agg(["count", "min", "max"])
    # node-3's last sample answers 5 more steps: Prometheus' 5-minute lookback (back-filled
    # history has no staleness marker)
    assert rows["count"].to_dict() == {"node-1": 361, "node-2": 61, "node-3": 205}
    assert rows.loc["node-2", "max"].timestamp() == end and rows.loc["node-3", "min"] == rows.loc["node-1", "min"]
    assert frame.cpu_usage_pct.notna().all() and set(frame[frame.entity == "node-2"].cpu_usage_pct) == {2.0}
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "entity node-2 has samples of every feature from" in warned and "300 of 361 steps left out" in warned
    assert "entity node-3" in warned and "156 of 361 steps left out" in warned
    # the window reaching 6 hours before the history: the history's 361 steps, from its start
    longer = fetch_range(url, QUERIES, lookback_s=12 * 3600, step_s=60, end=end)
    assert len(longer) == 361 and longer.timestamp.iloc[0] == rows.loc["node-1", "min"]
    # node-3's metric ended before node-2's began: no step has both
    late_and_gone = {
        **QUERIES,
        "cpu_usage_pct": 'mlops_fleet{instance="node-2"}',
        "disk_io_mbps": 'mlops_fleet{instance="node-3"}',
    }
    with pytest.raises(DataError, match="entity 'all' has no step at which every feature has a sample"):
        fetch_range(url, late_and_gone, lookback_s=6 * 3600, step_s=60, end=end)
    with pytest.raises(DataError, match="returned no data between"):
        fetch_range(url, QUERIES, lookback_s=3600, step_s=60, end=end + 5 * 3600)  # past the history


def test_an_answer_over_the_size_bound_is_fetched_again_as_halves(prometheus, monkeypatch, caplog):
    """A fleet answering more than the bound for one piece: each piece too large is fetched
    again as two halves (a few hundred nodes at 60 s answer more than 64 MiB for 11,000
    steps); the frame is the one fetched whole. Too large still after MAX_ANSWER_SPLITS
    halvings: refused with advice (test_prometheus_faults)."""
    import logging

    import anomaly_mlops.sources.prometheus as source

    url, end, _ = prometheus
    queries = {**QUERIES, "cpu_usage_pct": "mlops_fleet"}  # three nodes, about 10 kB for 6 hours
    whole = fetch_range(url, queries, lookback_s=6 * 3600, step_s=60, end=end)
    monkeypatch.setattr(source, "MAX_ANSWER_BYTES", 4096)
    with caplog.at_level(logging.INFO, logger="anomaly_mlops.sources.prometheus"):
        halves = fetch_range(url, queries, lookback_s=6 * 3600, step_s=60, end=end)
    assert "'cpu_usage_pct': the answer for 361 steps is too large; fetching them as halves" in caplog.text
    assert halves.equals(whole)
    monkeypatch.setattr(source, "MAX_ANSWER_BYTES", 256)
    with pytest.raises(
        DataError, match=r"more than 0.000244141 MiB for 'cpu_usage_pct', fetched in pieces of 22 steps"
    ):
        fetch_range(url, queries, lookback_s=6 * 3600, step_s=60, end=end)


def test_short_gaps_can_be_filled(prometheus):
    url, end, _ = prometheus
    frame = fetch_range(
        url, {"gappy": 'mlops_gappy{instance="node-1"}'}, lookback_s=6 * 3600, step_s=60, end=end, max_gap_steps=60
    )
    assert frame.gappy.notna().all() and (frame.gappy == 1).all()


def test_several_series_become_entities(prometheus):
    """node-1 and node-2 report cpu_usage_pct: one entity each; single-series queries
    apply to both."""
    url, end, expected = prometheus
    frame = fetch_range(
        url, {**QUERIES, "cpu_usage_pct": "mlops_cpu_usage_pct"}, lookback_s=6 * 3600, step_s=60, end=end
    )
    assert sorted(frame.entity.unique()) == ["node-1", "node-2"] and len(frame) == 2 * 361
    by_entity = {e: rows.reset_index(drop=True) for e, rows in frame.groupby("entity")}
    np.testing.assert_allclose(by_entity["node-2"].cpu_usage_pct - by_entity["node-1"].cpu_usage_pct, 1.0, atol=1e-9)
    np.testing.assert_allclose(by_entity["node-2"].memory_usage_pct, expected.memory_usage_pct.to_numpy(), atol=1e-9)


def test_long_windows_are_fetched_in_pieces(prometheus):
    """6 hours at 1 s is 21,601 steps: more than one query_range may return (11,000)."""
    from anomaly_mlops.sources.prometheus import PrometheusClient

    url, end, expected = prometheus
    client = PrometheusClient(url)
    calls = []
    original = client._range_once
    client._range_once = lambda *a, **k: calls.append(a[1:3]) or original(*a, **k)
    (series,) = client.range('mlops_memory_usage_pct{instance="node-1"}', end - 6 * 3600, end, 1, "memory")
    stamps, samples = series["values"]  # arrays, joined over the pieces
    assert len(calls) == 2 and len(stamps) == len(samples) == 6 * 3600 + 1
    assert stamps.dtype == np.int64 and samples.dtype == np.float64 and (np.diff(stamps) == 1).all()
    values = dict(zip(stamps.tolist(), samples.tolist()))
    stamps = expected.index[::30]
    np.testing.assert_allclose([values[int(t)] for t in stamps], expected.memory_usage_pct.loc[stamps], atol=1e-9)


def test_unreachable_prometheus_and_bad_settings(tmp_path):
    with pytest.raises(DataError, match="cannot reach Prometheus"):
        fetch_range(f"http://127.0.0.1:{free_port()}", QUERIES, lookback_s=3600, timeout_s=2)
    with pytest.raises(ConfigError, match="CA bundle not found"):
        fetch_range("https://x", QUERIES, lookback_s=3600, ca_bundle=str(tmp_path / "none.crt"))
    with pytest.raises(ConfigError, match="durations look like"):
        parse_duration("7 days")
    assert parse_duration("7d") == 604800


def test_data_step_from_prometheus_with_a_labelled_holdout(prometheus, tmp_path):
    url, end, expected = prometheus
    (tmp_path / "q.yaml").write_text(yaml.safe_dump({"queries": QUERIES}))
    assert load_queries(tmp_path / "q.yaml") == QUERIES
    generate_synthetic(rows=2000, seed=5).to_parquet(tmp_path / "labelled.parquet")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "anomaly_mlops.adapters.cli",
            "data",
            "--source",
            "prometheus",
            "--prometheus-url",
            url,
            "--queries",
            str(tmp_path / "q.yaml"),
            "--lookback",
            "6h",
            "--step",
            "60s",
            "--end",
            str(end),
            "--holdout-source",
            str(tmp_path / "labelled.parquet"),
            "--out",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["train_rows"] == 361 and summary["holdout_rows"] == 2000 and summary["holdout_anomalies"] > 0
    train = __import__("pandas").read_parquet(tmp_path / "data/train.parquet")
    np.testing.assert_allclose(train.memory_usage_pct.to_numpy(), expected.memory_usage_pct.to_numpy(), atol=1e-9)
