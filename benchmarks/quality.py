"""Detection quality on ../shared/data (SMD machines, NAB series; SMD also averaged to
5-minute rows): per-series and mean ROC-AUC, PR-AUC and F1 at the model's own threshold,
for the defaults and the settings the README compares. No point adjustment; thresholds
from held-back training rows only. How the defaults were chosen: `anomaly-mlops evaluate --tune`.
Usage: .venv/bin/python benchmarks/quality.py [--data-dir ../shared/data]"""

import argparse
import logging

from anomaly_mlops.params import TrainParams
from anomaly_mlops.steps.evaluate import evaluate

SETTINGS = {
    "default": TrainParams(),
    "raw, no smoothing, quantile": TrainParams(feature_window=0, score_smoothing=0, threshold="quantile"),
    "window 60 min": TrainParams(feature_window=60),
    "window 120, smoothing 30": TrainParams(feature_window=120, score_smoothing=30),
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="../shared/data")
    opts = parser.parse_args()
    logging.disable(logging.WARNING)
    print(f"{'setting':28s} {'data':10s} {'series':>6s} {'ROC-AUC':>8s} {'PR-AUC':>8s} {'F1':>8s}")
    per_series = {}
    for label, params in SETTINGS.items():
        for resample, datasets in ((0, ("smd", "nab")), (5, ("smd",))):
            result = evaluate(opts.data_dir, datasets, params, resample_minutes=resample)
            if resample == 0:
                per_series[label] = result["series"]
            for dataset, m in result["mean"].items():
                data = f"{dataset}{' 5-min' if resample else ''}"
                print(f"{label:28s} {data:10s} {m['series']:6d} {m['roc_auc']:8.3f} {m['pr_auc']:8.3f} {m['f1']:8.3f}")
    print("\nper SMD machine, default -> window 60 min (ROC-AUC / PR-AUC / F1):")
    for a, b in zip(per_series["default"], per_series["window 60 min"]):
        if a["dataset"] == "smd":
            print(
                f"  {a['series']:14s} {a['roc_auc']:.3f}/{a['pr_auc']:.3f}/{a['f1']:.3f} -> "
                f"{b['roc_auc']:.3f}/{b['pr_auc']:.3f}/{b['f1']:.3f}"
            )


if __name__ == "__main__":
    main()
