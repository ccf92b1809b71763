"""``serve``: load a released model (a directory or an s3:// version, checksums verified) and
serve it with the lean server (default) or the KServe model server. Only the CLI imports this."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile

from anomaly_mlops.errors import ConfigError
from anomaly_mlops.model.artifacts import load_model_dir, load_serving_model
from anomaly_mlops.params import (
    DEFAULT_HEAD_TIMEOUT_S,
    DEFAULT_MAX_ENTITIES,
    DEFAULT_MAX_HEAD_BYTES,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_LARGE_REQUESTS,
)
from anomaly_mlops.store.releases import resolve_model_dir, served_version

log = logging.getLogger(__name__)


def serve(
    model_name: str,
    model_uri: str,
    http_port: int = 8080,
    grpc_port: int | None = None,
    workers: int = 1,
    max_instances: int = DEFAULT_MAX_INSTANCES,
    scoring: str = "fast",
    host: str = "0.0.0.0",
    max_body_bytes: int | None = None,
    max_entities: int = DEFAULT_MAX_ENTITIES,
    server: str = "lean",
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S,
    max_large_requests: int = DEFAULT_MAX_LARGE_REQUESTS,
    history_url: str | None = None,
) -> None:
    """Load, verify and serve until SIGTERM. Blocks. ``server``: "lean" (lean_server.py) or
    "kserve" (the KServe model server; also gRPC). A model fetched from S3 lives in a
    temporary directory removed when the server stops. ``history_url``: the Redis/Valkey
    store that keeps entity history for every replica and worker (shared_history.py)."""
    if server not in ("lean", "kserve"):
        raise ConfigError(f"server must be 'lean' or 'kserve', got {server!r}")
    if server == "lean" and grpc_port is not None:
        raise ConfigError("the lean server speaks REST only; use --server kserve for gRPC")
    for name, port in (("--http-port", http_port), ("--grpc-port", grpc_port)):
        if port is not None and not 1 <= port <= 65535:
            raise ConfigError(f"{name} must be a TCP port, 1-65535, got {port}")
    # Each of these at 0 or below gave a ready server that refused everything or, for
    # --max-entities, silently kept no history.
    for name, value in (
        ("--max-instances", max_instances),
        ("--max-entities", max_entities),
        ("--workers", workers),
        ("--max-body-bytes", 1 if max_body_bytes is None else max_body_bytes),
        ("--max-header-bytes", max_head_bytes),
        ("--max-large-requests", max_large_requests),
    ):
        if isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if not 0 < head_timeout_s < math.inf:
        raise ConfigError(f"--request-head-timeout must be a finite number of seconds above 0, got {head_timeout_s}")
    if server == "kserve" and workers > 1:
        # kserve's own --workers pickles the model class into spawned processes and binds 0.0.0.0.
        raise ConfigError(
            "--workers above 1 is for the lean server; the KServe model server runs one process per pod: "
            "scale it with replicas (and --history-url for a windowed model)"
        )
    if history_url:
        from anomaly_mlops.serving.shared_history import check_history_url

        check_history_url(history_url)
    cache = tempfile.mkdtemp(prefix="anomaly-model-")
    try:
        if server == "lean":
            from anomaly_mlops.serving.lean_server import serve_lean

            local = resolve_model_dir(model_uri, cache)
            model = load_model_dir(local) if scoring == "sklearn" else load_serving_model(local)
            if scoring == "sklearn":
                model.fast = None
            if workers > 1 and model.history_rows and not history_url:
                raise ConfigError(
                    f"--workers {workers}: this model scores each row with the {model.history_rows} rows before it, "
                    "and each process would keep its own share of an entity's rows: give --history-url "
                    "(a Redis/Valkey store the workers share) or serve with one worker"
                )
            log.info(
                "loaded model %s from %s: %s, threshold %.5f",
                model_name,
                model_uri,
                model.schema.describe(),
                model.threshold,
            )
            serve_lean(
                model_name,
                model,
                served_version(model_uri, local),
                http_port,
                host,
                max_instances,
                max_body_bytes,
                max_entities,
                workers,
                max_head_bytes,
                head_timeout_s,
                max_large_requests,
                history_url,
            )
            return
        from anomaly_mlops.serving.kserve_model import serve_kserve

        serve_kserve(
            model_name,
            model_uri,
            cache,
            http_port,
            grpc_port,
            workers,
            max_instances,
            scoring,
            host,
            max_body_bytes,
            max_entities,
            history_url,
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
