"""Entity history in a Redis/Valkey server, shared by every replica and worker process that
serves one model version (``serve --history-url redis://HOST:PORT/DB``).

Round-robin routing sends an entity's rows to any replica, so no process can keep its
history alone (history.py keeps it in process memory: one replica, one process). Here each
request appends its rows to the entity's record with one atomic script that returns what
was there before: the record's order is the order the store ran the appends, whichever
process sent them. A record holds the rows the model's window and smoothing reach back to,
and the raw scores of the last rows as the process that scored them wrote them back; a raw
score not written yet (another process is still scoring that row) is recomputed from the
rows. Either way the answer is the one history.py gives for the same order of rows, bit for
bit (tests/test_shared_history.py).

- Each process keeps a copy of the kept rows of the entities it served last; an append
  names the copy's generation and row count, and the store sends only the rows appended
  after it (by other processes), or all of them when the copy is stale.
- The key holds the model name, version and manifest digest: a canary and the stable
  version, or two rollouts, never read each other's rows.
- A record expires ``ttl_s`` after its last row (five missed samples, as history.py): a
  window that spans a gap would mix unrelated times. Memory is the store's to bound
  (``maxmemory`` with a volatile eviction policy: every record has a TTL, and one record is
  one key, so an eviction drops an entity whole, never half of it).
- A store that is unreachable, slow or refusing raises HistoryUnavailable: the servers
  answer 503 with Retry-After; they never score a row without the history it needs.
- One process sends its commands in arrival order on one connection, pipelined (the
  requests of an event-loop tick in one write, without waiting for earlier replies), so
  per-entity order holds within a process as it does across processes. The client is a few
  lines over hiredis' reply parser: the Redis protocol needs no more here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict, deque
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np

from anomaly_mlops.errors import ConfigError
from anomaly_mlops.model.artifacts import LoadedModel, PendingScores
from anomaly_mlops.model.features import smooth_after
from anomaly_mlops.params import DEFAULT_MAX_ENTITIES
from anomaly_mlops.redact import redact
from anomaly_mlops.serving.series import history_marks, max_gap_s, not_newer, run_after, sample_interval_s

log = logging.getLogger(__name__)

# A record is one string key (an eviction drops an entity whole) of fixed layout, so that an
# append reads and writes only the bytes it needs (SETRANGE/GETRANGE) instead of moving the
# entity's kept rows through Lua twice, most of the store's CPU per request:
#   bytes [0, RECORD_HEADER_BYTES): "<generation>|<rows in the current run>|<rows appended in
#     this generation>|<newest row's timestamp, or empty>", padded with spaces;
#   then the raw scores of the last rows (float64, NaN until written back) and then the kept
#   rows (packed float64), each a ring: the row appended i-th in the generation is in slot
#   i mod (slots).
# A generation starts with the record and at every gap, so a late write-back never lands in
# another series.
RECORD_HEADER_BYTES = 128
# The record's layout, in the key: servers of another layout never read these records.
RECORD_LAYOUT = "r2"

# Shared by both scripts: the bytes of the ring slots of indices [lo, hi), oldest first, and
# the bytes of consecutive slots written from index lo.
_RING = f"""
local HEADER = {RECORD_HEADER_BYTES}
local function ring_read(base, slots, width, lo, hi)
  if hi <= lo then return '' end
  local s, count = lo % slots, hi - lo
  local first = math.min(count, slots - s)
  local part = redis.call('GETRANGE', KEYS[1], base + s * width, base + (s + first) * width - 1)
  if count > first then
    part = part .. redis.call('GETRANGE', KEYS[1], base, base + (count - first) * width - 1)
  end
  return part
end
local function ring_write(base, slots, width, lo, bytes)
  local count = #bytes / width
  if count == 0 then return end
  local s = lo % slots
  local first = math.min(count, slots - s)
  redis.call('SETRANGE', KEYS[1], base + s * width, string.sub(bytes, 1, first * width))
  if count > first then
    redis.call('SETRANGE', KEYS[1], base, string.sub(bytes, first * width + 1))
  end
