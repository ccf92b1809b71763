"""The lean model server: KServe's REST protocol surface (V1 and Open Inference V2, health,
metadata, Prometheus metrics) as one small ASGI app on uvicorn, without KServe's FastAPI,
pydantic and logging layers on the hot path (docs/evidence/performance.md measures both).

The same parsing, scoring and per-entity history as the KServe model server (kserve_model.py, both over protocol.py):
the two servers pass the same protocol tests. Nothing from kserve is imported here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import orjson

from anomaly_mlops import __version__
from anomaly_mlops.model.artifacts import LoadedModel, PendingScores, features_of
from anomaly_mlops.params import (
    DEFAULT_HEAD_TIMEOUT_S,
    DEFAULT_MAX_ENTITIES,
    DEFAULT_MAX_HEAD_BYTES,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_LARGE_REQUESTS,
)
from anomaly_mlops.serving.history import history_for
from anomaly_mlops.serving.http_guard import guarded_protocol
from anomaly_mlops.serving.protocol import (
    NOT_JSON,
    SMALL_BATCH_ROWS,
    InputProblem,
    ServedRowCounters,
    ServedScoreCounters,
    begin_request,
    claimed_rows,
    default_max_body_bytes,
    input_types,
    output_types,
    outside_range_counters,
    read_body_capped,
    served_score_counters,
    too_large,
    v1_answer,
    v2_outputs,
)
from anomaly_mlops.serving.shared_history import HistoryUnavailable, RunningLoop

log = logging.getLogger(__name__)

# On SIGTERM: stop accepting, finish the requests already taken, at most this long. With the
# ServingRuntime's 5 s preStop it stays within Kubernetes' default 30 s grace period.
GRACEFUL_SHUTDOWN_S = 10

_V1_MODEL = re.compile(r"^/v1/models/([^/:]+)(:predict)?$")
_V2_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?$")
_V2_DATATYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_JSON = [(b"content-type", b"application/json")]
_GET_PATHS = {"/", "/metrics", "/v1/models", "/v2", "/v2/health/live", "/v2/health/ready"}
# Request latency buckets, seconds: the hot path is well under a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Tensor:
    """One V2 input, as predictor.parse_v2 reads it."""

    name: str
    shape: list
    datatype: str
    data: object

    def as_numpy(self) -> np.ndarray:
        if self.datatype not in _V2_DATATYPES:
            raise ValueError(f"unsupported datatype {self.datatype}")
        array = np.asarray(self.data, dtype=_V2_DATATYPES[self.datatype])
        return array.reshape(self.shape)


@dataclass
class V2Request:
    inputs: list
    parameters: dict | None
    id: str | None


def read_v2(body: object) -> V2Request:
    """Check a decoded body against the Open Inference request schema (required fields and
    their types) before predictor.parse_v2 checks the tensors."""
    if not isinstance(body, dict):
        raise InputProblem("the V2 request must be a JSON object with 'inputs'")
    inputs = body.get("inputs")
    if not isinstance(inputs, list):
        raise InputProblem("invalid request: inputs: field required (a list of tensors)")
    tensors = []
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise InputProblem(f"invalid request: inputs.{i}: must be an object")
        missing = [k for k in ("name", "shape", "datatype", "data") if k not in item]
        if missing:
            raise InputProblem(f"invalid request: inputs.{i}: field required: {missing}")
        if not isinstance(item["name"], str) or not isinstance(item["datatype"], str):
            raise InputProblem(f"invalid request: inputs.{i}: name and datatype must be strings")
        if not isinstance(item["shape"], list):
            raise InputProblem(f"invalid request: inputs.{i}.shape: must be a list of integers")
        if "parameters" in item and not isinstance(item["parameters"], dict):
            raise InputProblem(f"invalid request: inputs.{i}.parameters: must be an object")
        tensors.append(Tensor(item["name"], item["shape"], item["datatype"], item["data"]))
    parameters = body.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InputProblem("invalid request: parameters: must be an object")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputProblem("invalid request: id: must be a string")
    return V2Request(tensors, parameters, request_id)


class Metrics:
    """Request count and latency per endpoint and status, rows scored and flagged, in the
    Prometheus text format (prometheus_client, own registry)."""

    def __init__(self, model_name: str):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "anomaly_detector_requests", "HTTP requests", ["endpoint", "code"], registry=self.registry
        )
        self.latency = Histogram(
            "anomaly_detector_request_duration_seconds",
            "Time from the request's first byte to the response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests_per_walk = Histogram(
            "anomaly_detector_requests_per_walk",
            "Requests scored together in one forest walk (those that reached the server in the same event-loop tick)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self._children: dict = {}
        self.entities = Gauge(
            "anomaly_detector_entities",
            "Entities whose history is kept in process",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livesum",
        ).labels(model_name)
        self.history_unavailable = Counter(
            "anomaly_detector_history_unavailable",
            "Requests answered 503 because the shared entity-history store did not answer",
            ["model"],
            registry=self.registry,
        ).labels(model_name)
        self.large_refused = Counter(
            "anomaly_detector_large_requests_refused",
            "Large requests answered 503 (Retry-After) because as many were being scored already",
            ["model"],
            registry=self.registry,
        ).labels(model_name)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count and time one request; label children are looked up once per (endpoint, status)."""
        key = (endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(endpoint, str(status)),
                self.latency.labels(endpoint),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        """This process's metrics; with several worker processes, all of theirs summed
        (prometheus_client's multiprocess mode: a scrape reaches any one worker)."""
        from prometheus_client import CollectorRegistry, generate_latest

        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)


