"""The drift alerts (serving/alert_rules.py, manifests/monitoring): the committed PrometheusRule
is what `anomaly-mlops alert-rules` writes and the operator's CRD accepts, and Prometheus' own
rule engine (promtool test rules) fires each alert once per drift episode, with the labels
that name the model version, and never on ordinary traffic or on too few rows."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from anomaly_mlops.adapters.cli import main
from anomaly_mlops.model.drift import ScoreReference
from anomaly_mlops.params import DriftAlertParams
from anomaly_mlops.serving.alert_rules import (
    DRIFT_ALERTS,
    FLAGGING_ALERT,
    NEW_NORMAL_ALERT,
    SCORE_DRIFT_ALERT,
    prometheus_rule,
    rule_groups,
)

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "manifests" / "monitoring" / "prometheus-rule.yaml"
needs_promtool = pytest.mark.skipif(
    not shutil.which("promtool"), reason="promtool is not installed: run `make prometheus` (Debian package prometheus)"
)


def test_the_committed_rule_is_what_alert_rules_writes(tmp_path):
    assert yaml.safe_load(COMMITTED.read_text()) == prometheus_rule()
    assert main(["alert-rules", "--out", str(tmp_path / "rule.yaml")]) == 0
    assert (tmp_path / "rule.yaml").read_text() == COMMITTED.read_text()


@pytest.mark.skipif(not __import__("crd_schema").available(), reason="../shared/schemas not found beside the checkout")
def test_the_prometheus_rule_validates_against_the_operators_crd():
    from test_manifests import kustomize

    import crd_schema

    built = kustomize("monitoring")
    assert [doc["kind"] for doc in built] == ["PrometheusRule"]
    assert crd_schema.errors(built[0]) == []
    tuned = prometheus_rule(DriftAlertParams(window="30m", hold="5m", flagged_ratio=3, max_psi=0.5), "models")
    assert [r.get("alert") for r in tuned["spec"]["groups"][0]["rules"] if "alert" in r] == list(DRIFT_ALERTS)
    assert crd_schema.errors(tuned) == []
    broken = prometheus_rule()
    broken["spec"]["groups"][0]["rules"][-1]["for"] = "fifteen minutes"
    assert crd_schema.errors(broken)  # the validation would catch a bad duration


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--window", "1 hour"], "--window must be a Prometheus duration"),
        (["--for=-5m"], "--for must be a Prometheus duration"),
        (["--retrain-after", "1.5d"], "--retrain-after must be a Prometheus duration"),
        (["--for", "1h30m", "--retrain-after", "89m"], "--retrain-after (89m) must be at least --for (1h30m)"),
        # a zero range is a PromQL parse error (promtool: "duration must be greater than 0")
        (["--window", "0m"], "--window must be longer than 0, got '0m'"),
        (["--for", "0s", "--retrain-after", "0s"], "--retrain-after must be longer than 0"),
        (["--flagged-ratio", "1"], "--flagged-ratio must be a finite number above 1"),
        (["--flagged-ratio", "inf"], "--flagged-ratio must be a finite number above 1"),
        (["--max-psi", "0"], "--max-psi must be a finite number above 0"),
        (["--max-psi", "-1"], "--max-psi must be a finite number above 0"),
        (["--max-psi", "inf"], "--max-psi must be a finite number above 0"),
        (["--min-rows", "0"], "--min-rows must be at least 1"),
        (["--name", "Drift_Rules"], "--name must be a Kubernetes object name"),
    ],
)
def test_bad_settings_are_refused_with_one_line(flags, message, capsys, tmp_path):
    assert main(["alert-rules", *flags, "--out", str(tmp_path / "x.yaml")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()


@needs_promtool
def test_prometheus_accepts_the_rule_file(tmp_path):
    path = tmp_path / "rules.yaml"
    assert main(["alert-rules", "--rule-file", "--out", str(path)]) == 0
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 7 rules found" in checked.stdout  # five recorded series, the flagging and new-normal alerts
    path.write_text(yaml.safe_dump(rule_groups(DriftAlertParams(max_psi=2.0))))
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert "SUCCESS: 8 rules found" in checked.stdout, checked.stdout + checked.stderr


# The scenario promtool plays, one sample a minute. Model version v1: ordinary traffic (served
# scores spread as the calibration's, flagged at the calibrated 2%) for 120 minutes, then a
# drift (half the rows flagged, scores in the top two bins) until minute 240, then ordinary
# again. v2 (another version of the same model): ordinary all along. v3: the same drift as
# v1 on 5 rows a minute, below the 500 rows an hour the alerts need.
REFERENCE = [0.1] * 10
CALIBRATED = 0.02
ORDINARY = ([10.0] * 10, 2.0)  # rows per minute per bin, flagged per minute
DRIFTED = ([1.25] * 8 + [45.0, 45.0], 50.0)
MINUTES = 360


def _cumulative(per_minute) -> str:
    """promtool's values for a counter growing by per_minute(t) each minute."""
    total, values = 0.0, []
    for t in range(MINUTES + 1):
        values.append(f"{total:g}")
        total += per_minute(t)
    return " ".join(values)


