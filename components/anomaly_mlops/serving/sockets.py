"""The listening socket both servers start from: bound before anything says it serves."""

from __future__ import annotations

from anomaly_mlops.errors import ServeError


def bind(host: str, port: int, reuse_port: bool = False, listen: bool = True):
    """A listening TCP socket on host:port, or a ServeError naming why there is none (before
    anything says it serves). ``reuse_port``: several processes' sockets share the port
    (SO_REUSEPORT), the kernel spreading new connections evenly over those that listen."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
