"""The default (or --feature-window W) on synthetic draws no default was chosen on: seeds
10-19 at 20,160 and 10,080 rows, split in time as the local run splits them (last 30% held
out), fitted and calibrated as `train` does. Prints per draw ROC-AUC, PR-AUC, F1 at the
model's own threshold and the share of holdout rows flagged, then how many draws pass the
default release gates and how many flag more than the unlabelled flagged-rate gate allows.
Usage: .venv/bin/python benchmarks/synthetic_draws.py [--feature-window 60 ...] [--metric-basis raw principal]
[--reconstruction-variance 0 0.9] [--seed 7]"""

import argparse
import logging

import numpy as np

from anomaly_mlops.params import Gates, TrainParams
from anomaly_mlops.steps import evaluate as ev

SEEDS = range(10, 20)
ROWS = (20_160, 10_080)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--feature-window", type=int, nargs="*", default=[None], help="minutes (default: the default)")
    parser.add_argument("--metric-basis", nargs="*", default=[None], help="raw, principal (default: the default)")
    parser.add_argument(
        "--reconstruction-variance",
        type=float,
        nargs="*",
        default=[None],
        help="0: the forest alone (default: the default)",
    )
    parser.add_argument("--seed", type=int, default=TrainParams().seed, help="the forest's seed")
    opts = parser.parse_args()
    logging.disable(logging.WARNING)
    gates = Gates()
    for window_minutes, basis, variance in (
        (w, b, v) for w in opts.feature_window for b in opts.metric_basis for v in opts.reconstruction_variance
    ):
        params, window, smoothing = ev.as_evaluated(
            TrainParams(
                feature_window=window_minutes, metric_basis=basis, reconstruction_variance=variance, seed=opts.seed
            )
        )
        flag_limit = gates.max_flagged_rate_ratio * params.contamination
        found = []
        print(
            f"feature window {window} min, metric basis {params.metric_basis}, reconstruction variance "
            f"{params.reconstruction_variance}, seed {params.seed}:"
        )
        for series in ev._synthetic_series([(seed, rows) for seed in SEEDS for rows in ROWS]):
            if series.labels.sum() == 0:
                print(f"  {series.name}: no anomaly in the holdout, skipped")
                continue
            m = ev._measure(series, *ev._raw_scores(series, params, window), params, smoothing)
            found.append((m["roc_auc"], m["pr_auc"], m["f1"], m["flagged_share"]))
            print(
                f"  {series.name}: ROC-AUC {m['roc_auc']:.3f} PR-AUC {m['pr_auc']:.3f} F1 {m['f1']:.3f} "
                f"flagged {m['flagged_share']:.3f} (anomalous {series.labels.mean():.3f})"
            )
        a = np.array(found)
        passing = int(((a[:, 0] >= gates.min_roc_auc) & (a[:, 1] >= gates.min_pr_auc)).sum())
        print(
            f"  {len(a)} draws: {passing} pass the release gates; worst ROC-AUC {a[:, 0].min():.3f}, worst PR-AUC "
            f"{a[:, 1].min():.3f}, mean F1 {a[:, 2].mean():.3f}; flagged share above {flag_limit:.2f} (the "
            f"unlabelled gate) in {int((a[:, 3] > flag_limit).sum())}, at most {a[:, 3].max():.3f}"
        )


if __name__ == "__main__":
    main()