class TickBatcher:
    """Scores the rows of every request that reaches the event loop in the same tick with
    one forest walk: its fixed cost (calls into numpy and C, the features of same-shaped
    requests in one pass) is paid once for them, and a request alone waits for nothing (no
    timer: the batch is scored as soon as the loop has run the requests that were ready with
    it)."""

    def __init__(self, model: LoadedModel, metrics: Metrics, served: ServedScoreCounters):
        self.model = model
        self.metrics = metrics
        self.served = served
        self.pending: list[tuple[PendingScores, asyncio.Future]] = []
        self._loop = RunningLoop()

    def score(self, pending: PendingScores) -> asyncio.Future:
        loop = self._loop()
        if not self.pending:
            loop.call_soon(self.flush)
        future = loop.create_future()
        self.pending.append((pending, future))
        return future

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        self.metrics.requests_per_walk.observe(len(batch))
        try:
            features = features_of([p for p, _ in batch])
            raw = self.model.raw_scores(features)
        except Exception as exc:  # noqa: BLE001 - each waiting request answers it as a 500
            for _, future in batch:
                _settle(future, exception=exc)
            return
        start = 0
        answered = []
        # In arrival order: an entity's smoothing must see its earlier requests' scores.
        for pending, future in batch:
            stop = start + pending.n_rows
            try:
                result = pending.finish(raw[start:stop])
                answered.append(result)
                _settle(future, result=result)
            except Exception as exc:  # noqa: BLE001
                _settle(future, exception=exc)
            start = stop
        if answered:
            self.served.observe(*_joined(answered))


