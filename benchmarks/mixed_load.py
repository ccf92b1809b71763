"""Single-row latency while large batches are being scored: two clients send 10,000-row
V1 batches back to back while --single-clients clients send single rows. Prints the single-row
latency percentiles and the median batch latency. Bounded by request count.

    .venv/bin/python benchmarks/mixed_load.py [--singles 1000] [--batches 10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np


async def drive(url: str, model: str, singles: int, batches: int, clients: int = 1) -> dict:
    import aiohttp

    batch = {"instances": np.random.default_rng(1).normal(50, 10, size=(10_000, 6)).tolist()}
    # The default model smooths scores over earlier rows: single rows name their series.
    single = {"instances": [[50.0, 60.0, 20.0, 80.0, 50.0, 0.0]], "entity": "mixed-load"}
    latencies, batch_seconds = [], []

    async def batcher(session):
        for _ in range(batches):
            started = time.perf_counter()
            async with session.post(f"{url}/v1/models/{model}:predict", json=batch) as response:
                assert response.status == 200, await response.text()
                await response.read()
            batch_seconds.append(time.perf_counter() - started)

    async def singler(session):
        for _ in range(singles // clients):
            started = time.perf_counter()
            async with session.post(f"{url}/v1/models/{model}:predict", json=single) as response:
                assert response.status == 200
                await response.read()
            latencies.append(time.perf_counter() - started)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(batcher(session), batcher(session), *(singler(session) for _ in range(clients)))
    ms = np.array(latencies) * 1000
    return {
        "single_rows": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "batches": len(batch_seconds),
        "batch_p50_ms": round(float(np.median(batch_seconds)) * 1000, 1),
    }


def main() -> None:
    from anomaly_mlops.adapters.local_services import model_server
    from anomaly_mlops.steps.data import prepare_data
    from anomaly_mlops.steps.train import TrainParams, train

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--singles", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--single-clients", type=int, default=1, help="concurrent single-row clients")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = prepare_data(Path(tmp) / "data", rows=8000, seed=7)
        model = train(str(data.train_path), Path(tmp) / "model", TrainParams(seed=7)).model_dir
        with model_server("detector", str(model), log_path=Path(tmp) / "server.log") as url:
            print(asyncio.run(drive(url, "detector", args.singles, args.batches, args.single_clients)))


if __name__ == "__main__":
    main()
