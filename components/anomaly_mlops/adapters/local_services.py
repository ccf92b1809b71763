"""Real servers on loopback for local runs and tests: an S3-protocol server (moto in
server mode) and the KServe model server running our predictor in a subprocess."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from anomaly_mlops.errors import AnomalyMLOpsError

log = logging.getLogger(__name__)

LOCAL_BUCKET = "models"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def embedded_s3(bucket: str = LOCAL_BUCKET) -> Iterator[dict[str, str]]:
    """Start moto's S3 server on 127.0.0.1 and yield data-connection style env vars.

    The credentials are throwaway values the embedded server accepts; nothing real.
    """
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # the 'local' extra is not installed
        raise AnomalyMLOpsError("the embedded S3 server needs moto: pip install 'anomaly-mlops[local]'") from exc
    import boto3

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "local-embedded",
        "AWS_SECRET_ACCESS_KEY": "local-embedded-secret",
        "AWS_S3_ENDPOINT": f"http://{host}:{port}",
        "AWS_S3_BUCKET": bucket,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    boto3.client(
        "s3",
        endpoint_url=env["AWS_S3_ENDPOINT"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    log.info("embedded S3 server on %s, bucket %s", env["AWS_S3_ENDPOINT"], bucket)
    try:
        yield env
    finally:
        server.stop()


@contextmanager
def model_server(
    model_name: str,
    model_uri: str,
    env: dict[str, str] | None = None,
    log_path: str | Path | None = None,
    port: int | None = None,
    startup_timeout_s: float = 90.0,
    extra_args: tuple[str, ...] = (),
) -> Iterator[str]:
    """Run ``anomaly-mlops serve`` in a subprocess; yield its base URL once it is up.

    The process is stopped with SIGTERM (then SIGKILL) on exit; its output goes to log_path.
    """
    import requests

    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "anomaly_mlops.adapters.cli",
        "serve",
        "--model-name",
        model_name,
        "--model-dir",
        model_uri,
        "--http-port",
        str(port),
        "--host",
        "127.0.0.1",
        *extra_args,
    ]
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    log_file = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, env=child_env, stdout=log_file, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                tail = Path(log_path).read_text()[-2000:] if log_path else ""
                raise AnomalyMLOpsError(
                    f"the model server exited with code {process.returncode} while starting\n{tail}"
                )
            try:
                if requests.get(f"{base_url}/v1/models/{model_name}", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AnomalyMLOpsError(
                    f"the model server did not come up on {base_url} within {startup_timeout_s:.0f}s"
                )
            time.sleep(0.2)
        log.info("model server %s up on %s (pid %d)", model_name, base_url, process.pid)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log_file is not subprocess.DEVNULL:
            log_file.close()
