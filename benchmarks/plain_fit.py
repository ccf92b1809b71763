"""The reference train is measured against (benchmarks/scale.py): a plain StandardScaler +
IsolationForest fit of a Parquet file's metric columns, no windows, no threshold.
Usage: python benchmarks/plain_fit.py DATA.parquet COLUMNS MAX_SAMPLES"""

import json
import sys
import time

import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

path, columns, max_samples = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
started = time.perf_counter()
X = pd.read_parquet(path, columns=columns).to_numpy(dtype="float64")
Pipeline(
    [
        ("scaler", StandardScaler()),
        (
            "iforest",
            IsolationForest(
                n_estimators=100, max_samples=("auto" if max_samples == "auto" else int(max_samples)), random_state=42
            ),
        ),
    ]  # fmt: skip
).fit(X)
print(json.dumps({"seconds": round(time.perf_counter() - started, 2)}))
