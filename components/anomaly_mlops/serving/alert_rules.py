"""Alerting as code: the drift rules over the signals both servers export (protocol.py:
rows scored and flagged, served scores per bin of the calibration deciles, and the model's
calibrated flagged share and bin shares), as a PrometheusRule (monitoring.coreos.com/v1) or
the plain rule file a Prometheus outside the operator reads (``anomaly-mlops alert-rules``;
the committed manifests/monitoring/prometheus-rule.yaml is its default output).

Recording rules turn the counters into windows summed over replicas and worker processes, by
namespace, model and version; the alerts compare them with the model's own calibration:

- AnomalyDetectorFlaggingAboveCalibration: the share of rows flagged over the window is more
  than ``flagged_ratio`` times the share the model was calibrated to flag (at least 1%);
- AnomalyDetectorNewNormal: the same condition, held ``retrain_after`` (36 hours): the
  machines have not come back, so it is a new normal, not an incident. It is what starts the
  retraining (the drift EventListener), which then fetches as much (every fitted row is
  after the move; a run started at the first alert would fit the old normal and hold the
  new one out, and validate would refuse it), and an incident shorter than that never
  retrains the model on itself;
- AnomalyDetectorScoreDrift, only with ``max_psi``: the served scores' PSI against the
  calibration scores is above it (the PSI *validate* gates a challenger on:
  steps/champion.psi), held ``retrain_after``, as it starts a retraining too. The PSI is
  recorded either way; on the shared labelled machines it is above 0.5 in most ordinary
  windows (time of day, the calibration period), so it is no default alarm.

Each holds only when the window has ``min_rows`` rows (a PSI over few rows is noise: about
(bins - 1) / rows by chance), and fires after its hold: one alert per episode, which
resolves when the traffic returns (a retrained model, or the machines' old normal).
"""

from __future__ import annotations

from anomaly_mlops.model.drift import PSI_FLOOR
from anomaly_mlops.params import DriftAlertParams
from anomaly_mlops.serving.protocol import (
    CALIBRATED_FLAGGED_METRIC,
    FLAGGED_ROWS_METRIC,
    SCORE_BIN_REFERENCE_METRIC,
    SCORE_BIN_ROWS_METRIC,
    SCORED_ROWS_METRIC,
)

FLAGGING_ALERT = "AnomalyDetectorFlaggingAboveCalibration"
NEW_NORMAL_ALERT = "AnomalyDetectorNewNormal"
SCORE_DRIFT_ALERT = "AnomalyDetectorScoreDrift"
DRIFT_ALERTS = (FLAGGING_ALERT, NEW_NORMAL_ALERT, SCORE_DRIFT_ALERT)
RETRAINING_ALERTS = (NEW_NORMAL_ALERT, SCORE_DRIFT_ALERT)  # those the drift EventListener starts a run on
BY = "namespace, model, version"  # one series per served model version
CALIBRATED_FLOOR = 0.01


def rule_groups(params: DriftAlertParams | None = None) -> dict:
    """The rule file's content (also a PrometheusRule's spec): one group."""
    p = params or DriftAlertParams()
    p.check()
    w = p.window

    def increase(metric: tuple, by: str = BY) -> str:
        return f"sum by ({by}) (increase({metric[0]}_total[{w}]))"

    floor = repr(PSI_FLOOR)
    served = f"clamp_min({p.recorded('score_bin_share')}, {floor})"
    reference = f"clamp_min(max by ({BY}, bin) ({SCORE_BIN_REFERENCE_METRIC[0]}), {floor})"
    enough = f"on({BY}) {p.recorded('rows_scored')} >= {p.min_rows}"

    def labels() -> dict:  # a copy per alert: YAML would otherwise write anchors
        return {"severity": p.severity, "component": "anomaly-detector"}

    where = "{{ $labels.model }} version {{ $labels.version }} in {{ $labels.namespace }}"
    flagging = f"({p.recorded('flagged_share')} > on({BY}) {p.flagged_ratio} * anomaly_detector:calibrated_flagged_share) and {enough}"
    rules = [
        {"record": p.recorded("rows_scored"), "expr": increase(SCORED_ROWS_METRIC)},
        {
            "record": p.recorded("flagged_share"),
            "expr": f"{increase(FLAGGED_ROWS_METRIC)} / {increase(SCORED_ROWS_METRIC)}",
        },
        {  # at least CALIBRATED_FLOOR: a model calibrated to flag nothing would alert on any flag
            "record": "anomaly_detector:calibrated_flagged_share",
            "expr": f"clamp_min(max by ({BY}) ({CALIBRATED_FLAGGED_METRIC[0]}), {CALIBRATED_FLOOR!r})",
        },
        {
            "record": p.recorded("score_bin_share"),
            "expr": f"{increase(SCORE_BIN_ROWS_METRIC, BY + ', bin')} / ignoring(bin) group_left "
            f"{increase(SCORE_BIN_ROWS_METRIC)}",
        },
        {
            "record": p.recorded("score_psi"),
            "expr": f"sum by ({BY}) (({served} - on({BY}, bin) {reference}) * "
            f"ln({served} / on({BY}, bin) {reference}))",
        },
        {
            "alert": FLAGGING_ALERT,
            "expr": flagging,
            "for": p.hold,
            "labels": labels(),
            "annotations": {
                "summary": f"Anomaly detector {where} flags far more rows than it was calibrated to",
                "description": f"{{{{ $value | humanizePercentage }}}} of the rows scored in the last {w} were "
                f"flagged, more than {p.flagged_ratio:g} times the share the model was calibrated to flag. The "
                f"machines it watches may have moved to a new normal; if it still holds after {p.retrain_after}, "
                f"{NEW_NORMAL_ALERT} starts the retraining on the latest {p.retrain_after} of data.",
            },
        },
        {
            "alert": NEW_NORMAL_ALERT,
            "expr": flagging,
            "for": p.retrain_after,
            "labels": labels(),
            "annotations": {
                "summary": f"Anomaly detector {where} has flagged far more rows than calibrated for {p.retrain_after}",
                "description": f"{{{{ $value | humanizePercentage }}}} of the rows scored in the last {w} were "
                f"flagged, and the share has stayed above {p.flagged_ratio:g} times the calibrated share for "
                f"{p.retrain_after}: a new normal, not an incident. The drift trigger retrains the model on the "
                f"latest {p.retrain_after} of data.",
            },
        },
    ]
    if p.max_psi is not None:
        rules.append(
            {
                "alert": SCORE_DRIFT_ALERT,
                "expr": f"({p.recorded('score_psi')} > {p.max_psi}) and {enough}",
                "for": p.retrain_after,  # it starts a retraining too: a lasting shift, as the new normal's
                "labels": labels(),
                "annotations": {
                    "summary": f"Served scores of {where} have drifted from its calibration scores",
                    "description": f"The population stability index of the scores served in the last {w} against "
                    f'the model\'s calibration scores is {{{{ $value | printf "%.2f" }}}} (alert above {p.max_psi:g}). '
                    "The traffic no longer looks like the data the model was trained on: retrain on recent data.",
                },
            }
        )
    return {"groups": [{"name": p.name, "rules": rules}]}


def prometheus_rule(params: DriftAlertParams | None = None, namespace: str | None = None) -> dict:
    """The PrometheusRule object (monitoring.coreos.com/v1) holding rule_groups."""
    p = params or DriftAlertParams()
    metadata = {"name": p.name, "labels": {"app.kubernetes.io/part-of": "anomaly-mlops"}}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": rule_groups(p),
    }