def _series(version: str, drifting: bool, scale: float = 1.0) -> list[dict]:
    def phase(t):
        return DRIFTED if drifting and 120 <= t < 240 else ORDINARY

    labels = f'namespace="models",model="anomaly-detector",version="{version}",pod="{version}-pod"'
    series = [
        {
            "series": f"anomaly_detector_rows_scored_total{{{labels}}}",
            "values": _cumulative(lambda t: scale * sum(phase(t)[0])),
        },
        {
            "series": f"anomaly_detector_rows_flagged_total{{{labels}}}",
            "values": _cumulative(lambda t: scale * phase(t)[1]),
        },
        {"series": f"anomaly_detector_calibrated_flagged_share{{{labels}}}", "values": f"{CALIBRATED}x{MINUTES}"},
    ]
    for i, share in enumerate(REFERENCE):
        series.append(
            {
                "series": f'anomaly_detector_score_bin_rows_total{{{labels},bin="{i}"}}',
                "values": _cumulative(lambda t, i=i: scale * phase(t)[0][i]),
            }
        )
        series.append(
            {
                "series": f'anomaly_detector_score_bin_reference_share{{{labels},bin="{i}"}}',
                "values": f"{share}x{MINUTES}",
            }
        )
    return series


def _drift_psi() -> float:
    """What Python's PSI (steps/champion.psi's) says of the drifted window."""
    reference = ScoreReference(tuple(np.arange(1, 10) / 10), tuple(REFERENCE), CALIBRATED)
    return reference.psi(np.array(DRIFTED[0]))


@needs_promtool
def test_each_alert_fires_once_per_drift_episode_with_the_version_it_concerns(tmp_path):
    params = DriftAlertParams(window="1h", hold="15m", retrain_after="90m", flagged_ratio=5, max_psi=0.25)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(params)))
    v1 = {"namespace": "models", "model": "anomaly-detector", "version": "v1"}
    alert_labels = {**v1, "severity": "warning", "component": "anomaly-detector"}
    rule = {r.get("alert"): r for r in rule_groups(params)["groups"][0]["rules"]}
    psi = _drift_psi()

    def annotations(alert: str, value: str) -> dict:
        return {
            "summary": rule[alert]["annotations"]["summary"]
            .replace("{{ $labels.model }}", v1["model"])
            .replace("{{ $labels.version }}", v1["version"])
            .replace("{{ $labels.namespace }}", v1["namespace"]),
            "description": rule[alert]["annotations"]["description"]
            .replace("{{ $value | humanizePercentage }}", value)
            .replace('{{ $value | printf "%.2f" }}', value),
        }

    firing = [
        {"exp_labels": alert_labels, "exp_annotations": annotations(FLAGGING_ALERT, "50%")},
    ]
    drift_firing = [{"exp_labels": alert_labels, "exp_annotations": annotations(SCORE_DRIFT_ALERT, f"{psi:.2f}")}]
    new_normal = [{"exp_labels": alert_labels, "exp_annotations": annotations(NEW_NORMAL_ALERT, "50%")}]
    checks = []
    for minute, flagging, drift, retrain in (
        (119, [], [], []),  # ordinary traffic: nothing, for any version
        (125, [], [], []),  # the drift has begun; the window still holds mostly ordinary rows
        (180, firing, [], []),  # the episode: the flagging alert once, for v1 only (v3 has too few rows) ...
        (230, firing, drift_firing, new_normal),  # ... still the same one; held 90 minutes: the retraining alerts
        (355, [], [], []),  # traffic back to ordinary for more than a window: resolved
    ):
        checks.append({"eval_time": f"{minute}m", "alertname": FLAGGING_ALERT, "exp_alerts": flagging})
        checks.append({"eval_time": f"{minute}m", "alertname": SCORE_DRIFT_ALERT, "exp_alerts": drift})
        checks.append({"eval_time": f"{minute}m", "alertname": NEW_NORMAL_ALERT, "exp_alerts": retrain})
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [*_series("v1", True), *_series("v2", False), *_series("v3", True, scale=0.05)],
                "alert_rule_test": checks,
                "promql_expr_test": [
                    {  # the recorded PSI is Python's PSI of the same counts (v2's traffic is ordinary)
                        "expr": f"abs(anomaly_detector:score_psi:1h - {psi!r}) < bool 1e-9",
                        "eval_time": "230m",
                        "exp_samples": [
                            {"labels": f'{{namespace="models",model="anomaly-detector",version="{v}"}}', "value": same}
                            for v, same in (("v1", 1), ("v2", 0), ("v3", 1))
                        ],
                    },
                    {
                        "expr": "anomaly_detector:score_psi:1h < bool 1e-9",
                        "eval_time": "110m",
                        "exp_samples": [
                            {"labels": f'{{namespace="models",model="anomaly-detector",version="{v}"}}', "value": 1}
                            for v in ("v1", "v2", "v3")
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, width=10**9))
    ran = subprocess.run(["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]


@needs_promtool
def test_the_episode_test_fails_against_a_rule_that_alerts_on_every_row(tmp_path):
    """The promtool scenario can fail: a rule without the hold and the row floor fires for
    the low-traffic version too."""
    params = DriftAlertParams(window="1h", hold="0m", flagged_ratio=5, min_rows=1)
    groups = rule_groups(params)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups))
    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _series("v3", True, scale=0.05),
                "alert_rule_test": [{"eval_time": "230m", "alertname": FLAGGING_ALERT, "exp_alerts": []}],
            }
        ],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test, width=10**9))
    ran = subprocess.run(["promtool", "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode != 0 and FLAGGING_ALERT in ran.stdout + ran.stderr
