"""Time and peak memory of the data step's Prometheus fetch for a fleet: `fetch_range` with the
default schema's six features, NODES nodes each, over a 14-day window at 60 s (20,161 steps,
two pieces a query), against a Prometheus stand-in in another process that answers
query_range with one series per node for whatever range it is asked (the answer for one piece
passes the 64 MiB bound from about 200 nodes, and is fetched again as halves).

Usage: .venv/bin/python benchmarks/prometheus_fetch.py [--nodes 300] [--days 14]"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mib  # noqa: E402

SERVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse
nodes = int(sys.argv[1])
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        q = parse_qs(urlparse(self.path).query)
        start, end, step = int(q["start"][0]), int(q["end"][0]), int(q["step"][0])
        stamps = range(start, end + 1, step)
        result = [
            {"metric": {"instance": f"node-{n:04d}"}, "values": [[t, f"{(t // step + n) % 97 + 0.5:.6f}"] for t in stamps]}
            for n in range(nodes)
        ]
        body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": result}}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client stops reading an answer over its bound
            pass
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=300)
    parser.add_argument("--days", type=int, default=14)
    opts = parser.parse_args()
    from anomaly_mlops.model.schema import DEFAULT_FEATURES
    from anomaly_mlops.sources.prometheus import fetch_range

    server = subprocess.Popen([sys.executable, "-c", SERVER, str(opts.nodes)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        queries = {f: f"mlops_{f}" for f in DEFAULT_FEATURES}
        before = peak_rss_mib()
        started = time.perf_counter()
        frame = fetch_range(
            f"http://127.0.0.1:{port}", queries, lookback_s=opts.days * 86400, step_s=60, end=1_800_000_000,
            timeout_s=600,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        print(json.dumps({
            "nodes": opts.nodes, "days": opts.days, "rows": len(frame), "features": len(queries),
            "samples": len(frame) * len(queries), "seconds": round(seconds, 1),
            "peak_rss_mib_before": round(before), "peak_rss_mib": round(peak_rss_mib()),
            "frame_mib": round(frame.memory_usage(deep=True).sum() / 2**20),
        }))  # fmt: skip
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
