"""uvicorn's httptools protocol, guarded against careless and hostile clients: a request head
(request line and headers) larger than ``max_head_bytes`` is answered 431 and the connection
closed as soon as the limit is passed, so a huge header never sits in memory; a request head
not complete within ``head_timeout_s`` of the connection or of the request's first byte (a
silent or trickling client) is answered 408 and closed. Idle keep-alive connections between
requests are closed by uvicorn's own ``timeout_keep_alive``.

On shutdown an idle keep-alive connection is not closed at once, as uvicorn would: a client
may have written its next request already, and closing would drop it unanswered. The
connection is read for ``DRAIN_IDLE_S`` more; a request that comes is answered with
``Connection: close``, then the connection closes.

A response's head is held until its body is written, so both leave in one write: one send
and one segment for the client to read, instead of two (_OneWritePerResponse)."""

from __future__ import annotations

import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from anomaly_mlops.params import DEFAULT_HEAD_TIMEOUT_S, DEFAULT_MAX_HEAD_BYTES

log = logging.getLogger(__name__)

DRAIN_IDLE_S = 1.0
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # uvicorn's interim answer: never held


class _OneWritePerResponse:
    """The connection's transport as uvicorn's request cycles see it: the first write of each
    response (its head; an interim 100 Continue aside) is held and joined to the next (its
    body); what is held is written when the response is complete (a HEAD answer has no body
    write) and before close. Responses on one connection are written one after another, also
    for pipelined requests (uvicorn runs a connection's cycles in turn)."""

    __slots__ = ("_transport", "_awaiting_head", "_head")

    def __init__(self, transport):
        self._transport = transport
        self._awaiting_head = True
        self._head = None

    def response_complete(self) -> None:
        self.flush()
        self._awaiting_head = True

    def write(self, data) -> None:
        if self._awaiting_head and data != CONTINUE:
            self._awaiting_head = False
            self._head = bytes(data)
            return
        if self._head is not None:
            data, self._head = self._head + data, None
        self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name):
        return getattr(self._transport, name)


def _answer(status: str, reason: str) -> bytes:
    body = reason.encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def guarded_protocol(max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES, head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S):
    """The protocol class for uvicorn.Config(http=...), with these limits."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._head_bytes = 0
            self._in_head = True  # waiting for (the rest of) a request line and headers
            self._rejected = False
            self._head_timer = None
            self._draining = False
            self._writer = _OneWritePerResponse(transport)
            self._arm_head_timer()

        def shutdown(self) -> None:
            self._draining = True
            if self.cycle is None or self.cycle.response_complete:
                self.loop.call_later(DRAIN_IDLE_S, self._close_if_idle)
            else:
                self.cycle.keep_alive = False

        def _close_if_idle(self) -> None:
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # Bytes of a head still incomplete after parsing them: its partial header is
            # buffered, so a huge one is cut off here, at most one read past the limit.
            if self._in_head and not self._rejected and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    self._reject("431 Request Header Fields Too Large", f"request head over {max_head_bytes} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._in_head = True
            self._arm_head_timer()

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()
            if self.cycle is not None:
                self.cycle.transport = self._writer
                if self._draining:
                    self.cycle.keep_alive = False  # answered, then closed

        def on_response_complete(self) -> None:
            self._writer.response_complete()
            super().on_response_complete()

        def _reject(self, status: str, reason: str) -> None:
            self._rejected = True
            self._stop_head_timer()
            if not self.transport.is_closing():
                self.transport.write(_answer(status, reason))
                self.transport.close()
            log.info("%s from %s: %s", status.split()[0], self.client, reason)

        # One timer per connection, not one per request: a head sets its deadline, and the
        # timer, when it fires, re-arms itself for a head still being received (it never fires
        # after a deadline, since each deadline is later than the one it was armed for).
        def _arm_head_timer(self) -> None:
            self._head_deadline = self.loop.time() + head_timeout_s
            if self._head_timer is None:
                self._head_timer = self.loop.call_at(self._head_deadline, self._head_timer_fired)

        def _stop_head_timer(self) -> None:
            if getattr(self, "_head_timer", None) is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timer_fired(self) -> None:
            self._head_timer = None
            if not self._in_head or self._rejected or self.transport.is_closing():
                return
            if self.loop.time() < self._head_deadline:
                self._head_timer = self.loop.call_at(self._head_deadline, self._head_timer_fired)
                return
            self._reject("408 Request Timeout", f"request head not received within {head_timeout_s:g} s")

    return GuardedHttpToolsProtocol
