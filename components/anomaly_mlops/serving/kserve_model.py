"""The KServe model server as our runtime: a ``kserve.Model`` subclass over the shared
protocol (serving.protocol), bound to the asked host, with the served version in V2 metadata
and 400 (not FastAPI's 422) for unparsable V2 bodies. kserve is imported lazily: it parses
argv at import time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import tempfile
import uuid
from pathlib import Path

from anomaly_mlops.model.artifacts import LoadedModel, load_model_dir
from anomaly_mlops.params import DEFAULT_MAX_ENTITIES, DEFAULT_MAX_INSTANCES
from anomaly_mlops.serving.history import history_for
from anomaly_mlops.serving.protocol import (
    SMALL_BATCH_ROWS,
    BodySizeLimit,
    InputProblem,
    ServedRowCounters,
    ServedScoreCounters,
    begin_request,
    claimed_rows,
    default_max_body_bytes,
    input_types,
    output_types,
    outside_range_counters,
    served_score_counters,
    v1_answer,
    v2_outputs,
)
from anomaly_mlops.serving.shared_history import HistoryUnavailable
from anomaly_mlops.store.releases import resolve_model_dir, served_version

log = logging.getLogger(__name__)


async def _invalid_json_handler(request, exc):
    """FastAPI answers an unparsable V2 body with 422; the protocol's error for bad input is 400."""
    from fastapi.responses import JSONResponse

    problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()[:5])
    return JSONResponse(status_code=400, content={"error": f"invalid request: {problems}"[:1000]})


async def _history_unavailable_handler(request, exc):
    """The shared history store did not answer: 503 with Retry-After, as the lean server says it."""
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=503, content={"error": str(exc)}, headers={"Retry-After": "1"})


def build_model_class():
    """Defined lazily so importing this module needs no kserve (and parses no argv)."""
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    outside_counters = outside_range_counters()
    score_counters = served_score_counters()

    class AnomalyDetectorModel(kserve.Model):
        def __init__(
            self,
            name: str,
            model_uri: str,
            max_instances: int = DEFAULT_MAX_INSTANCES,
            cache_dir: str | Path | None = None,
            scoring: str = "fast",
            max_entities: int = DEFAULT_MAX_ENTITIES,
            history_url: str | None = None,
        ):
            super().__init__(name)
            self.max_entities = max_entities
            self.history_url = history_url
            self.model_uri = model_uri
            self.max_instances = max_instances
            self.cache_dir = cache_dir
            self.scoring = scoring
            self.detector: LoadedModel | None = None
            # One thread: large batches queue behind each other instead of taking every core.
            self.batch_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")

        def load(self) -> bool:
            local = resolve_model_dir(self.model_uri, self.cache_dir or tempfile.mkdtemp(prefix="anomaly-model-"))
            self.detector = load_model_dir(local)
            self.model_version = served_version(self.model_uri, local)
            self.expected = self.detector.schema.describe()  # for wrong-length rows; built once, not per request
            if self.scoring == "sklearn":
                self.detector.fast = None
            # A shared store's client connects on first use, on the serving loop.
            self.history = history_for(
                self.detector, self.max_entities, self.history_url, self.name, self.model_version
            )
            self.outside = ServedRowCounters(self.detector, self.name, outside_counters)
            self.served = ServedScoreCounters(self.detector, self.name, self.model_version, score_counters)
            meta = self.detector.metadata
            log.info(
                "loaded model %s from %s: %d features, threshold %.5f, trained %s",
                self.name,
                self.model_uri,
                len(self.detector.schema),
                self.detector.threshold,
                meta.get("created_at"),
            )
            self.ready = True
            return self.ready

        def get_input_types(self):
            """V2 metadata: one [n, features] matrix (per-feature [n] tensors named after the features also work)."""
            return input_types(self.detector)

        def get_output_types(self):
            return output_types(self.detector)

        async def predict(self, payload, headers=None, response_headers=None):
            is_v2 = isinstance(payload, InferRequest)
            loop = asyncio.get_running_loop()
            large = claimed_rows(payload, is_v2) > SMALL_BATCH_ROWS
            try:  # a large request is parsed and scored on the batch thread
                pending = (
                    await loop.run_in_executor(self.batch_pool, self.begin, payload, is_v2)
                    if large
                    else self.begin(payload, is_v2)
                )
                await pending.ready()  # HistoryUnavailable: 503 (_history_unavailable_handler)
            except InputProblem as exc:
                raise InvalidInput(str(exc)) from None
            if large:
                result = await loop.run_in_executor(self.batch_pool, pending.score_alone, self.detector)
            else:
                result = pending.score_alone(self.detector)
            return self.answer(payload, is_v2, result)

        def begin(self, payload, is_v2: bool):
            return begin_request(
                self.detector, self.history, payload, is_v2, self.max_instances, self.expected, self.outside
            )

        def answer(self, payload, is_v2: bool, result):
            predictions, scores, complete = result
            self.served.observe(predictions, scores)
            if not is_v2:
                return v1_answer(predictions, scores, complete)
            outputs = [InferOutput(**tensor) for tensor in v2_outputs(predictions, scores, complete)]
            return InferResponse(
                model_name=self.name, infer_outputs=outputs, response_id=payload.id or str(uuid.uuid4())
            )

    return AnomalyDetectorModel


def serve_kserve(
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
    history_url=None,
) -> None:
    # kserve parses sys.argv at import time; keep our CLI flags away from it.
    saved_argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
        import kserve.model_server as kserve_server
        from fastapi.exceptions import RequestValidationError

        model_class = build_model_class()
    finally:
        sys.argv = saved_argv
    model = model_class(
        model_name,
        model_uri,
        max_instances=max_instances,
        scoring=scoring,
        cache_dir=cache,
        max_entities=max_entities,
        history_url=history_url,
    )
    model.load()
    limit = max_body_bytes or default_max_body_bytes(max_instances, len(model.detector.schema))
    kserve_server.app.add_middleware(BodySizeLimit, max_bytes=limit)
    kserve_server.app.add_exception_handler(RequestValidationError, _invalid_json_handler)
    kserve_server.app.add_exception_handler(HistoryUnavailable, _history_unavailable_handler)
    _bind_host(kserve_server, host)
    _add_versions_to_metadata()
    from anomaly_mlops.serving.sockets import bind

    bind(host, http_port).close()  # a busy port is a ServeError (exit 6) before KServe starts
    log.info(
        "starting the KServe model server for %s on %s:%d (request bodies up to %d bytes)",
        model_name,
        host,
        http_port,
        limit,
    )
    server = kserve.ModelServer(
        http_port=http_port,
        grpc_port=grpc_port or 8081,
        enable_grpc=grpc_port is not None,
        workers=workers,
    )
    server.start([model])


def _add_versions_to_metadata() -> None:
    """kserve 0.21 answers GET /v2/models/<m> without versions; add the served version."""
    from kserve.protocol.dataplane import DataPlane

    original = DataPlane.model_metadata
    if getattr(original, "adds_versions", False):
        return

    async def model_metadata(self, model_name: str):
        metadata = await original(self, model_name)
        version = getattr(self.get_model_from_registry(model_name), "model_version", None)
        return {**metadata, "versions": [version]} if version else metadata

    model_metadata.adds_versions = True
    DataPlane.model_metadata = model_metadata


def _bind_host(kserve_server, host: str) -> None:
    """kserve 0.21 binds its REST server to 0.0.0.0 unconditionally; set the address it binds."""
    base = kserve_server.RESTServer

    class HostBoundRESTServer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host

    kserve_server.RESTServer = HostBoundRESTServer
