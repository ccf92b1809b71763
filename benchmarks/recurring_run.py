"""The scheduled retraining as it runs, with the self-healing loop beside it: every shared SMD
machine (at a row a minute and averaged into 5-minute rows) and NAB series fitted as
`anomaly-mlops evaluate` fits it, its test part served by the static model, then by the
backtest of `evaluate --retrain-every 7d --train-window W --retrain-on-drift` for each
lookback W: a weekly run fetches W of unlabelled rows, holds the latest 30% out, fits the
rest, and validate's flagged-rate gate decides (a refused run leaves the version serving a
week more); the drift runs go as shipped (steps/evaluate.py RecurringRuns, DriftRuns).

  static                   no retraining
  drift runs only          the shipped loop, no schedule
  weekly, 7 / 14 / 21 / 28 days   the schedule beside the loop, fetching that lookback
  weekly, 14 days, every run deploys        without validate's gate
  weekly, 14 days, served flags left out    the run also leaves out the rows the serving
                                            version flagged (the pipeline cannot: it never
                                            sees the served flags)

Labels are never used by a run. Printed per dataset and loop: mean F1, the worst series, the
series lost against static, mean and largest flagged share, PR-AUC, and the scheduled runs
deployed and refused per series (seed means); then each SMD machine's F1 and flagged share,
and the lookback each SMD machine gets when it is chosen by the other four machines' mean F1.
Usage: .venv/bin/python benchmarks/recurring_run.py [--data-dir ../shared/data] [--seeds 42,7,1]"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import print_per_series, shared_options, versus_static  # noqa: E402

from anomaly_mlops.params import TrainParams  # noqa: E402
from anomaly_mlops.steps.evaluate import DriftRuns, RecurringRuns, _backtest, _load, as_evaluated  # noqa: E402

DAY = 86400.0
WEEKLY = 7 * DAY
LOOKBACKS = {f"weekly, {d} days": d * DAY for d in (7, 14, 21, 28)}
LOOPS = {
    "static": (None, None, None, RecurringRuns()),
    "drift runs only": (None, None, DriftRuns(), RecurringRuns()),
    **{name: (WEEKLY, window, DriftRuns(), RecurringRuns()) for name, window in LOOKBACKS.items()},
    "weekly, 14 days, every run deploys": (WEEKLY, 14 * DAY, DriftRuns(), RecurringRuns(gated=False)),
    "weekly, 14 days, served flags left out": (WEEKLY, 14 * DAY, DriftRuns(), RecurringRuns(leave_out_flagged=True)),
}


def main():
    data_dir, seeds = shared_options()
    datasets = {"smd": _load(data_dir, ("smd",), 0), "smd at 5 min": _load(data_dir, ("smd",), 5),
                "nab": _load(data_dir, ("nab",), 0)}  # fmt: skip
    # results[loop][(dataset, series)] -> per seed [f1, flagged share, pr-auc, deployed, refused]
    results: dict = {}
    for n, seed in enumerate(seeds, 1):
        print(f"seed {seed} ({n} of {len(seeds)}): {sum(map(len, datasets.values()))} series x {len(LOOPS)} loops",
              file=sys.stderr, flush=True)  # fmt: skip
        params, window, smoothing = as_evaluated(TrainParams(seed=seed))
        for dataset, members in datasets.items():
            for one in members:
                for loop, (every, lookback, drift, recurring) in LOOPS.items():
                    b = _backtest(one, params, window, smoothing, every, lookback, drift, recurring)
                    figures = [b["f1"], b["flagged_share"], b["pr_auc"], b["retrainings"] - b["retrainings_on_drift"],
                               b["retrainings_refused"]]  # fmt: skip
                    results.setdefault(loop, {}).setdefault((dataset, one.name), []).append(figures)
    print(f"seeds {seeds}; seed means per series; F1 at each version's own threshold\n")
    for dataset in datasets:
        keys = [k for k in results["static"] if k[0] == dataset]
        print(f"## {dataset} ({len(keys)} series)")
        print("| loop | mean F1 | worst (series) | series lost to static | flagged: mean | largest | PR-AUC "
              "| weekly runs deployed | refused |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for loop in results:
            m, cells = versus_static(results, loop, keys)
            print(
                f"{cells} {np.mean([m[k][1] for k in keys]):.1%} | {max(m[k][1] for k in keys):.1%} | "
                f"{np.mean([m[k][2] for k in keys]):.3f} | {np.mean([m[k][3] for k in keys]):.1f} | "
                f"{np.mean([m[k][4] for k in keys]):.1f} |"
            )
        print()
        if dataset.startswith("smd"):
            print_per_series(results, keys)
            # each machine gets the lookback with the best mean F1 on the other machines
            f1 = {name: {k: np.mean(results[name][k], axis=0)[0] for k in keys} for name in LOOKBACKS}
            held_out = []
            for k in keys:
                chosen = max(LOOKBACKS, key=lambda name: np.mean([f1[name][o] for o in keys if o != k]))
                held_out.append(f1[chosen][k])
                print(f"- {k[1]} left out: {chosen} (F1 {f1[chosen][k]:.3f})")
            print(f"- mean F1 with the lookback chosen without the machine: {np.mean(held_out):.3f}\n")


if __name__ == "__main__":
    main()
