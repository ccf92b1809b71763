"""Serving throughput, latency and cold start, side by side in one run, load from wrk.

Servers (one process each unless said, loopback, the same 100-tree default model):
  ours (lean)          `anomaly-mlops serve` (lean_server.py), entity history in process
  ours (lean, Redis history)             the same with --history-url (a redis-server started here)
  ours (lean, 2 workers, Redis history)  two worker processes sharing that history
  ours (KServe)        `anomaly-mlops serve --server kserve`
  KServe, constant     the KServe model server with a model that returns a constant (its ceiling)
  ASGI, constant       uvicorn + httptools + uvloop answering a constant (the stack's limit)
  sample predictor     the design record's predictor (predict + decision_function) on KServe
  sklearn runtime      KServe's upstream sklearnserver, in its own venv (KServe's git tag or --kserve-src)
  MLServer             mlserver + mlserver-sklearn, in its own venv (V2 only)
For each: cold start (process start to the first 200 from its readiness route), then with wrk
at --connections: single-row V1, single-row V2 (each request for the next of 64 entities in
turn), and 100-row V1 batches; medians of --rounds
rounds of --seconds, the rounds alternating between the servers (all up at once). V1 figures
are also given as a share of the constant-answer ASGI app (the stack's ceiling). Before the load, our servers are checked: parity with scikit-learn
(<= 1e-6), 400 for a bad row, 413 for an oversized body.

Setup: wrk comes from the Debian package (installed here with apt-get when missing, as the
Makefile installs Prometheus); the reference venvs go to .venv-bench/ (--no-references skips).
sklearnserver is not published on PyPI: it is installed from KServe's git tag, or from
--kserve-src (a KServe source tree) where github.com is out of reach.
Usage: .venv/bin/python benchmarks/serving.py [--seconds 5] [--rounds 3] [--connections 16] [--metric-basis raw]
"""

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import requests

sys.path.insert(0, str(Path(__file__).parent))
from common import train_default_model  # noqa: E402

from anomaly_mlops.adapters.local_services import free_port  # noqa: E402
from anomaly_mlops.model.artifacts import load_model_dir  # noqa: E402
from anomaly_mlops.params import TrainParams  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent
BENCH_VENVS = ROOT / ".venv-bench"
NAME = "anomaly-detector"
ENTITIES = 64


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if not found:
        print("wrk not found: installing the Debian package", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
        found = shutil.which("wrk")
    if not found:
        sys.exit("wrk is needed (Debian package 'wrk'): apt-get install wrk")
    return found


def pinned(package: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(package.lower() + "=="):
            return line.strip()
    return package


def reference_venv(name: str, packages: list[str]) -> tuple[Path | None, str]:
    """A venv of its own under .venv-bench/; (python, note)."""
    venv = BENCH_VENVS / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.is_file():
        return python, "installed"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for group in packages:
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *group.split()], capture_output=True, text=True
        )
        if result.returncode != 0:
            return None, f"could not be installed ({group}): {result.stderr.strip().splitlines()[-1][:160]}"
    marker.touch()
    return python, "installed"


def start(command: list[str], ready_url: str, env=None, timeout: float = 120.0):
    # A file, not a pipe: a server that logs every request would block on a full pipe.
    log = tempfile.TemporaryFile()
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=ROOT
    )
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{command[:4]} exited: {log.read().decode()[-600:]}")
        try:
            if requests.get(ready_url, timeout=0.5).status_code == 200:
                return process, time.perf_counter() - started
        except requests.RequestException:
            pass
        time.sleep(0.01)
    process.kill()
    raise RuntimeError(f"{command[:4]} not ready after {timeout:.0f}s")


