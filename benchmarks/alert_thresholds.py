"""What the drift alerts (serving/alert_rules.py) would see on labelled server metrics: every
shared SMD machine and NAB series fitted as `anomaly-mlops evaluate` fits it (the default
detector, forest seed 42), its calibration scores as the reference the servers export, and
its test part served in windows of --windows. Per window: the served scores' PSI against the
calibration scores, and the flagged share as a multiple of the calibrated one, exactly as the
recording rules compute them (same bins, same floor).

Printed per window length, over all windows of all series of a dataset: quantiles of both
figures, and for each candidate threshold the share of windows it would alert on, split by
whether the window holds a labelled anomaly, and how many series it alerts on at all.
Usage: .venv/bin/python benchmarks/alert_thresholds.py [--data-dir ../shared/data] [--windows 1h,6h,24h]"""

import argparse
import logging
from pathlib import Path

import numpy as np

from anomaly_mlops.model.drift import ScoreReference
from anomaly_mlops.model.features import smoothing_rows
from anomaly_mlops.params import DriftAlertParams, TrainParams
from anomaly_mlops.serving.alert_rules import CALIBRATED_FLOOR
from anomaly_mlops.sources.prometheus import parse_duration
from anomaly_mlops.steps.evaluate import _fit, _load, as_evaluated
from anomaly_mlops.steps.train import calibrate

PSI_THRESHOLDS = (0.25, 0.5, 1.0, 2.0)
RATIOS = (3.0, 5.0, 10.0)


def windows_of(series, params, window_s: float) -> list[tuple[float, float, bool]]:
    """(PSI, flagged / calibrated, holds a labelled anomaly) per whole window of the test part."""
    window, smoothing = params.windows_for(client_built_features=False)
    raw, held, _ = _fit(series, params, window, smoothing_rows(smoothing, series.interval_s))
    scores, threshold, _ = calibrate(raw, held, params, smoothing_rows(smoothing, series.interval_s))
    n = len(series.train)
    reference = ScoreReference.of_scores(scores[:n][held], threshold)
    test = scores[n:]
    rows = max(int(window_s / series.interval_s), 1)
    out = []
    for start in range(0, len(test) - rows + 1, rows):
        part = test[start : start + rows]
        share = float(np.mean(part > threshold))
        out.append(
            (
                reference.psi(reference.counts(part)),
                share / max(reference.flagged_share, CALIBRATED_FLOOR),  # as the recording rule floors it
                bool(series.labels[start : start + rows].any()),
            )
        )
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--windows", default="1h,6h,24h")
    opts = parser.parse_args()
    logging.disable(logging.WARNING)
    params, _, _ = as_evaluated(TrainParams())
    series = _load(Path(opts.data_dir), ("smd", "nab"), 0)
    for text in opts.windows.split(","):
        seconds = parse_duration(text)
        print(f"## windows of {text}\n")
        for dataset in ("smd", "nab"):
            per_series = {s.name: windows_of(s, params, seconds) for s in series if s.dataset == dataset}
            figures = np.array([w for ws in per_series.values() for w in ws], dtype=float)
            if not len(figures):
                print(f"{dataset}: no whole window\n")
                continue
            psi, ratio, labelled = figures[:, 0], figures[:, 1], figures[:, 2].astype(bool)
            print(
                f"{dataset}: {len(per_series)} series, {len(figures)} windows ({labelled.mean():.0%} hold a labelled "
                f"anomaly); PSI p50 {np.median(psi):.2f} p90 {np.quantile(psi, 0.9):.2f} max {psi.max():.2f}; "
                f"flagged/calibrated p50 {np.median(ratio):.1f} p90 {np.quantile(ratio, 0.9):.1f} max {ratio.max():.1f}"
            )
            print("| alert when | windows alerted: with an anomaly | without | series alerted on |")
            print("|---|---|---|---|")
            for name, fired in [(f"PSI > {t:g}", psi > t) for t in PSI_THRESHOLDS] + [
                (f"flagged > {r:g}x calibrated", ratio > r) for r in RATIOS
            ]:
                on = sum(
                    any((p > float(name.split("> ")[1]) if name.startswith("PSI") else q > float(name.split("> ")[1][:-12]))
                        for p, q, _ in ws)
                    for ws in per_series.values()
                )  # fmt: skip
                with_anomaly = fired[labelled].mean() if labelled.any() else float("nan")
                without = fired[~labelled].mean() if (~labelled).any() else float("nan")
                print(f"| {name} | {with_anomaly:.0%} | {without:.0%} | {on} of {len(per_series)} |")
            ratio_default = DriftAlertParams().flagged_ratio
            print(
                f"\nshare of each series' windows with flagged > {ratio_default:g}x calibrated (the default): "
                + ", ".join(
                    f"{name.split('/')[-1][:28]} {np.mean([q > ratio_default for _, q, _ in ws]):.0%}"
                    for name, ws in per_series.items()
                )
            )
            print()


if __name__ == "__main__":
    main()
