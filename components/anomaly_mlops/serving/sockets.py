"""The listening socket both servers start from: bound before anything says it serves."""

from __future__ import annotations

from anomaly_mlops.errors import ServeError


def bind(host: str, port: int):
    """A listening TCP socket on host:port, or a ServeError naming why there is none (before
    anything says it serves)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
