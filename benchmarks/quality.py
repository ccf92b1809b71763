"""Detection quality on ../shared/data (SMD machines, NAB series): per-series and mean
ROC-AUC, PR-AUC and F1 for raw metrics and for causal time-series features (several
windows). No point adjustment; thresholds from training scores only.
Usage: .venv/bin/python benchmarks/quality.py [--data-dir ../shared/data]"""

import argparse
import logging

from anomaly_mlops.evaluate import evaluate


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="../shared/data")
    opts = parser.parse_args()
    logging.disable(logging.WARNING)
    runs = [("raw", 30), ("ts", 5), ("ts", 10), ("ts", 30), ("ts", 60)]
    results = {run: evaluate(opts.data_dir, features=run[0], window=run[1]) for run in runs}
    print(f"{'features':10s} {'dataset':8s} {'series':>6s} {'ROC-AUC':>8s} {'PR-AUC':>8s} {'F1':>8s}")
    for (features, window), result in results.items():
        label = "raw" if features == "raw" else f"ts w={window}"
        for dataset, m in result["mean"].items():
            print(f"{label:10s} {dataset:8s} {m['series']:6d} {m['roc_auc']:8.3f} {m['pr_auc']:8.3f} {m['f1']:8.3f}")
    print("\nper series, raw -> ts w=30 (ROC-AUC / PR-AUC / F1):")
    raw, ts = results[("raw", 30)]["series"], results[("ts", 30)]["series"]
    for a, b in zip(raw, ts):
        print(
            f"  {a['series'][:52]:52s} {a['roc_auc']:.3f}/{a['pr_auc']:.3f}/{a['f1']:.3f} -> "
            f"{b['roc_auc']:.3f}/{b['pr_auc']:.3f}/{b['f1']:.3f}"
        )


if __name__ == "__main__":
    main()