def _joined(results: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """The predictions and scores of several answers, one array each."""
    if len(results) == 1:
        return results[0][0], results[0][1]
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


def _settle(future: asyncio.Future, result=None, exception: BaseException | None = None) -> None:
    """A request whose client went away has a cancelled future: nothing to answer."""
    if future.cancelled():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


class LeanApp:
    def __init__(
        self,
        model_name: str,
        model: LoadedModel,
        version: str | None = None,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        max_body_bytes: int | None = None,
        max_entities: int = DEFAULT_MAX_ENTITIES,
        max_large_requests: int = DEFAULT_MAX_LARGE_REQUESTS,
        history_url: str | None = None,
    ):
        self.name = model_name
        self.model = model
        self.version = version
        self.max_instances = max_instances
        self.max_body_bytes = max_body_bytes or default_max_body_bytes(max_instances, len(model.schema))
        # In process, or in the store at history_url (several replicas or worker processes).
        self.history = history_for(model, max_entities, history_url, model_name, version)
        self.expected = model.schema.describe()
        self.metrics = Metrics(model_name)
        self.outside = ServedRowCounters(model, model_name, outside_range_counters(self.metrics.registry))
        self.served = ServedScoreCounters(model, model_name, version, served_score_counters(self.metrics.registry))
        self.batcher = TickBatcher(model, self.metrics, self.served)
        # One thread: large batches queue behind each other instead of taking every core.
        self.batch_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
        # Admission of large requests (a body that may hold more than SMALL_BATCH_ROWS rows, or of
        # unknown length): at most this many are read, decoded and scored at once; others get
        # 503 with Retry-After before their body is read, so memory stays bounded under a flood.
        self.large_body_bytes = default_max_body_bytes(SMALL_BATCH_ROWS, len(model.schema))
        self.max_large_requests = max_large_requests
        self.large_requests = 0
        # One processing order per entity whatever the request sizes: a large request is begun
        # on the batch thread, later than a small one that arrived after it would be; so a
        # request first waits for the earlier large ones of its entity (arrival tickets).
        self._tickets = 0
        self._large: dict[int, _LargeInFlight] = {}
        self.metadata = orjson.dumps(
            {
                "name": model_name,
                "versions": [version] if version else [],
                "platform": "anomaly-mlops",
                "inputs": input_types(model),
                "outputs": output_types(model),
            }
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        endpoint, status, body = await self.route(scope, receive)
        headers = [*_JSON, (b"content-length", str(len(body)).encode())]
        if endpoint == "metrics":
            headers[0] = (b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        if status == 413:
            headers.append((b"connection", b"close"))
        elif status == 503:
            headers += [(b"retry-after", b"1"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.metrics.observe(endpoint, status, time.perf_counter() - started)

    async def route(self, scope, receive) -> tuple[str, int, bytes]:
        method, path = scope["method"], scope["path"]
        if method == "POST":
            if path.endswith(":predict"):
                found = _V1_MODEL.match(path)
                if found:
                    return await self.infer("v1_predict", found.group(1), scope, receive, v2=False)
            found = _V2_MODEL.match(path)
            if found and found.group(3) == "/infer":
                if self._unknown_version(found.group(2)):
                    await _drain(receive)
                    return "v2_infer", *self._no_version(found.group(2))
                return await self.infer("v2_infer", found.group(1), scope, receive, v2=True)
            if _V1_MODEL.match(path) or _V2_MODEL.match(path) or path in _GET_PATHS:
                return "other", *_error(405, "Method Not Allowed")
            return "other", *_error(404, "Not Found")
        if method not in ("GET", "HEAD"):
            return "other", *_error(405, "Method Not Allowed")
        if path in ("/", "/v2/health/live"):
            return "health", 200, b'{"status":"alive"}' if path == "/" else b'{"live":true}'
        if path == "/v2/health/ready":
            return "health", 200, b'{"ready":true}'
        if path == "/metrics":
            self.metrics.entities.set(len(self.history) if self.history is not None else 0)
            return "metrics", 200, self.metrics.render()
        if path == "/v1/models":
            return "metadata", 200, orjson.dumps({"models": [self.name]})
        if path in ("/v2", "/v2/"):
            return "metadata", 200, orjson.dumps({"name": "anomaly-mlops", "version": __version__, "extensions": []})
        found = _V1_MODEL.match(path)
        if found and not found.group(2):
            if found.group(1) != self.name:
                return "metadata", *_no_model(found.group(1))
            return "metadata", 200, orjson.dumps({"name": self.name, "ready": True})
        found = _V2_MODEL.match(path)
        if found and found.group(3) != "/infer":
            if found.group(1) != self.name:
                return "metadata", *_no_model(found.group(1))
            if self._unknown_version(found.group(2)):
                return "metadata", *self._no_version(found.group(2))
            if found.group(3) == "/ready":
                return "health", 200, orjson.dumps({"name": self.name, "ready": True})
            return "metadata", 200, self.metadata
        return "other", *_error(404, "Not Found")

    def _unknown_version(self, version: str | None) -> bool:
        """A version in the path must be the one served (any, when the model has no version)."""
        return version is not None and self.version is not None and version != self.version

    def _no_version(self, version: str) -> tuple[int, bytes]:
        return _error(404, f"Model {self.name} has no version {version}; it serves {self.version}")

    async def infer(self, endpoint: str, model_name: str, scope, receive, v2: bool) -> tuple[str, int, bytes]:
        if model_name != self.name:
            await _drain(receive)
            return endpoint, *_no_model(model_name)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        large = not length.isdigit() or int(length) > self.large_body_bytes
        if not large:
            return endpoint, *await self._infer(headers, receive, v2, large=False)
        if self.large_requests >= self.max_large_requests:
            self.metrics.large_refused.inc()
            return endpoint, *_error(
                503, f"{self.large_requests} large requests are being scored (at most {self.max_large_requests}): retry"
            )
        self.large_requests += 1
        try:
            return endpoint, *await self._infer(headers, receive, v2, large=True)
        finally:
            self.large_requests -= 1

    async def _infer(self, headers: dict, receive, v2: bool, large: bool) -> tuple[int, bytes]:
        body, refused = await read_body_capped(headers, receive, self.max_body_bytes)
        if refused:
            return _error(413, too_large(refused, self.max_body_bytes))
        content_type = headers.get(b"content-type", b"")
        if not content_type.startswith(b"application/json"):
            return _error(400, NOT_JSON)
        # A request's place in its entity's order is when its body was in: a slow upload
        # holds up nobody else.
        self._tickets += 1
        ticket = self._tickets
        if not large:
            try:
                payload = orjson.loads(body or b"")
            except orjson.JSONDecodeError as exc:
                return _not_json(exc)
            if self._large:
                await self._after_earlier_large(ticket, _entity_of(payload, v2))
            return await self._score(payload, v2)
        record = self._large[ticket] = _LargeInFlight()
        try:
            loop = asyncio.get_running_loop()
            try:  # decoded on the batch thread, not on the event loop
                payload = await loop.run_in_executor(self.batch_pool, orjson.loads, body or b"")
            except orjson.JSONDecodeError as exc:
                return _not_json(exc)
            record.entity = _entity_of(payload, v2)
            record.decoded.set()
            await self._after_earlier_large(ticket, record.entity)
            return await self._score(payload, v2)
        finally:
            record.decoded.set()
            record.done.set()
            del self._large[ticket]

    async def _score(self, payload, v2: bool) -> tuple[int, bytes]:
        large = claimed_rows(payload, v2) > SMALL_BATCH_ROWS
        try:  # a large request is parsed and scored on the batch thread, on its own
            request, pending = (
                await asyncio.get_running_loop().run_in_executor(self.batch_pool, self.begin, payload, v2)
                if large
                else self.begin(payload, v2)
            )
            await pending.ready()
        except InputProblem as exc:
            return _error(400, str(exc))
        except HistoryUnavailable as exc:
            self.metrics.history_unavailable.inc()
            return _error(503, str(exc))
        if large:
            result = await asyncio.get_running_loop().run_in_executor(self.batch_pool, pending.score_alone, self.model)
            self.served.observe(result[0], result[1])
            return self.reply(request, result, v2)
        return self.reply(request, await self.batcher.score(pending), v2)

    async def _after_earlier_large(self, ticket: int, entity) -> None:
        """Wait until every large request that arrived before ``ticket`` and belongs to
        ``entity`` (known once it is decoded) is answered; other entities' do not hold it up."""
        for earlier, record in list(self._large.items()):
            if earlier >= ticket:
                continue
            await record.decoded.wait()
            if entity is not None and record.entity == entity:
                await record.done.wait()

    def begin(self, payload, v2: bool) -> tuple[object, PendingScores]:
        request = read_v2(payload) if v2 else payload
        pending = begin_request(self.model, self.history, request, v2, self.max_instances, self.expected, self.outside)
        return request, pending

    def reply(self, request, result, v2: bool) -> tuple[int, bytes]:
        predictions, scores, complete = result
        if not v2:
            return 200, orjson.dumps(v1_answer(predictions, scores, complete))
        outputs = v2_outputs(predictions, scores, complete)
        answer = {"model_name": self.name, "id": request.id or str(uuid.uuid4()), "outputs": outputs}
        if self.version:
            answer["model_version"] = self.version
        return 200, orjson.dumps(answer)


@dataclass
class _LargeInFlight:
    decoded: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    entity: object = None


def _entity_of(payload, v2: bool):
    """The entity a decoded body names, as sent (checked later by the protocol), or None."""
    if not isinstance(payload, dict):
        return None
    if v2:
        parameters = payload.get("parameters")
        return parameters.get("entity") if isinstance(parameters, dict) else None
    return payload.get("entity")


def _not_json(exc: orjson.JSONDecodeError) -> tuple[int, bytes]:
    return _error(400, f"the request body is not valid JSON: {exc}"[:500])


def _error(status: int, message: str) -> tuple[int, bytes]:
    return status, orjson.dumps({"error": message})


def _no_model(name: str) -> tuple[int, bytes]:
    return _error(404, f"Model with name {name} does not exist.")


async def _drain(receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def serve_lean(
    model_name: str,
    model: LoadedModel,
    version: str | None,
    http_port: int,
    host: str,
    max_instances: int,
    max_body_bytes: int | None,
    max_entities: int,
    workers: int = 1,
    max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S,
    max_large_requests: int = DEFAULT_MAX_LARGE_REQUESTS,
    history_url: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT: one process, or ``workers`` processes forked after the
    model is loaded (its arrays shared copy-on-write), each listening on the port with
    SO_REUSEPORT, so the kernel spreads connections evenly over them (on one shared socket
    the first worker to wake takes most of a burst of new connections)."""
    import signal
    import sys

    from anomaly_mlops.serving.sockets import bind

    # A busy port is a ServeError (exit 6), said before anything serves. With workers this
    # socket only holds the port: each worker listens on its own.
    sock = bind(host, http_port, reuse_port=workers > 1, listen=workers == 1)
    _raise_open_file_limit()
    log.info(
        "serving %s on %s:%d (lean server, %d process%s, bodies up to %d bytes)",
        model_name,
        host,
        http_port,
        workers,
        "es" if workers > 1 else "",
        max_body_bytes or default_max_body_bytes(max_instances, len(model.schema)),
    )

    def run() -> None:
        listening = sock if workers == 1 else bind(host, http_port, reuse_port=True)
        app = LeanApp(
            model_name, model, version, max_instances, max_body_bytes, max_entities, max_large_requests, history_url
        )
        _run_uvicorn(app, listening, max_head_bytes, head_timeout_s)

    if workers == 1:
        # uvicorn shuts down gracefully on SIGTERM/SIGINT and then re-raises the signal into the
        # handler that was there before: make that an exit, so the caller's cleanup runs.
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: sys.exit(0))
        run()
        return
    from anomaly_mlops.serving.workers import supervise

    supervise(workers, run, sock)


def _run_uvicorn(app: LeanApp, sock, max_head_bytes: int, head_timeout_s: float) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        loop="uvloop",
        http=guarded_protocol(max_head_bytes, head_timeout_s),
        access_log=False,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        # Nothing here reads the client's address, so no X-Forwarded-For rewriting on every
        # request; no "server: uvicorn" header (the Date header stays: HTTP requires it).
        proxy_headers=False,
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])


def _raise_open_file_limit() -> None:
    """Every connection holds a file descriptor: the soft limit (often 1,024) up to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard)
            )
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit above %d: %s", soft, exc)
