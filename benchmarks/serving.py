"""HTTP serving on loopback, side by side in one run: our predictor (flattened forest),
the same predictor on plain scikit-learn (--scoring sklearn), and the design record's
reference predictor (predict + decision_function). For each: single-row V1 latency from
one client, then requests/s with concurrent clients, and parity of the served scores.
Usage: .venv/bin/python benchmarks/serving.py [--seconds 10] [--concurrency 16]"""

import argparse
import asyncio
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import requests

sys.path.insert(0, str(Path(__file__).parent))
from common import percentiles, train_default_model  # noqa: E402

from anomaly_mlops.artifacts import load_model_dir  # noqa: E402
from anomaly_mlops.local_services import free_port, model_server  # noqa: E402


@contextmanager
def reference_server(model_dir):
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "reference_predictor.py"),
            "--model-dir",
            str(model_dir),
            "--http-port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if requests.get(f"{url}/v1/models/reference", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)


def sequential(url, name, rows, n):
    session = requests.Session()
    path = f"{url}/v1/models/{name}:predict"
    for row in rows[:50]:
        session.post(path, json={"instances": [row.tolist()]})
    timings = []
    for i in range(n):
        start = time.perf_counter()
        response = session.post(path, json={"instances": [rows[i % len(rows)].tolist()]})
        timings.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text
    return timings


async def load(url, name, rows, seconds, concurrency):
    import aiohttp

    path = f"{url}/v1/models/{name}:predict"
    timings, errors = [], 0
    deadline = time.perf_counter() + seconds

    async def client(index, session):
        nonlocal errors
        i = index
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                async with session.post(path, json={"instances": [rows[i % len(rows)].tolist()]}) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            timings.append((time.perf_counter() - start) * 1000)
            i += concurrency

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, session) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(timings) / elapsed, timings, errors


def parity(url, name, rows, offline):
    body = requests.post(f"{url}/v1/models/{name}:predict", json={"instances": rows.tolist()}).json()
    return float(np.max(np.abs(np.asarray(body["anomaly_scores"]) - offline)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    opts = parser.parse_args()
    model_dir, prepared = train_default_model()
    model = load_model_dir(model_dir)
    rows = pd.read_parquet(prepared.holdout_path)[list(model.schema.features)].to_numpy()
    offline = -model.pipeline.score_samples(rows[:200])
    variants = [
        ("ours (flattened forest)", lambda: model_server("anomaly", str(model_dir)), "anomaly"),
        (
            "ours, --scoring sklearn",
            lambda: model_server("anomaly", str(model_dir), extra_args=("--scoring", "sklearn")),
            "anomaly",
        ),
        ("reference (predict+decision_function)", lambda: reference_server(model_dir), "reference"),
    ]
    print(
        f"single-row V1 requests on loopback; {opts.requests} sequential, then {opts.concurrency} concurrent "
        f"clients for {opts.seconds:.0f}s (client and server share this machine's {__import__('os').cpu_count()} CPUs)\n"
    )
    for label, start, name in variants:
        with start() as url:
            gap = parity(url, name, rows[:200], offline)
            single = sequential(url, name, rows, opts.requests)
            rps, timings, errors = asyncio.run(load(url, name, rows, opts.seconds, opts.concurrency))
        print(f"{label}")
        print(f"  parity   max |served - sklearn| = {gap:.3g}")
        print(f"  1 client {percentiles(single)}")
        print(f"  {opts.concurrency} clients {rps:7.0f} req/s  {percentiles(timings)}  errors {errors}\n")


if __name__ == "__main__":
    main()
