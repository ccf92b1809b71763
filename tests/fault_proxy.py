"""An HTTP proxy on loopback in front of the real S3-protocol server that answers chosen
requests with S3 errors (500 InternalError, 503 SlowDown) or drops the connection, and
counts every request it sees."""

from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlparse

from fake_http import JsonFakeServer


@dataclass
class Fault:
    method: str
    path_pattern: str  # regex on path+query
    status: int  # 0 = drop the connection; -1 = forward after delay_s; -2 = forward, the body cut in half
    code: str = "InternalError"
    times: int = 10**9  # how many matching requests fail
    seen: int = 0
    delay_s: float = 0.0

    def matches(self, method: str, target: str) -> bool:
        return method == self.method and re.search(self.path_pattern, target) is not None


class FaultProxy(JsonFakeServer):
    """Same server lifecycle as the API fakes, with a forwarding handler of its own."""

    def __init__(self, upstream: str):
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname, parsed.port)
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        super().__init__()

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, t, _ in self.log if m == method and re.search(pattern, t))

    def _fault_for(self, method: str, target: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, target) and fault.seen < fault.times:
                    fault.seen += 1
                    return fault
        return None

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._fault_for(self.command, self.path)
                cut_short = fault is not None and fault.status == -2
                if fault is not None and fault.status < 0:
                    time.sleep(fault.delay_s)
                    fault = None
                if fault is not None:
                    proxy.log.append((self.command, self.path, fault.status))
                    if fault.status == 0:
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    payload = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{fault.code}</Code>"
                        f"<Message>injected fault</Message></Error>"
                    ).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                proxy.log.append((self.command, self.path, response.status))
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # HEAD carries the object's length with no body.
                length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if cut_short:  # the whole length announced, half of it sent
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve

            def log_message(self, *args):
                pass

        return Handler
