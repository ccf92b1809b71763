"""Entity history in a Redis/Valkey server, shared by every replica and worker process that
serves one model version (``serve --history-url redis://HOST:PORT/DB``).

Round-robin routing sends an entity's rows to any replica, so no process can keep its
history alone (history.py keeps it in process memory: one replica, one process). Here each
request appends its rows to the entity's record with one atomic script that returns the rows
before them: the record's order is the order the store ran the appends, whichever process
sent them. A record holds the rows the model's window and smoothing reach back to, and the
count of rows seen; the raw scores the smoothing needs are recomputed from those rows, so
no process waits for a score another process has not written yet, and the answer is the
one history.py gives for the same order of rows (tests/test_shared_history.py).

- The key holds the model name, version and manifest digest: a canary and the stable
  version, or two rollouts, never read each other's rows.
- A record expires ``ttl_s`` after its last row (five missed samples, as history.py): a
  window that spans a gap would mix unrelated times. Memory is the store's to bound
  (``maxmemory`` with a volatile eviction policy: every record has a TTL, and one record is
  one key, so an eviction drops an entity whole, never half of it).
- A store that is unreachable, slow or refusing raises HistoryUnavailable: the servers
  answer 503 with Retry-After; they never score a row without the history it needs.
- One process sends its appends in arrival order over one connection (the requests of an
  event-loop tick in one pipeline, the next tick's after it), so per-entity order holds
  within a process as it does across processes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import numpy as np

from anomaly_mlops.errors import ConfigError
from anomaly_mlops.model.artifacts import LoadedModel, PendingScores
from anomaly_mlops.model.features import smooth_scores
from anomaly_mlops.serving.history import history_marks, max_gap_s, not_newer, run_after, sample_interval_s

log = logging.getLogger(__name__)

# KEYS[1]: the entity's record, "<rows in its run>|<newest row's timestamp, or empty>|<rows, packed float64>".
# ARGV: bytes of rows to keep, TTL in ms, rows in this request, this request's last rows,
# its first and last timestamps (empty without), the largest gap in seconds, and the run
# length after it when the request itself holds a gap (else empty).
# Returns {rows in the run before this request, the kept rows before it} (both reset after a
# gap), or {-1, newest timestamp} for rows not after the entity's newest: nothing written.
APPEND_SCRIPT = """
local record = redis.call('GET', KEYS[1])
local seen, newest, stamp, prior = 0, nil, '', ''
if record then
  local a = string.find(record, '|', 1, true)
  local b = string.find(record, '|', a + 1, true)
  seen = tonumber(string.sub(record, 1, a - 1))
  stamp = string.sub(record, a + 1, b - 1)
  newest = tonumber(stamp)
  prior = string.sub(record, b + 1)
end
local first = tonumber(ARGV[5])
if first and newest then
  if first <= newest then return {-1, stamp} end
  if first - newest > tonumber(ARGV[7]) then seen, prior = 0, '' end