end
"""

# KEYS[1]: the record. ARGV: 1 rows to keep, 2 bytes per row, 3 raw scores to keep, 4 TTL ms,
# 5 rows in this request, 6 its last rows (at most the rows to keep), 7-8 its first and last
# timestamps (empty without), 9 the largest gap in seconds, 10 the run length after it when
# the request holds a gap (else empty), 11 an unknown raw score (NaN, 8 bytes), 12-13 the
# generation and the rows appended in it that the calling process holds a copy of (empty:
# none).
# Returns {rows in the run before, generation, rows appended before, kept rows, their raw
# scores, 1 when the rows are only those appended after the caller's copy (else 0)} (after a
# gap: an empty run), or {-1, newest timestamp} for rows not after the entity's newest:
# nothing written.
APPEND_SCRIPT = (
    _RING
    + """
local keep, rowbytes, keep_raw = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rows_at = HEADER + keep_raw * 8
local gen, run, total, stamp = nil, 0, 0, ''
local head = redis.call('GETRANGE', KEYS[1], 0, rows_at - 1)
if #head == rows_at then
  local g, r, t, s = string.match(head, '^([^|]+)|(%d+)|(%d+)|(%S*)')
  if g then gen, run, total, stamp = g, tonumber(r), tonumber(t), s end
end
local newest, first = tonumber(stamp), tonumber(ARGV[7])
if first and newest then
  if first <= newest then return {-1, stamp} end
  if first - newest > tonumber(ARGV[9]) then gen, run, total = nil, 0, 0 end
end
if not gen then
  local now = redis.call('TIME')
  gen = now[1] .. '.' .. now[2]
end
local n = tonumber(ARGV[5])
local after = run + n
if ARGV[10] ~= '' then after = tonumber(ARGV[10]) end
if ARGV[8] ~= '' then stamp = ARGV[8] end
local header = gen .. '|' .. string.format('%d', after) .. '|' .. string.format('%d', total + n) .. '|' .. stamp
if #header > HEADER then return redis.error_reply('history record header too long') end
local held, kept = tonumber(ARGV[13]), math.min(total, keep)
local rows, since = nil, 0
if held and ARGV[12] == gen and held <= total and total - held <= kept then
  rows, since = ring_read(rows_at, keep, rowbytes, held, total), 1
else
  rows = ring_read(rows_at, keep, rowbytes, total - kept, total)
end
local raws = ''
if keep_raw > 0 then
  local k = math.min(keep_raw, total)
  local s = (total - k) % keep_raw
  local first_part = math.min(k, keep_raw - s)
  raws = string.sub(head, HEADER + s * 8 + 1, HEADER + (s + first_part) * 8) ..
    string.sub(head, HEADER + 1, HEADER + (k - first_part) * 8)
  local m = math.min(n, keep_raw)
  ring_write(HEADER, keep_raw, 8, total + n - m, string.rep(ARGV[11], m))
