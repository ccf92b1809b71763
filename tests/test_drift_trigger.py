"""The drift trigger (manifests/tekton/triggers/drift-*.yaml, manifests/monitoring): an
Alertmanager notification of a drift alert starts one retraining PipelineRun per served model
version, with the labels the alert carries, and nothing else starts one. The listener is
tests/tekton_listener.py: Tekton's CEL, binding and creation rules, cited there."""

from __future__ import annotations

import copy

import pytest
import yaml
from tekton_listener import ROOT, DriftListener, Refused, alertmanager_message

from anomaly_mlops.params import DriftAlertParams
from anomaly_mlops.serving.alert_rules import DRIFT_ALERTS, FLAGGING_ALERT, RETRAINING_ALERTS, rule_groups

import crd_schema

TOKEN = "0123456789abcdef0123"
SECRETS = {("anomaly-mlops-alerts", "authorization"): f"Bearer {TOKEN}", ("anomaly-mlops-alerts", "token"): TOKEN}
SIGNED = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
def listener() -> DriftListener:
    return DriftListener(SECRETS)


def test_a_new_normal_starts_a_retraining_of_that_version_on_its_latest_metrics(listener):
    """AnomalyDetectorNewNormal (the flagging alert's condition held --retrain-after) starts
    the run, which fetches as much: every row it fits is after the move."""
    run = listener.receive(alertmanager_message(), SIGNED)
    assert run["kind"] == "PipelineRun" and run["metadata"]["name"] == "drift-anomaly-detector-v20261207-0342-ab12cd34"
    assert run["metadata"]["labels"]["anomaly-mlops/drifted-version"] == "v20261207-0342-ab12cd34"
    params = {p["name"]: p["value"] for p in run["spec"]["params"]}
    assert params["champion"] == "serving:models/anomaly-detector"
    assert params["namespace"] == "models" and params["isvc-name"] == params["model-name"] == "anomaly-detector"
    assert params["prometheus-url"].startswith("https://thanos-querier.openshift-monitoring.svc")
    assert params["lookback"] == DriftAlertParams().retrain_after == "36h"
    if crd_schema.available():
        assert crd_schema.errors(run) == []
    # the pipeline it names takes every one of those params, and passes the lookback to the data task
    pipeline = yaml.safe_load((ROOT / "manifests" / "tekton" / "pipeline-retraining.yaml").read_text())
    assert set(params) <= {p["name"] for p in pipeline["spec"]["params"]}
    (data,) = [t for t in pipeline["spec"]["tasks"] if t["name"] == "data"]
    assert {"name": "lookback", "value": "$(params.lookback)"} in data["params"]
    # the listener names the alerts alert_rules.py says start a run, and not the flagging alert
    (filtered,) = [p["value"] for p in listener.trigger["interceptors"][0]["params"] if p["name"] == "filter"]
    assert all(f"'{name}'" in filtered for name in RETRAINING_ALERTS) and f"'{FLAGGING_ALERT}'" not in filtered


def test_a_storm_or_a_replay_of_one_episode_starts_one_run(listener):
    first = alertmanager_message()
    listener.receive(first, SIGNED)
    later = alertmanager_message(alertnames=DRIFT_ALERTS, starts_at="2026-12-07T05:10:00Z")  # both alerts now
    for message in (first, first, later):  # the replay, then the repeat_interval's notifications
        with pytest.raises(Refused, match="already exists"):
            listener.receive(message, SIGNED)
    assert len(listener.created) == 1
    # another version of the model (a canary drifting) is another run
    other = alertmanager_message({"namespace": "models", "model": "anomaly-detector", "version": "v2"})
    listener.receive(other, SIGNED)
    assert sorted(listener.created) == ["drift-anomaly-detector-v2", "drift-anomaly-detector-v20261207-0342-ab12cd34"]


