"""The metric basis chosen by leaving SMD machines out: every SMD machine is scored (as
`anomaly-mlops evaluate` scores it) with each basis over several forest seeds; then each
machine is reported under the basis of better mean F1 on the *other* machines. NAB cannot
make this choice (one metric per series: the rotation changes nothing there).
Prints per machine and basis the seed-mean ROC-AUC, PR-AUC, F1 and flagged share, each
fold's choice, and the mean F1 of the held-out machines.
Usage: .venv/bin/python benchmarks/basis_choice.py [--data-dir ../shared/data] [--seeds 42,7,1,2,3]"""

import argparse
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from anomaly_mlops.params import TrainParams
from anomaly_mlops.steps.evaluate import evaluate

BASES = ("raw", "principal")
FIGURES = ("roc_auc", "pr_auc", "f1", "flagged_share")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--seeds", default="42,7,1,2,3")
    opts = parser.parse_args()
    logging.disable(logging.WARNING)
    seeds = [int(s) for s in opts.seeds.split(",")]
    # figures[basis][machine] -> seed means of FIGURES
    figures = {}
    for basis in BASES:
        per_seed = {}
        for seed in seeds:
            params = replace(TrainParams(), seed=seed, metric_basis=basis)
            for row in evaluate(opts.data_dir, ("smd",), params)["series"]:
                per_seed.setdefault(row["series"], []).append([row[k] for k in FIGURES])
        figures[basis] = {m: np.mean(rows, axis=0) for m, rows in per_seed.items()}
    machines = list(figures[BASES[0]])
    print(f"SMD, seeds {seeds}: ROC-AUC / PR-AUC / F1 / flagged share, seed means")
    for machine in machines:
        print(
            f"  {machine}: " + "   ".join(f"{b} " + " / ".join(f"{v:.3f}" for v in figures[b][machine]) for b in BASES)
        )
    for b in BASES:
        print(f"  mean, {b}: " + " / ".join(f"{v:.3f}" for v in np.mean(list(figures[b].values()), axis=0)))
    held_out = []
    for machine in machines:
        others = [m for m in machines if m != machine]
        chosen = max(BASES, key=lambda b: np.mean([figures[b][m][2] for m in others]))
        held_out.append(figures[chosen][machine][2])
        print(f"  {machine} held out: the other machines choose {chosen}; its F1 {held_out[-1]:.3f}")
    print(f"  mean F1 of the held-out machines: {np.mean(held_out):.3f}")


if __name__ == "__main__":
    main()
