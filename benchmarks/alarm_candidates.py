"""Alarms that might hold under drift, against the shipped static threshold, machine by
machine: every shared SMD machine and NAB series fitted as `anomaly-mlops evaluate` fits it
(the default detector, forest seeds --seeds), then the test part's flags under each rule:

  static                 the model's own threshold (what the servers answer today)
  hold, H h              per entity, an exponential average of the flags with a half-life of
                         H hours; above 0.5 the entity is "in drift" and its rows are not
                         flagged until the average falls below 0.25 (one episode, said once)
  new-normal hold, H h   per entity, once the new-normal alert's condition (a fifth of its rows
                         flagged over 6 hours, steps/evaluate._DriftAlert) has held H hours,
                         its rows are not flagged until the condition fails: the alert says
                         so once, the served answers stop flagging
  window-mean hold       rows whose feature window's mean lies outside the range of the
                         fitted rows' window means are drift, not flagged
  adaptive quantile      the threshold rises to the 98th percentile of the entity's scores over
                         the previous day (calibration from recent unlabelled rows)
  PCA error              squared reconstruction error of the standardized metrics from the
                         principal axes that explain 90% of their variance, smoothed as the
                         scores are, its 98th calibration percentile as threshold (multivariate
                         series only)
  IF or PCA              flagged when either score is above its 99th calibration percentile
  best threshold         NOT A RULE: the forest's scores flagged above the threshold that gives
                         the best F1 on each series' own test labels (a different one per series),
                         the bound of any threshold on these scores, label-free or not

Labels are never used to set a rule. Printed per dataset: mean F1, the worst series, the
series the rule loses on against static, the PR-AUC of its scores, the share of rows flagged
(mean and largest).
Usage: .venv/bin/python benchmarks/alarm_candidates.py [--data-dir ../shared/data] [--seeds 42,7,1]"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import shared_series, versus_static  # noqa: E402

from anomaly_mlops.model.features import smooth_scores, smoothing_rows  # noqa: E402
from anomaly_mlops.params import TrainParams  # noqa: E402
from anomaly_mlops.steps.evaluate import _DriftAlert, _figures, as_evaluated  # noqa: E402
from anomaly_mlops.steps.train import calibrate, fit_scores  # noqa: E402

HALF_LIVES_H = (6, 24, 72)
NEW_NORMAL_HOLDS_H = (12, 36)
BOUND = "best threshold (labels: a bound)"


def ema_hold(flagged: np.ndarray, half_life_rows: float, start: float) -> np.ndarray:
    """Rows held (not flagged) by the exponential-average episode rule."""
    rate = 1 - 0.5 ** (1 / max(half_life_rows, 1.0))
    average, holding = start, False
    held = np.empty(len(flagged), dtype=bool)
    for i, flag in enumerate(flagged):
        holding = average > (0.25 if holding else 0.5)
        held[i] = holding
        average += rate * (flag - average)
    return held


def window_mean_drift(transform, X: np.ndarray, fitted: np.ndarray, n_train: int) -> np.ndarray | None:
    """Test rows whose window mean (features minus deviations) lies outside the fitted rows'."""
    if "deviation" not in transform.columns:
        return None
    F = transform.apply(X)
    m = X.shape[1]
    i = transform.columns.index("deviation")
    means = F[:, :m] - F[:, m * (1 + i) : m * (2 + i)]
    lo, hi = means[:n_train][fitted].min(axis=0), means[:n_train][fitted].max(axis=0)
    return (((means[n_train:] < lo) | (means[n_train:] > hi)) & (hi > lo)).any(axis=1)


