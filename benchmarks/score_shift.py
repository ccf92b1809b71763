"""Where the unlabelled score-shift gate (validate --max-score-psi) should sit: the PSI of a
challenger's scores against its champion's on the same recent rows, for healthy retrainings
(the training week moved on by a day; the same week with another seed) and for broken
challengers (metrics scaled, columns swapped, rows shuffled), on synthetic draws the defaults
never saw. Usage: .venv/bin/python benchmarks/score_shift.py [--draws 10] [--first-seed 60]"""

import argparse
import logging

import numpy as np

from anomaly_mlops.model.features import smooth_by_entity
from anomaly_mlops.model.schema import LABEL_COLUMN, FeatureSchema
from anomaly_mlops.params import Gates
from anomaly_mlops.sources.files import frame_to_dataset
from anomaly_mlops.sources.synthetic import generate_synthetic
from anomaly_mlops.steps.champion import psi
from anomaly_mlops.steps.train import TrainParams, fit_detector

DAY = 1440  # rows: one a minute
SCHEMA = FeatureSchema()


def fit(frame, seed: int = 42):
    dataset = frame_to_dataset(frame, SCHEMA, source="synthetic", sha256="-")
    return fit_detector(dataset.X, TrainParams(seed=seed), entities=dataset.entities)


def scores(detector, frame) -> np.ndarray:
    dataset = frame_to_dataset(frame, SCHEMA, source="synthetic", sha256="-")
    features = detector.transform.apply_by_entity(dataset.X, dataset.entities)
    return smooth_by_entity(-detector.pipeline.score_samples(features), dataset.entities, detector.smoothing_rows)


def broken(frame) -> dict:
    names = list(SCHEMA.features)
    scaled, swapped, shuffled = frame.copy(), frame.copy(), frame.copy()
    scaled[names] = scaled[names] * 2 + 50
    swapped[names] = frame[names[::-1]].to_numpy()
    shuffled[names] = frame[names].sample(frac=1, random_state=0).to_numpy()
    return {"metrics scaled": scaled, "columns swapped": swapped, "rows shuffled": shuffled}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=60)
    opts = parser.parse_args()
    logging.disable(logging.WARNING)
    found: dict[str, list[float]] = {}
    for seed in range(opts.first_seed, opts.first_seed + opts.draws):
        frame = generate_synthetic(rows=9 * DAY, seed=seed)
        week, next_week = frame.iloc[: 7 * DAY], frame.iloc[DAY : 8 * DAY]
        recent = frame.iloc[8 * DAY :].drop(columns=[LABEL_COLUMN])
        champion = scores(fit(week), recent)
        cases = {"healthy: a day later": next_week, **broken(next_week)}
        line = []
        for name, data in cases.items():
            found.setdefault(name, []).append(psi(champion, scores(fit(data), recent)))
            line.append(f"{name} {found[name][-1]:.3f}")
        found.setdefault("healthy: other seed", []).append(psi(champion, scores(fit(week, seed=7), recent)))
        line.append(f"other seed {found['healthy: other seed'][-1]:.3f}")
        print(f"draw {seed}: " + ", ".join(line), flush=True)
    gate = Gates().max_score_psi
    print(f"\nPSI against the champion over {opts.draws} draws (gate: at most {gate}):")
    for name, values in found.items():
        v = np.asarray(values)
        print(
            f"  {name:22s} median {np.median(v):6.3f}  max {v.max():6.3f}  min {v.min():6.3f}  "
            f"above the gate {int((v > gate).sum())}/{len(v)}  above 0.25 {int((v > 0.25).sum())}/{len(v)}"
        )


if __name__ == "__main__":
    main()
