"""What the shared history store costs a request, without HTTP or a load generator: the lean
server's app (LeanApp) called in a loop with single-row V1 requests of 64 entities in turn,
1, 4 or 16 of them in each event-loop tick (a server's load decides how many share a tick),
history in process and in a Redis server on loopback (`--history-url`). Prints the CPU time
of this process and of the Redis server per request, for each, in alternating rounds.
Usage: .venv/bin/python benchmarks/store_cost.py [--requests 6000] [--rounds 2]"""

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import train_default_model  # noqa: E402
from serving import cpu_seconds, start_redis, stop  # noqa: E402

from anomaly_mlops.model.artifacts import load_serving_model  # noqa: E402
from anomaly_mlops.serving.lean_server import LeanApp  # noqa: E402

ENTITIES = 64
PATH = "/v1/models/anomaly-detector:predict"


async def request(app: LeanApp, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": PATH, "headers": headers}, receive, send)
    if sent[0]["status"] != 200:
        raise RuntimeError(f"answered {sent[0]['status']}: {sent[1]['body'][:200]!r}")


async def per_request(app: LeanApp, bodies: list[bytes], per_tick: int, requests: int, redis_pid) -> tuple:
    """(this process's, the store's) CPU µs a request, after a warm-up."""
    ticks, i = requests // per_tick, 0
    for phase in ("warm", "measured"):
        if phase == "measured":
            mine, store = time.process_time(), cpu_seconds(redis_pid) if redis_pid else 0.0
        for _ in range(ticks if phase == "measured" else 100):
            await asyncio.gather(*(request(app, bodies[(i + k) % ENTITIES]) for k in range(per_tick)))
            i += per_tick
    done = ticks * per_tick
    return 1e6 * (time.process_time() - mine) / done, (
        1e6 * (cpu_seconds(redis_pid) - store) / done if redis_pid else None
    )


async def measure(model, bodies, url, redis_pid, opts) -> None:
    apps = {
        "in process": LeanApp("anomaly-detector", model),
        "Redis": LeanApp("anomaly-detector", model, history_url=url),
    }
    print("| requests a tick | history | this process, µs a request | Redis server, µs a request |")
    print("|---|---|---|---|")
    for per_tick in (1, 4, 16):
        found: dict[str, list] = {name: [] for name in apps}
        for _ in range(opts.rounds):  # alternating, so that the VM's drift reaches both alike
            for name, app in apps.items():
                found[name].append(
                    await per_request(app, bodies, per_tick, opts.requests, redis_pid if name == "Redis" else None)
                )
        for name, rounds in found.items():
            ours = "-".join(f"{v:.0f}" for v in sorted({round(r[0]) for r in rounds}))
            store = "-" if rounds[0][1] is None else "-".join(f"{v:.0f}" for v in sorted({round(r[1]) for r in rounds}))
            print(f"| {per_tick} | {name} | {ours} | {store} |")
    await apps["Redis"].history.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000, help="per round and setting")
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()
    logging.disable(logging.WARNING)
    started = start_redis()
    if started is None:
        sys.exit("redis-server (or valkey-server) is not installed: `make redis` installs it")
    redis, url = started
    try:
        model_dir, prepared = train_default_model()
        model = load_serving_model(model_dir)
        row = pd.read_parquet(prepared.holdout_path)[list(model.schema.features)].to_numpy()[0].tolist()
        bodies = [json.dumps({"instances": [row], "entity": f"bench-{e}"}).encode() for e in range(ENTITIES)]
        try:
            import uvloop  # what uvicorn runs the lean server on

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(measure(model, bodies, url, redis.pid, opts))
        print(f"\n{opts.requests} requests per round and setting, {opts.rounds} rounds, alternating")
    finally:
        stop(redis)


if __name__ == "__main__":
    main()
