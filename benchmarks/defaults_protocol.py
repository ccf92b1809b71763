"""The protocol a default must pass, machine by machine: every shared SMD machine and NAB
series is scored (as `anomaly-mlops evaluate` scores it) by each candidate over several
forest seeds and by the plain reference (StandardScaler + IsolationForest with
scikit-learn's defaults, the 98th percentile of the training scores as threshold). For each
candidate: the mean F1 at its own threshold, the worst series and the spread beside it, the
series it loses against the plain reference, and the mean F1 of each machine held out (the
candidate the other machines prefer). The rule: a default may lose to the plain reference on
at most one SMD machine; a gain one machine carries is not a gain.
Usage: .venv/bin/python benchmarks/defaults_protocol.py [--data-dir ../shared/data] [--seeds 42,7,1]"""

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from anomaly_mlops.params import TrainParams
from anomaly_mlops.steps.evaluate import _load, evaluate

CANDIDATES = {
    "default (raw basis)": {},
    "principal basis": {"metric_basis": "principal"},
    "reconstruction error (0.9)": {"reconstruction_variance": 0.9},
}
FIGURES = ("f1", "pr_auc", "flagged_share")


def plain_reference(data_dir: str, datasets, seeds) -> dict:
    """Seed means of FIGURES per series for the plain StandardScaler + IsolationForest."""
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import average_precision_score, f1_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    out = {}
    for series in _load(Path(data_dir), datasets, 0):
        rows = []
        for seed in seeds:
            model = Pipeline([("s", StandardScaler()), ("f", IsolationForest(random_state=seed))]).fit(series.train)
            threshold = np.quantile(-model.score_samples(series.train), 0.98)
            scores = -model.score_samples(series.test)
            flagged = scores > threshold
            rows.append(
                [f1_score(series.labels, flagged), average_precision_score(series.labels, scores), flagged.mean()]
            )
        out[(series.dataset, series.name)] = np.mean(rows, axis=0)
    return out


def candidate(data_dir: str, datasets, seeds, overrides: dict) -> dict:
    per_seed = {}
    for seed in seeds:
        params = replace(TrainParams(), seed=seed, **overrides)
        for row in evaluate(data_dir, datasets, params)["series"]:
            per_seed.setdefault((row["dataset"], row["series"]), []).append([row[k] for k in FIGURES])
    return {key: np.mean(rows, axis=0) for key, rows in per_seed.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--seeds", default="42,7,1")
    parser.add_argument("--dataset", nargs="+", default=["smd", "nab"])
    opts = parser.parse_args()
    logging.disable(logging.WARNING)
    seeds = [int(s) for s in opts.seeds.split(",")]
    datasets = tuple(opts.dataset)
    plain = plain_reference(opts.data_dir, datasets, seeds)
    results = {"plain reference": plain}
    for name, overrides in CANDIDATES.items():
        results[name] = candidate(opts.data_dir, datasets, seeds, overrides)
    print(f"seeds {seeds}; F1 at each detector's own threshold, seed means\n")
    for dataset in datasets:
        keys = [k for k in plain if k[0] == dataset]
        print(f"## {dataset} ({len(keys)} series)")
        print("| detector | mean F1 | worst (series) | spread | PR-AUC | flagged | losses to plain |")
        print("|---|---|---|---|---|---|---|")
        for name, figures in results.items():
            f1 = np.array([figures[k][0] for k in keys])
            worst = keys[int(np.argmin(f1))][1]
            losses = [k[1] for k in keys if figures[k][0] < plain[k][0]] if name != "plain reference" else []
            print(
                f"| {name} | {f1.mean():.3f} | {f1.min():.3f} ({worst}) | {f1.max() - f1.min():.3f} | "
                f"{np.mean([figures[k][1] for k in keys]):.3f} | {np.mean([figures[k][2] for k in keys]):.1%} | "
                f"{len(losses)}{': ' + ', '.join(losses) if losses and len(losses) <= 5 else ''} |"
            )
        if dataset == "smd":
            print()
            for name in CANDIDATES:
                losses = sum(results[name][k][0] < plain[k][0] for k in keys)
                print(f"rule (at most one SMD machine lost to the plain reference), {name}: "
                      f"{'passes' if losses <= 1 else 'fails'} ({losses} lost)")  # fmt: skip
            held = []
            for k in keys:
                others = [o for o in keys if o != k]
                chosen = max(CANDIDATES, key=lambda n: np.mean([results[n][o][0] for o in others]))
                held.append(results[chosen][k][0])
                print(f"  {k[1]} held out: the other machines prefer {chosen}; its F1 {held[-1]:.3f}")
            print(f"  mean F1 of the held-out machines: {np.mean(held):.3f}")
        print()


if __name__ == "__main__":
    main()
