"""The self-healing loop as it runs on one machine, and variants of its drift runs: every
shared SMD machine and NAB series fitted as `anomaly-mlops evaluate` fits it, its test part
served by the static model, then by the backtest of `evaluate --retrain-on-drift` (an alert
starts a run, validate's flagged-rate gate decides on the latest 30% of the rows it fetched;
steps/evaluate.py DriftRuns) under each loop:

  static                 no retraining
  shipped                AnomalyDetectorNewNormal: the flagging alert's condition held 36 hours
                         starts a run that fetches 36 hours; a refused run leaves the version
                         serving, and it starts no second run (one PipelineRun name per version)
  first alert, 7 days    a run at the flagging alert (held 30 minutes), fetching 7 days
  24 h, 1 day            held 24 hours, fetching 1 day (the other holds and fetches alike)
  ... retried 12 h       a refused version may start another run 12 hours after the alert
                         (Alertmanager's repeat interval) while the alert still fires;
                         "once" or "twice": at most that many more runs (a further alert
                         held 48 or 60 hours, each naming its own run, would start them)

Labels are never used by a loop. Printed per loop: mean F1, the worst series, the series lost
against static, mean and largest flagged share, and the drift runs deployed and refused per
series (seed means); then each SMD machine's F1 and flagged share.
Usage: .venv/bin/python benchmarks/drift_loop.py [--data-dir ../shared/data] [--seeds 42,7,1]"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import print_per_series, shared_series, versus_static  # noqa: E402

from anomaly_mlops.params import TrainParams  # noqa: E402
from anomaly_mlops.steps.evaluate import DriftRuns, _backtest, as_evaluated  # noqa: E402

DAY, HOUR = 86400.0, 3600.0
LOOPS = {
    "shipped: held 36 h, 36 h": DriftRuns(),
    "first alert (30 min), 7 days": DriftRuns(hold_s=HOUR / 2, lookback_s=7 * DAY),
    "first alert, 7 days, retried 12 h": DriftRuns(hold_s=HOUR / 2, lookback_s=7 * DAY, retry_s=12 * HOUR),
    "held 12 h, 1 day": DriftRuns(hold_s=12 * HOUR, lookback_s=DAY),
    "held 24 h, 1 day": DriftRuns(hold_s=DAY, lookback_s=DAY),
    "held 24 h, 2 days": DriftRuns(hold_s=DAY, lookback_s=2 * DAY),
    "held 36 h, 36 h, retried 12 h": DriftRuns(retry_s=12 * HOUR),
    "held 36 h, 36 h, retried once 12 h": DriftRuns(retry_s=12 * HOUR, retries=1),
    "held 36 h, 36 h, retried twice 12 h": DriftRuns(retry_s=12 * HOUR, retries=2),
}


def main():
    series, seeds = shared_series()
    # results[loop][(dataset, series)] -> per seed [f1, flagged share, deployed, refused]
    results: dict = {}
    for n, seed in enumerate(seeds, 1):
        print(
            f"seed {seed} ({n} of {len(seeds)}): {len(series)} series x {len(LOOPS) + 1} loops",
            file=sys.stderr,
            flush=True,
        )
        params, window, smoothing = as_evaluated(TrainParams(seed=seed))
        for one in series:
            key = (one.dataset, one.name)
            for loop, drift in {"static": None, **LOOPS}.items():
                # static: with neither schedule nor drift runs, the model fitted on the training part serves throughout
                b = _backtest(one, params, window, smoothing, None, None, drift)
                figures = [b["f1"], b["flagged_share"], b["retrainings_on_drift"], b["drift_retrainings_refused"]]
                results.setdefault(loop, {}).setdefault(key, []).append(figures)
    print(f"seeds {seeds}; seed means per series; F1 at each version's own threshold\n")
    for dataset in ("smd", "nab"):
        keys = [k for k in results["static"] if k[0] == dataset]
        print(f"## {dataset} ({len(keys)} series)")
        print(
            "| loop | mean F1 | worst (series) | series lost to static | flagged: mean | largest | drift runs deployed | refused |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for loop in results:
            m, cells = versus_static(results, loop, keys)
            print(
                f"{cells} {np.mean([m[k][1] for k in keys]):.1%} | {max(m[k][1] for k in keys):.1%} | "
                f"{np.mean([m[k][2] for k in keys]):.1f} | {np.mean([m[k][3] for k in keys]):.1f} |"
            )
        print()
        if dataset == "smd":
            print_per_series(results, keys)


if __name__ == "__main__":
    main()
