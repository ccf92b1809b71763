"""One `anomaly-mlops serve` process on loopback whose handle the test keeps (to kill a
replica, signal it, or read its log), started and ready."""

from __future__ import annotations

import subprocess
import sys
import time

import requests

from anomaly_mlops.adapters.local_services import free_port


class ServerProcess:
    """`anomaly-mlops serve --model-name detector` with ``args``, ready on ``url``."""

    def __init__(self, model_dir, log_path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "anomaly_mlops.adapters.cli", "serve", "--model-name", "detector"]
        command += ["--model-dir", str(model_dir), "--host", "127.0.0.1", "--http-port", str(self.port), *args]
        self.log_path = log_path
        self.process = subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while not _ready(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def _ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False