def stop(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(binary: str, url: str, body: bytes | list[bytes], connections: int, seconds: float) -> dict:
    """wrk's figures for POSTs of ``body`` (a list: each request the next body, in turn)."""
    bodies = body if isinstance(body, list) else [body]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"bodies = {{{', '.join(json.dumps(b.decode()) for b in bodies)}}}\n"
            "i = 0\nrequest = function()\n  i = i % #bodies + 1\n"
            "  return wrk.format(nil, nil, nil, bodies[i])\nend\n"
        )
    run = subprocess.run(
        [binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
    )
    os.unlink(script.name)
    out = run.stdout
    if run.returncode != 0 or "Requests/sec" not in out:
        return {"failed": (run.stderr or out).strip()[-200:]}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        "p99": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
        "errors": int(errors.group(1)) if errors else 0,
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children (a server's workers)."""
    try:
        process = psutil.Process(pid)
        total = 0.0
        for one in [process, *process.children(recursive=True)]:
            times = one.cpu_times()
            total += times.user + times.system
        return total
    except psutil.NoSuchProcess:
        return float("nan")


def wrk_with_cpu(binary: str, url: str, body, connections: int, seconds: float, pids: dict) -> dict:
    """wrk's figures and the CPU microseconds per request of each of ``pids`` (name -> pid)
    and of wrk itself, measured around the run."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = wrk(binary, url, body, connections, seconds)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if "failed" in result or not result["requests"]:
        return result
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    used["wrk"] = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    result["cpu_us"] = {name: 1e6 * s / result["requests"] for name, s in used.items()}
    return result


def start_redis():
    """(process, URL) of a redis-server on loopback without persistence, or None without one."""
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if not binary:
        return None
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    stop(process)
    return None


def median(results: list[dict]) -> dict | None:
    """The round with the median rate (the first failure, if any round failed)."""
    if not results:
        return None
    failed = [r for r in results if "failed" in r]
    if failed:
        return failed[0]
    results.sort(key=lambda r: r["rps"])
    return results[len(results) // 2]


def check_ours(base: str, rows: np.ndarray, offline: np.ndarray) -> str:
    """Parity with scikit-learn, 400 for a bad row, 413 for an oversized body."""
    predict = f"{base}/v1/models/{NAME}:predict"
    body = requests.post(predict, json={"instances": rows.tolist()}, timeout=30).json()
    gap = float(np.max(np.abs(np.asarray(body["anomaly_scores"]) - offline)))
    bad = requests.post(predict, json={"instances": [["x"] * rows.shape[1]]}, timeout=30).status_code
    huge = requests.post(
        predict, data=b'{"instances": [' + b"0," * 3_000_000 + b"0]}", headers={"content-type": "application/json"}
    ).status_code
    assert gap <= 1e-6 and bad == 400 and huge == 413, (gap, bad, huge)
    return f"parity {gap:.1e}, bad row {bad}, oversized {huge}"


def mlserver_dir(model_dir: Path, port: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="mlserver-"))
    shutil.copy(model_dir / "model.joblib", folder / "model.joblib")
    (folder / "settings.json").write_text(
        # One process, like the others (and MLServer 1.7.1's worker pool fails under uvloop 0.23).
        json.dumps(
            {
                "http_port": port,
                "grpc_port": free_port(),
                "metrics_port": free_port(),
                "host": "127.0.0.1",
                "parallel_workers": 0,
                # Its metric files go with the model, not into the working directory.
                "metrics_dir": str(folder / "metrics"),
            }
        )
    )
    (folder / "model-settings.json").write_text(
        json.dumps(
            {"name": NAME, "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"}}
        )
    )
    return folder


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--no-references", action="store_true", help="skip the sklearn runtime and MLServer")
    parser.add_argument(
        "--only",
        help="run only the servers whose label contains one of these texts (comma-separated), e.g. 'lean,ASGI'",
    )
    parser.add_argument(
        "--kserve-src",
        help="a KServe source tree (git checkout or archive) to install sklearnserver from, "
        "where github.com cannot be reached",
    )
    parser.add_argument("--metric-basis", choices=("raw", "principal"), help="the model's (default: the default)")
    opts = parser.parse_args()
    binary = ensure_wrk()
    model_dir, prepared = train_default_model(params=TrainParams(metric_basis=opts.metric_basis))
    model = load_model_dir(model_dir)
    rows = pd.read_parquet(prepared.holdout_path)[list(model.schema.features)].to_numpy()
    offline = model.anomaly_scores(rows[:200])
    row = rows[0].tolist()
    # A model with score smoothing needs the series a row belongs to; others ignore the key.
    # Requests go to ENTITIES series in turn, as many nodes' streams would: no two requests of
    # one series are in flight together (16 connections), as in a stream row by row.
    v1_row = [json.dumps({"instances": [row], "entity": f"bench-{e}"}).encode() for e in range(ENTITIES)]
    v2_row = [
        json.dumps(
            {
                "inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}],
                "parameters": {"entity": f"bench-{e}"},
            }
        ).encode()
        for e in range(ENTITIES)
    ]
    v1_batch = json.dumps({"instances": rows[:100].tolist()}).encode()

    py = sys.executable

    def ours(server: str, *extra: str):
        return lambda p: [py, "-m", "anomaly_mlops.adapters.cli", "serve", "--server", server, "--model-dir", str(model_dir),
                          "--host", "127.0.0.1", "--http-port", str(p), *extra]  # fmt: skip

    store = start_redis()
    servers = [
        ("ours (lean)", ours("lean"), "ours"),
        *(
            [
                ("ours (lean, Redis history)", ours("lean", "--history-url", store[1]), "ours"),
                (
                    "ours (lean, 2 workers, Redis history)",
                    ours("lean", "--workers", "2", "--history-url", store[1]),
                    "ours",
                ),
            ]
            if store
            else []
        ),
        ("ours (KServe)", ours("kserve"), "ours"),
        (
            "KServe, constant model",
            lambda p: [py, str(HERE / "servers/constant_kserve.py"), "--http-port", str(p)],
            None,
        ),
        ("ASGI, constant", lambda p: [py, str(HERE / "servers/constant_asgi.py"), "--http-port", str(p)], None),
        (
            "sample predictor",
            lambda p: [
                py,
                str(HERE / "servers/sample_predictor.py"),
                "--model-dir",
                str(model_dir),
                "--http-port",
                str(p),
            ],
            None,
        ),
    ]
    notes = []
    if not opts.no_references:
        kserve_version = pinned("kserve").split("==")[-1]
        # sklearnserver is not on PyPI: from KServe's git tag, or a KServe source tree.
        source = (
            str(Path(opts.kserve_src) / "python" / "sklearnserver")
            if opts.kserve_src
            else f"git+https://github.com/kserve/kserve@v{kserve_version}#subdirectory=python/sklearnserver"
        )
        python, note = reference_venv(
            "kserve-sklearn",
            [
                f"{pinned('kserve')} kserve-storage=={kserve_version} {pinned('scikit-learn')} {pinned('numpy')} "
                f"{pinned('joblib')}",
                f"--no-deps {source}",
            ],
        )
        if python:
            servers.append(
                (
                    "KServe sklearn runtime",
                    lambda p, python=python: [
                        str(python),
                        "-m",
                        "sklearnserver",
                        "--model_dir",
                        str(model_dir),
                        "--model_name",
                        NAME,
                        "--http_port",
                        str(p),
                    ],
                    None,
                )
            )
        else:
            notes.append(f"KServe sklearn runtime {note}")
        python, note = reference_venv(
            "mlserver", [f"mlserver mlserver-sklearn {pinned('scikit-learn')} {pinned('numpy')} {pinned('joblib')}"]
        )
        if python:
            servers.append(
                (
                    "MLServer + mlserver-sklearn",
                    lambda p, python=python: [
                        str(python.parent / "mlserver"),
                        "start",
                        str(mlserver_dir(model_dir, p)),
                    ],
                    "v2-only",
                )
            )
        else:
            notes.append(f"MLServer {note}")

    print(
        f"{os.cpu_count()} CPUs; wrk -t1 -c{opts.connections}, {opts.rounds} x {opts.seconds:.0f}s rounds (median); "
        f"model: {model.metadata['params']['n_estimators']} trees, {len(model.schema)} features\n",
        flush=True,
    )
    header = (
        "| server | V1 req/s | V1 p99 ms | V2 req/s | V2 p99 ms | 100-row V1 rows/s | cold start s | checks |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    # Cold starts one server at a time; then every server up at once and the load in
    # alternating rounds (each round visits every server), so a slow spell of the machine
    # falls on all of them alike.
    running = []
    try:
        for label, command, kind in servers:
            if opts.only and not any(part in label for part in opts.only.split(",")):
                continue
            colds = []
            for _ in range(opts.cold_starts):
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                ready = f"{base}/v2/health/ready" if kind == "v2-only" else f"{base}/v1/models/{NAME}"
                try:
                    process, seconds = start(command(port), ready)
                except RuntimeError as exc:
                    notes.append(f"{label}: {exc}")
                    break
                colds.append(seconds)
                if len(colds) < opts.cold_starts:
                    stop(process)
            if len(colds) < opts.cold_starts:
                continue
            checks = check_ours(base, rows[:200], offline) if kind == "ours" else ""
            running.append({"label": label, "kind": kind, "base": base, "process": process, "colds": colds,
                            "checks": checks, "V1": [], "V2": [], "batch": []})  # fmt: skip
        for _ in range(opts.rounds):
            for server in running:
                base, kind = server["base"], server["kind"]
                if kind != "v2-only":
                    pids = {"server": server["process"].pid}
                    if "Redis" in server["label"]:
                        pids["store"] = store[0].pid
                    server["V1"].append(
                        wrk_with_cpu(
                            binary, f"{base}/v1/models/{NAME}:predict", v1_row, opts.connections, opts.seconds, pids
                        )
                    )
                server["V2"].append(
                    wrk(binary, f"{base}/v2/models/{NAME}/infer", v2_row, opts.connections, opts.seconds)
                )
                if kind != "v2-only":
                    server["batch"].append(
                        wrk(binary, f"{base}/v1/models/{NAME}:predict", v1_batch, opts.connections, opts.seconds)
                    )
    finally:
        for server in running:
            stop(server["process"])
    ceiling = None
    for server in running:
        v1, v2, batch = (median(server[w]) for w in ("V1", "V2", "batch"))
        checks = server["checks"]
        for workload, r in (("V1", v1), ("V2", v2), ("batch", batch)):
            if r and "failed" in r:
                checks += f" {workload}: wrk failed ({r['failed']})"
            elif r and r["errors"]:
                checks += f" {workload}: {r['errors']} non-2xx answers"
        if server["label"] == "ASGI, constant" and v1 and "failed" not in v1:
            ceiling = v1["rps"]
        server["v1"] = v1

        def cell(r, key, fmt):
            # Not served, failed, or answered with errors: no figure.
            return "-" if r is None or "failed" in r or r["errors"] else format(r[key], fmt)

        lines.append(
            f"| {server['label']} | {cell(v1, 'rps', ',.0f')} | {cell(v1, 'p99', '.2f')} | {cell(v2, 'rps', ',.0f')} | "
            f"{cell(v2, 'p99', '.2f')} | {cell(batch and {**batch, 'rows': batch.get('rps', 0) * 100}, 'rows', ',.0f')} | "
            f"{statistics.median(server['colds']):.2f} | {checks} |"
        )
    if ceiling:
        lines.append("")
        lines.append("V1 req/s as a share of the constant-answer ASGI ceiling:")
        for server in running:
            v1 = server["v1"]
            if v1 and "failed" not in v1 and not v1["errors"]:
                lines.append(f"- {server['label']}: {v1['rps'] / ceiling:.2f}")
    lines.append("")
    lines.append(
        f"CPU per single-row V1 request, microseconds (the median round; {os.cpu_count()} cores = "
        f"{1e6 * (os.cpu_count() or 1):,.0f} us of CPU a second between them):"
    )
    for server in running:
        v1 = server["v1"]
        if v1 and "cpu_us" in v1:
            parts = ", ".join(f"{name} {us:.0f}" for name, us in v1["cpu_us"].items())
            busy = sum(v1["cpu_us"].values()) * v1["rps"] / 1e6
            lines.append(f"- {server['label']}: {parts}; {busy:.2f} cores busy at {v1['rps']:,.0f} req/s")
    print("\n" + "\n".join(lines))
    for note in notes:
        print(f"note: {note}")
    if store:
        stop(store[0])
    else:
        print("note: redis-server not found (Debian package redis-server): the Redis history rows were skipped")


if __name__ == "__main__":
    main()
