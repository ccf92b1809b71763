"""A real Redis (or Valkey) server on loopback for the shared-history tests: Debian's
redis-server, installed by `make redis` (part of `make test`); the tests that need it skip,
saying so, where it is missing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from anomaly_mlops.adapters.local_services import free_port


def redis_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if not found:
        pytest.skip("redis-server (or valkey-server) is not installed: `make redis` installs Debian's redis-server")
    return found


class RedisServer:
    """One redis-server process on 127.0.0.1 without persistence; stop() and start() again
    on the same port (an empty store, as after a restart without persistence)."""

    def __init__(self, workdir: Path):
        self.binary = redis_binary()
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--maxmemory",
                "64mb",
                "--maxmemory-policy",
                "volatile-lru",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def command(self, *words: str) -> bytes:
        """One command over a plain socket (inline protocol), its first reply line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            return sock.recv(65536).split(b"\r\n")[0]