end
ring_write(rows_at, keep, rowbytes, total + n - #ARGV[6] / rowbytes, ARGV[6])
redis.call('SETRANGE', KEYS[1], 0, header .. string.rep(' ', HEADER - #header))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {run, gen, total, rows, raws, since}
"""
)

# KEYS[1]: the record. ARGV: 1 generation, 2 index (rows appended before) of the first score
# sent, 3 the raw scores (float64), 4 raw scores kept. Fills those of the kept raw scores it
# covers; nothing when the record is another generation (expired, or a gap came between).
WRITE_BACK_SCRIPT = (
    _RING
    + """
local keep_raw = tonumber(ARGV[4])
local g, t = string.match(redis.call('GETRANGE', KEYS[1], 0, HEADER - 1), '^([^|]+)|%d+|(%d+)|')
if g ~= ARGV[1] then return 0 end
local total, first, sent = tonumber(t), tonumber(ARGV[2]), ARGV[3]
local lo, hi = math.max(first, total - math.min(keep_raw, total)), math.min(first + #sent / 8, total)
if hi <= lo then return 0 end
ring_write(HEADER, keep_raw, 8, lo, string.sub(sent, (lo - first) * 8 + 1, (hi - first) * 8))
return 1
"""
)

SCRIPTS = {name: hashlib.sha1(text.encode()).hexdigest().encode() for name, text in
           (("append", APPEND_SCRIPT), ("write_back", WRITE_BACK_SCRIPT))}  # fmt: skip

UNKNOWN_RAW = np.array([np.nan], dtype="<f8").tobytes()

DEFAULT_HISTORY_TIMEOUT_S = 0.5
# A write-back waits this long for the next tick's appends to travel with (one write and one
# wakeup of the store per tick instead of two); a raw score not written back yet is
# recomputed by whoever needs it, so the wait costs no answer anything but that.
WRITE_BACK_DELAY_S = 0.002


class RunningLoop:
    """The running event loop, looked up once per loop: asyncio.get_running_loop() makes a
    getpid() system call on every call (CPython 3.11's fork check), several a request here."""

    __slots__ = ("_loop",)

    def __init__(self):
        self._loop = None

    def __call__(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or not loop.is_running():
            loop = self._loop = asyncio.get_running_loop()
        return loop


class HistoryUnavailable(Exception):
    """The history store did not answer: the request is answered 503, not scored."""


def check_history_url(url: str) -> str:
    """A redis://, rediss:// or unix:// URL, or a ConfigError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"--history-url must be redis://HOST:PORT/DB, rediss://... or unix://PATH, got {redact(url)!r}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"--history-url names no host: {redact(url)}")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigError(f"--history-url's database must be a number, got {db!r}")
    return url


class _Replies(asyncio.Protocol):
    """One connection to the store: commands written in order, replies (parsed by hiredis)
    handed to the futures waiting for them in the same order; None for a command whose reply
    nobody waits for."""

    def __init__(self):
        import hiredis

        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future | None] = deque()
        self.transport: asyncio.Transport | None = None
        self.broken = False
        self.reason = "the connection closed"

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                future = self.waiting.popleft()
                if future is not None and not future.done():
                    future.set_result(reply)
        except Exception as exc:  # noqa: BLE001 - a reply we cannot read: the connection is useless
            self.abort(f"unreadable reply: {exc}")

    def connection_lost(self, exc) -> None:
        self.broken = True
        error = ConnectionError(str(exc) if exc else self.reason)
        while self.waiting:
            future = self.waiting.popleft()
            if future is not None and not future.done():
                future.set_exception(error)

    def send(self, payload: bytes, futures: list) -> None:
        self.waiting.extend(futures)
        self.transport.write(payload)

    def abort(self, reason: str) -> None:
        self.reason = reason
        self.broken = True
        if self.transport is not None:
            self.transport.abort()


class SharedHistory:
    """Per-entity history in a Redis/Valkey store: history.EntityHistory's ``begin``, with
    the store's round trip in ``await pending.ready()``."""

    def __init__(
        self,
        model: LoadedModel,
        url: str,
        model_name: str,
        version: str | None,
        timeout_s: float = DEFAULT_HISTORY_TIMEOUT_S,
        ttl_s: float | None = None,
        max_entities: int = DEFAULT_MAX_ENTITIES,
    ):
        self.model = model
        self.url = check_history_url(url)
        self.where = redact(url)
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s if ttl_s is not None else 5 * sample_interval_s(model)
        self.max_gap_s = max_gap_s(model)
        self.width = len(model.schema)
        self._window_rows = max(model.transform.window - 1, 0)
        self._keep_rows = model.history_rows  # the window's rows and those whose raw scores the smoothing needs
        self._keep_raw = model.smoothing - 1
        self._fixed = (
            str(self._keep_rows).encode(),
            str(8 * self.width).encode(),
            str(self._keep_raw).encode(),
            str(max(int(self.ttl_s * 1000), 1)).encode(),
        )
        self._gap = repr(self.max_gap_s).encode()
        self.prefix = (
            f"anomaly-mlops:history:{RECORD_LAYOUT}:{model_name}:{version or '-'}:{model.manifest_digest[:16]}:"
        )
        self._queue: list[tuple[tuple, asyncio.Future | None]] = []
        self._flush_scheduled = False
        self._write_backs_due: asyncio.TimerHandle | None = None
        self._connecting = False
        self._connection: _Replies | None = None
        self._loop = RunningLoop()
        # This process's copy of the kept rows of the entities it served last (at most
        # max_entities): (generation, rows appended in it, the rows). The store then sends only
        # the rows other processes appended since, instead of all the kept rows every request.
        self._copies: OrderedDict[bytes, tuple[bytes, int, np.ndarray]] = OrderedDict()
        self._max_copies = max_entities
        log.info(
            "entity history in %s under %s*: the last %d rows of each entity, forgotten after %.0f s unseen; "
            "this process keeps a copy of them for up to %d entities (at most %.1f MiB)",
            self.where,
            self.prefix,
            self._keep_rows,
            self.ttl_s,
            max_entities,
            max_entities * (2 * 8 * self._keep_rows * self.width + 200) / 2**20,
        )

    def __len__(self) -> int:  # entities are the store's to count (its keyspace), not this process's
        return 0

    def begin(self, entity: str, X: np.ndarray, times=None) -> PendingScores:
        """history.EntityHistory.begin with the history in the store: ``await pending.ready()``
        appends ``X`` (the entity's next rows, oldest first) to its record and sets the rows
        before them; it raises HistoryUnavailable when the store does not answer, and
        InputProblem for rows not after the entity's newest. Call ``ready`` on the event
        loop in the order the requests arrived."""
        model = self.model
        finishing = {}  # set by prepare; finish may be wrapped before (protocol.begin_request)
        pending = PendingScores(X, lambda raw: finishing["finish"](raw), model.transform, last=len(X))
        key = (self.prefix + entity).encode()

        async def prepare() -> None:
            future = self._loop().create_future()
            copy = self._copies.get(key)  # as it is now: the store sends the rows appended after it
            self._send(self._append_command(key, X, times, copy), future)
            try:
                answer = await future
            except Exception as exc:  # noqa: BLE001
                raise self._unavailable(exc) from None
            if not isinstance(answer, list):  # the store's error
                if "NOSCRIPT" in str(answer) and self._connection is not None:
                    self._connection.abort("the store lost its scripts")  # reloaded on the next connection
                raise self._unavailable(answer)
            if answer[0] == -1:  # not after the entity's newest row: refused, nothing written
                raise not_newer(entity, float(times[0]), float(answer[1]))
            run, generation, total, prior, prior_raw, since_copy = answer
            before = np.frombuffer(prior, dtype="<f8").reshape(-1, self.width)
            if since_copy:  # the rows other processes appended after this process's copy
                before = np.concatenate([copy[2], before])[-self._keep_rows :] if len(before) else copy[2]
            joined = np.concatenate([before, X])
            self._remember(key, generation, total + len(X), joined)
            known = np.frombuffer(prior_raw, dtype="<f8")
            need = min(self._keep_raw, len(before))  # earlier raw scores the smoothing needs
            complete = history_marks(run, len(X), model.history_rows, times, self.max_gap_s)
            # Unknown scores are UNKNOWN_RAW's bytes, and a score written back is never NaN (a
            # match across two scores would only recompute what is known: the same bits).
            if need and (len(known) < need or UNKNOWN_RAW in prior_raw[len(prior_raw) - 8 * need :]):
                # A raw score not written back yet: recomputed with the rows before it.
                pending.rows = joined
                pending.last, redo = need + len(X), need
            else:  # the window's rows before X, and X (rows of one array: C-contiguous)
                pending.rows = joined[max(len(before) - self._window_rows, 0) :]
                pending.last, redo = len(X), 0
            earlier = known[len(known) - need :] if need and not redo else known[:0]

            def finish(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                own = raw[redo:]
                if self._keep_raw:
                    self._write_back(key, generation, total, own)
                    # the earlier scores: written back (earlier) or recomputed (raw[:redo])
                    scores = smooth_after(
                        np.concatenate([earlier, raw[:redo]]) if redo else earlier, own, model.smoothing
                    )
                else:
                    scores = own
                return model.label(scores), scores, complete

            finishing["finish"] = finish

        pending.prepare = prepare
        return pending

    def _remember(self, key: bytes, generation: bytes, total: int, joined: np.ndarray) -> None:
        """This process's copy of an entity's kept rows, newest last (replies come in the order
        the store ran the appends, so the last one remembered is the newest)."""
        kept = joined[max(len(joined) - self._keep_rows, 0) :]
        if len(joined) > 2 * self._keep_rows:  # a view would keep a large request alive
            kept = kept.copy()
        copies = self._copies
        copies[key] = (generation, total, kept)
        copies.move_to_end(key)
        if len(copies) > self._max_copies:
            copies.popitem(last=False)

    def _append_command(self, key: bytes, X: np.ndarray, times, copy: tuple | None = None) -> tuple:
        tail = np.ascontiguousarray(X[max(len(X) - self._keep_rows, 0) :], dtype="<f8").tobytes()
        first = last = run = b""
        if times is not None:
            first, last = repr(float(times[0])).encode(), repr(float(times[-1])).encode()
            after = run_after(-(10**9), len(X), times, self.max_gap_s)  # negative: no gap inside
            run = str(after).encode() if after >= 0 else b""
        keep_rows, row_bytes, keep_raw, ttl_ms = self._fixed
        held_generation, held = (copy[0], str(copy[1]).encode()) if copy is not None else (b"", b"")
        return (b"EVALSHA", SCRIPTS["append"], b"1", key, keep_rows, row_bytes, keep_raw, ttl_ms, str(len(X)).encode(),
                tail, first, last, self._gap, run, UNKNOWN_RAW, held_generation, held)  # fmt: skip

    def _write_back(self, key: bytes, generation: bytes, total: int, raw: np.ndarray) -> None:
        """The rows' raw scores into the record (no reply awaited): the next request of the
        entity, in whatever process, smooths with them instead of recomputing."""
        sent = raw[max(len(raw) - self._keep_raw, 0) :]
        first = total + len(raw) - len(sent)
        payload = np.ascontiguousarray(sent, dtype="<f8").tobytes()
        keep_raw = self._fixed[2]
        command = (b"EVALSHA", SCRIPTS["write_back"], b"1", key, generation, str(first).encode(), payload, keep_raw)
        self._queue.append((command, None))  # with the next appends, or WRITE_BACK_DELAY_S from now
        if not self._flush_scheduled and self._write_backs_due is None:
            self._write_backs_due = self._loop().call_later(WRITE_BACK_DELAY_S, self._flush)

    def _send(self, command: tuple, future: asyncio.Future | None) -> None:
        """Queue a command; the queue is written at the end of this event-loop tick."""
        self._queue.append((command, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop().call_soon(self._flush)

    def _flush(self) -> None:
        import hiredis

        self._flush_scheduled = False
        if self._write_backs_due is not None:  # they go now, ahead of the appends queued after them
            self._write_backs_due.cancel()
            self._write_backs_due = None
        if self._connecting or not self._queue:
            return  # the connection, once made, writes the queue
        connection = self._connection
        if connection is None or connection.broken:
            self._connecting = True
            self._loop().create_task(self._connect())
            return
        batch, self._queue = self._queue, []
        futures = [future for _, future in batch]
        connection.send(b"".join(hiredis.pack_command(command) for command, _ in batch), futures)
        waited = [f for f in futures if f is not None]
        if waited:  # replies late: the connection is dropped, failing every request waiting on it
            self._loop().call_later(self.timeout_s, self._expire, connection, waited)

    @staticmethod
    def _expire(connection: _Replies, futures: list) -> None:
        if any(not f.done() for f in futures):
            connection.abort("timed out")

    async def _connect(self) -> None:
        try:
            self._connection = await asyncio.wait_for(self._open(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - every queued request answers 503
            batch, self._queue = self._queue, []
            error = ConnectionError("timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__)
            for _, future in batch:
                if future is not None and not future.done():
                    future.set_exception(error)
        finally:
            self._connecting = False
        self._flush()

    async def _open(self) -> _Replies:
        """A connection, authenticated and on the URL's database."""
        import hiredis

        loop = asyncio.get_running_loop()
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            _, connection = await loop.create_unix_connection(_Replies, parts.path)
        else:
            import ssl

            tls = ssl.create_default_context() if parts.scheme == "rediss" else None
            _, connection = await loop.create_connection(_Replies, parts.hostname, parts.port or 6379, ssl=tls)
        setup = []
        if parts.password is not None:
            user = unquote(parts.username) if parts.username else None
            setup.append(("AUTH", *([user] if user else []), unquote(parts.password)))
        db = parts.path.strip("/") if parts.scheme != "unix" else dict(parse_qsl(parts.query)).get("db", "")
        if db and db != "0":
            setup.append(("SELECT", db))
        # Loaded on every connection: a store restarted (scripts gone) is a new connection.
        setup += [("SCRIPT", "LOAD", APPEND_SCRIPT), ("SCRIPT", "LOAD", WRITE_BACK_SCRIPT)]
        futures = [loop.create_future() for _ in setup]
        connection.send(b"".join(hiredis.pack_command(c) for c in setup), futures)
        for command, future in zip(setup, futures):
            reply = await future
            if isinstance(reply, Exception):
                connection.abort("refused")
                raise ConnectionError(
                    f"{' '.join(command[:2]) if command[0] == 'SCRIPT' else command[0]} refused: {reply}"
                )
        return connection

    def _unavailable(self, exc) -> HistoryUnavailable:
        reason = str(exc) or type(exc).__name__
        log.warning("history store %s: %s", self.where, reason)
        return HistoryUnavailable(
            f"the entity history store ({self.where}) did not answer ({reason}); the rows were not scored: retry"
        )

    async def close(self) -> None:
        if self._queue and not self._connecting:
            self._flush()  # the write-backs still waiting; closing the transport sends what it holds
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.close()
