"""The Self-Healing Platform engine's contract, offline: a self-healing-platform model trained
on synthetic platform data (9,000 rows, the test suite's draw) for several forest seeds, scored
on rows as the engine really sends them (lags = value, diff = pct_change = 0; scoped requests
with the node defaults), default (engine fallbacks) against --fixed-engine.
Usage: .venv/bin/python benchmarks/engine_contract.py [--seeds 1,2,3,7] [--rows 200]"""

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from anomaly_mlops.model.artifacts import load_model_dir
from anomaly_mlops.model.platform import ENGINE_DEFAULT_ROW
from anomaly_mlops.model.schema import FeatureSchema
from anomaly_mlops.sources.self_healing import engine_request_rows
from anomaly_mlops.steps.data import prepare_data
from anomaly_mlops.steps.train import TrainParams, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3,7", help="forest seeds")
    parser.add_argument("--rows", type=int, default=200, help="ordinary rows of each kind")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="engine-contract-"))
    data = prepare_data(root / "data", rows=9000, schema=FeatureSchema.parse("self-healing-platform"))
    print(
        f"{'training':<18} {'seed':>4}  {'ordinary':>8} {'scoped':>7}  {'cpu':>5} {'cpu sc.':>7} {'node mem':>8}  all-default"
    )
    for fixed in (False, True):
        for seed in (int(s) for s in args.seeds.split(",")):
            out = root / f"m-{int(fixed)}-{seed}"
            train(str(data.train_path), out, TrainParams(seed=seed, fixed_engine=fixed), data.schema)
            model = load_model_dir(out)
            rng = np.random.default_rng(11)

            def flagged(X, model=model) -> float:
                return float(np.mean(model.score(X)[0] == -1))

            print(
                f"{'--fixed-engine' if fixed else 'engine fallbacks':<18} {seed:>4}  "
                f"{flagged(engine_request_rows(rng, args.rows)):>8.3f} {flagged(engine_request_rows(rng, args.rows, scoped=True)):>7.3f}  "
                f"{flagged(engine_request_rows(rng, 20, 'cpu_runaway')):>5.2f} "
                f"{flagged(engine_request_rows(rng, 20, 'cpu_runaway', scoped=True)):>7.2f} "
                f"{flagged(engine_request_rows(rng, 20, 'node_memory_pressure')):>8.2f}  "
                f"{'anomaly' if flagged(ENGINE_DEFAULT_ROW[None, :]) else 'normal'} (served: normal)"
            )
    print(
        "columns: share of rows flagged; ordinary/scoped: no incident; cpu / cpu sc.: pod CPU runaway unscoped/scoped"
    )


if __name__ == "__main__":
    main()
