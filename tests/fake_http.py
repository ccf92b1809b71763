"""The HTTP plumbing the API fakes share: a threaded server on loopback whose handler
passes (method, path, headers, parsed JSON body) to ``handle`` and writes its
(status, payload) back as JSON."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonFakeServer:
    def __init__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def handle(self, method: str, path: str, headers, body) -> tuple:
        """(status, payload) written as JSON, or (status, text, content type) for a text answer."""
        raise NotImplementedError

    def invalid_json(self) -> tuple:
        """The answer to a body that is not JSON."""
        return 400, {"error": "the body is not valid JSON"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    answer = fake.invalid_json()
                else:
                    answer = fake.handle(self.command, self.path, self.headers, body)
                code, payload, kind = answer if len(answer) == 3 else (*answer, "application/json")
                data = (json.dumps(payload) if kind == "application/json" else payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

            def log_message(self, *args):
                pass

        return Handler