def pca_error(X: np.ndarray, fitted: np.ndarray, n_train: int, smoothing: int) -> np.ndarray:
    fit = X[:n_train][fitted]
    center, scale = fit.mean(axis=0), fit.std(axis=0)
    scale[scale == 0] = 1.0
    values, axes = np.linalg.eigh(np.cov(((fit - center) / scale).T))
    order = np.argsort(values)[::-1]
    values, axes = values[order], axes[:, order]
    kept = axes[:, : int(np.searchsorted(np.cumsum(values) / values.sum(), 0.9) + 1)]
    Z = (X - center) / scale
    return smooth_scores(((Z - Z @ kept @ kept.T) ** 2).sum(axis=1), smoothing)


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score at and above which flagging gives the best F1 on these labels."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def rules_for(series, params: TrainParams, window: int, smoothing: int) -> dict:
    X = np.vstack([series.train, series.test])
    n = len(series.train)
    k = smoothing_rows(smoothing, series.interval_s)
    left_out = None if series.train_labels is None or params.fit_labelled_anomalies else series.train_labels == 1
    _, transform, raw, held, fitted, _ = fit_scores(
        X, params, window, series.interval_s, train_rows=n, labelled_anomalous=left_out
    )
    scores, threshold, _ = calibrate(raw, held, params, k)
    test = scores[n:]
    flagged = test > threshold
    labels = series.labels
    out = {"static": _figures(labels, test, flagged)}
    best = best_f1_threshold(labels, test)
    out[BOUND] = _figures(labels, test, test >= best)
    out[BOUND]["held_quantile"] = float(np.mean(scores[:n][held] < best))  # the shipped one: 1 - contamination
    calibrated = float(np.mean(scores[:n][held] > threshold))
    for hours in HALF_LIVES_H:
        hold = ema_hold(flagged, hours * 3600 / series.interval_s, calibrated)
        out[f"hold, {hours} h"] = _figures(labels, test, flagged & ~hold)
    for hours in NEW_NORMAL_HOLDS_H:
        alert = _DriftAlert.shipped(series.interval_s, hours * 3600)
        out[f"new-normal hold, {hours} h"] = _figures(labels, test, flagged & ~alert.firing(flagged, calibrated))
    drift = window_mean_drift(transform, X, fitted, n)
    if drift is not None:
        out["window-mean hold"] = _figures(labels, test, flagged & ~drift)
    day = int(86400 / series.interval_s)
    recent = pd.Series(scores).rolling(day, min_periods=day // 4).quantile(0.98).shift(1).to_numpy()[n:]
    out["adaptive quantile"] = _figures(labels, test, test > np.fmax(threshold, recent))
    if X.shape[1] >= 2:
        error = pca_error(X, fitted, n, k)
        out["PCA error"] = _figures(labels, error[n:], error[n:] > np.quantile(error[:n][held], 0.98))
        either = np.maximum(test / np.quantile(scores[:n][held], 0.99), error[n:] / np.quantile(error[:n][held], 0.99))
        out["IF or PCA"] = _figures(labels, either, either > 1)
    return out


def main():
    series, seeds = shared_series()
    results: dict = {}
    where: dict = {}  # the bound's threshold as a quantile of the held-back scores, per series
    for seed in seeds:
        params, window, smoothing = as_evaluated(TrainParams(seed=seed))
        for one in series:
            rules = rules_for(one, params, window, smoothing)
            where.setdefault((one.dataset, one.name), []).append(rules[BOUND]["held_quantile"])
            for rule, figures in rules.items():
                results.setdefault(rule, {}).setdefault((one.dataset, one.name), []).append(
                    [figures["f1"], figures["pr_auc"], figures["flagged_share"]]
                )
    print(f"seeds {seeds}; seed means per series; F1 at each rule's own flags\n")
    for dataset in ("smd", "nab"):
        keys = [k for k in results["static"] if k[0] == dataset]
        print(f"## {dataset} ({len(keys)} series)")
        print("| rule | mean F1 | worst (series) | series lost to static | PR-AUC | flagged: mean | largest |")
        print("|---|---|---|---|---|---|---|")
        for rule, per in results.items():
            if not all(k in per for k in keys):
                print(f"| {rule} | (univariate series: not applicable) | | | | |")
                continue
            figures, cells = versus_static(results, rule, keys)
            print(
                f"{cells} {np.mean([figures[k][1] for k in keys]):.3f} | {np.mean([figures[k][2] for k in keys]):.1%} | "
                f"{max(figures[k][2] for k in keys):.1%} |"
            )
        print()
    print("the best threshold as a quantile of the held-back training scores, per SMD machine, per seed:")
    for key, quantiles in where.items():
        if key[0] == "smd":
            print(f"  {key[1]}: {', '.join(f'{q:.4f}' for q in quantiles)}")


if __name__ == "__main__":
    main()