end
local run = seen + tonumber(ARGV[3])
if ARGV[8] ~= '' then run = tonumber(ARGV[8]) end
if ARGV[6] ~= '' then stamp = ARGV[6] end
local keep = tonumber(ARGV[1])
local joined = prior .. ARGV[4]
local kept = string.sub(joined, math.max(#joined - keep + 1, 1))
redis.call('SET', KEYS[1], string.format('%d', run) .. '|' .. stamp .. '|' .. kept, 'PX', ARGV[2])
return {seen, prior}
"""

DEFAULT_HISTORY_TIMEOUT_S = 0.5


class HistoryUnavailable(Exception):
    """The history store did not answer: the request is answered 503, not scored."""


def check_history_url(url: str) -> str:
    """A redis://, rediss:// or unix:// URL, or a ConfigError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"--history-url must be redis://HOST:PORT/DB, rediss://... or unix://PATH, got {url!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"--history-url names no host: {redact_url(url)}")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigError(f"--history-url's database must be a number, got {db!r}")
    return url


def redact_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


class SharedHistory:
    """Per-entity history in a Redis/Valkey store; ``await begin(entity, X)`` in place of
    history.EntityHistory.begin."""

    shared = True

    def __init__(
        self,
        model: LoadedModel,
        url: str,
        model_name: str,
        version: str | None,
        timeout_s: float = DEFAULT_HISTORY_TIMEOUT_S,
        ttl_s: float | None = None,
    ):
        import redis.asyncio

        self.model = model
        self.url = check_history_url(url)
        self.where = redact_url(url)
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s if ttl_s is not None else 5 * sample_interval_s(model)
        self.max_gap_s = max_gap_s(model)
        self.width = len(model.schema)
        self._keep_rows = model.history_rows  # the window's rows and those whose raw scores the smoothing needs
        self._redo = model.smoothing - 1
        self._keep_bytes = 8 * self.width * self._keep_rows
        self.prefix = f"anomaly-mlops:history:{model_name}:{version or '-'}:{model.manifest_digest[:16]}:"
        self._client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, single_connection_client=True
        )
        self._queue: list[tuple] = []  # (entity, rows, timestamps or None, future)
        self._sending = False
        log.info(
            "entity history in %s under %s*: the last %d rows of each entity, forgotten after %.0f s unseen",
            self.where,
            self.prefix,
            self._keep_rows,
            self.ttl_s,
        )

    def __len__(self) -> int:  # entities are the store's to count (its keyspace), not this process's
        return 0

    def begin(self, entity: str, X: np.ndarray, times=None) -> PendingScores:
        """history.EntityHistory.begin with the history in the store: ``await pending.ready()``
        appends ``X`` (the entity's next rows, oldest first) to its record and sets the rows
        before them; it raises HistoryUnavailable when the store does not answer. Call it
        on the event loop in the order the requests arrived."""
        model = self.model
        finishing = {}  # set by prepare; finish may be wrapped before (protocol.begin_request)
        pending = PendingScores(X, lambda raw: finishing["finish"](raw), model.transform, last=len(X))

        async def prepare() -> None:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            self._queue.append((entity, X, times, future))
            if not self._sending:
                self._sending = True
                loop.create_task(self._send())
            seen, prior = await future
            if seen == -1:  # not after the entity's newest row: refused, nothing written
                raise not_newer(entity, float(times[0]), float(prior))
            before = np.frombuffer(prior, dtype="<f8").reshape(-1, self.width)
            redo = min(self._redo, len(before))  # earlier rows whose raw scores the smoothing needs
            complete = history_marks(seen, len(X), model.history_rows, times, self.max_gap_s)

            def finish(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                scores = smooth_scores(raw, model.smoothing)[redo:] if model.smoothing > 1 else raw
                return model.label(scores), scores, complete

            pending.rows = np.vstack([before, X]) if len(before) else X
            pending.last = redo + len(X)
            finishing["finish"] = finish

        pending.prepare = prepare
        return pending

    async def _send(self) -> None:
        """Sends what the queue holds in one pipeline, in arrival order; then what came meanwhile."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    answers = await asyncio.wait_for(self._append_all(batch), self.timeout_s * 2)
                except Exception as exc:  # noqa: BLE001 - every waiting request answers 503
                    answers = [exc] * len(batch)
                for (*_, future), answer in zip(batch, answers):
                    if future.done():
                        continue
                    if isinstance(answer, BaseException):
                        future.set_exception(self._unavailable(answer))
                    else:
                        future.set_result(answer)
        finally:
            self._sending = False

    async def _append_all(self, batch) -> list:
        """The script's answer (or the store's error) for each request, in order. EVAL with
        the script's text, not EVALSHA: a store restarted without its scripts would answer
        NOSCRIPT, and redis-py leaves a connection unusable after an error in a pipeline."""
        ttl_ms = str(max(int(self.ttl_s * 1000), 1))
        pipe = self._client.pipeline(transaction=False)
        gap = repr(self.max_gap_s)
        for entity, X, times, _ in batch:
            tail = np.ascontiguousarray(X[max(len(X) - self._keep_rows, 0) :], dtype="<f8").tobytes()
            first = last = run = ""
            if times is not None:
                first, last = repr(float(times[0])), repr(float(times[-1]))
                after = run_after(-(10**9), len(X), times, self.max_gap_s)  # negative: no gap inside
                run = str(after) if after >= 0 else ""
            pipe.execute_command(
                "EVAL",
                APPEND_SCRIPT,
                1,
                self.prefix + entity,
                self._keep_bytes,
                ttl_ms,
                len(X),
                tail,
                first,
                last,
                gap,
                run,
            )
        return await pipe.execute(raise_on_error=False)

    def _unavailable(self, exc: BaseException) -> HistoryUnavailable:
        reason = "timed out" if isinstance(exc, TimeoutError | asyncio.TimeoutError) else str(exc) or type(exc).__name__
        log.warning("history store %s: %s", self.where, reason)
        return HistoryUnavailable(
            f"the entity history store ({self.where}) did not answer ({reason}); the rows were not scored: retry"
        )

    async def ping(self) -> float:
        """Seconds for one round trip to the store; raises HistoryUnavailable."""
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._client.ping(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001
            raise self._unavailable(exc) from None
        return time.perf_counter() - started

    async def close(self) -> None:
        await self._client.aclose()