@pytest.mark.parametrize(
    "message, headers, why",
    [
        (alertmanager_message(status="resolved"), SIGNED, "a resolved notification"),
        (alertmanager_message(alertnames=("KubePodCrashLooping",)), SIGNED, "another alert"),
        (alertmanager_message(alertnames=(FLAGGING_ALERT,)), SIGNED, "flagging not yet held as a new normal"),
        (alertmanager_message({"namespace": "models", "model": "anomaly-detector"}), SIGNED, "no version label"),
        (alertmanager_message({"model": "anomaly-detector", "version": "v1"}), SIGNED, "no namespace label"),
        (alertmanager_message({"namespace": "models", "model": "", "version": "v1"}), SIGNED, "an empty model"),
        (
            alertmanager_message({"namespace": "models", "model": "Anomaly-Detector", "version": "v1"}),
            SIGNED,
            "a model that is no object name",
        ),
        (
            alertmanager_message({"namespace": "models", "model": "a" * 40, "version": "v1"}),
            SIGNED,
            "a name too long for a run",
        ),
        (
            alertmanager_message({"namespace": "models", "model": "m", "version": "v1 && true"}),
            SIGNED,
            "a version that is no version",
        ),
        (alertmanager_message(), {"Authorization": "Bearer wrong"}, "a wrong token"),
        (alertmanager_message(), {}, "no token"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_anything_but_a_signed_firing_drift_alert_with_its_labels_starts_nothing(listener, message, headers, why):
    with pytest.raises(Refused):
        listener.receive(message, headers)
    assert listener.created == {}


def test_template_params_have_no_defaults_so_a_missing_label_never_binds_silently(listener):
    """Tekton fills a param whose JSONPath finds nothing with the template's default
    (tektoncd/triggers v0.37.0 pkg/template/event.go l.127-138). Past a filter that let it
    through, an alert without ``version`` would start a run for the version "latest" with a
    default; the shipped template has none, so the event fails at the binding."""
    template = listener.objects[("TriggerTemplate", "anomaly-mlops-retrain-on-drift")]
    assert all("default" not in p for p in template["spec"]["params"])
    with_default = copy.deepcopy(template)
    for param in with_default["spec"]["params"]:
        if param["name"] == "version":
            param["default"] = "latest"
    permissive = [
        {"name": "filter", "value": "true"},
        {"name": "overlays", "value": [{"key": "run_name", "expression": "'drift-' + body.groupLabels.model"}]},
    ]
    message = alertmanager_message({"namespace": "models", "model": "anomaly-detector"})
    defaulted = DriftListener(SECRETS, template_override=with_default)
    defaulted.trigger = copy.deepcopy(defaulted.trigger)
    defaulted.trigger["interceptors"][0]["params"] = permissive
    run = defaulted.receive(message, SIGNED)
    assert run["metadata"]["labels"]["anomaly-mlops/drifted-version"] == "latest"
    shipped = DriftListener(SECRETS)
    shipped.trigger = copy.deepcopy(shipped.trigger)
    shipped.trigger["interceptors"][0]["params"] = permissive
    with pytest.raises(Refused, match="failed to replace JSONPath value for param version"):
        shipped.receive(message, SIGNED)


def test_the_alertmanager_route_groups_the_drift_alerts_by_the_labels_the_trigger_binds():
    config = yaml.safe_load((ROOT / "manifests" / "monitoring" / "alertmanager-config.yaml").read_text())
    route = config["spec"]["route"]
    assert route["groupBy"] == ["namespace", "model", "version"]
    (receiver,) = config["spec"]["receivers"]
    (webhook,) = receiver["webhookConfigs"]
    assert webhook["url"] == "http://el-anomaly-mlops-drift.anomaly-mlops.svc.cluster.local:8080"
    assert webhook["sendResolved"] is False
    assert webhook["httpConfig"]["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "anomaly-mlops-alerts", "key": "token"},
    }
    # the alerts carry the matched label and the grouped ones
    alerts = [r for r in rule_groups(DriftAlertParams(max_psi=2.0))["groups"][0]["rules"] if "alert" in r]
    assert sorted(r["alert"] for r in alerts) == sorted(DRIFT_ALERTS)
    for rule in alerts:
        (matcher,) = route["matchers"]
        assert rule["labels"][matcher["name"]] == matcher["value"]
        assert "namespace, model, version" in rule["expr"]
