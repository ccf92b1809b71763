"""The lean server against careless and hostile clients, over real sockets: a huge header, a
silent connection, a client that trickles its request head. Each is answered and closed, and
the server stays ready for everyone else."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from anomaly_mlops.adapters.local_services import model_server

HEAD_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def guarded(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with model_server(
        "detector", str(model_dir), log_path=log, extra_args=("--request-head-timeout", str(HEAD_TIMEOUT_S))
    ) as url:
        yield url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (head and content-length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length"))
    )
    while len(body) < length:
        body += sock.recv(65536)
    return data


def _read_head(sock: socket.socket) -> bytes:
    """A response head alone (a HEAD answer, an interim 100): to its blank line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    return data


def _ready(url: str) -> bool:
    return requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200


def test_a_huge_header_is_answered_431_before_it_is_read_whole(guarded):
    """A 148 MiB header was accepted with a 200 (+150 MiB RSS); now 431 past 64 KiB."""
    with _connect(guarded) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        try:
            for _ in range(64):  # up to 4 MiB, bounded by count
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert sent < 4 * 2**20  # the server hung up before taking it all
    assert _ready(guarded)


def test_a_silent_connection_is_closed_after_the_head_timeout(guarded):
    with _connect(guarded) as sock:
        started = time.monotonic()
        answer = _read_all(sock)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") and HEAD_TIMEOUT_S * 0.5 <= waited < HEAD_TIMEOUT_S + 5


def test_a_trickled_request_head_is_closed_after_the_head_timeout(guarded):
    with _connect(guarded) as sock:
        sock.sendall(b"POST /v1/models/detector:predict HTTP/1.1\r\nHost: x\r\n")
        answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert _ready(guarded)


def test_a_later_request_head_on_a_kept_alive_connection_gets_its_whole_timeout(guarded):
    """The connection's one head timer, armed for an earlier head, re-arms for the later
    head's deadline instead of cutting it short."""
    with _connect(guarded) as sock:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(HEAD_TIMEOUT_S * 0.6)
        started = time.monotonic()
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        answer = _read_all(sock)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ") and HEAD_TIMEOUT_S * 0.95 <= waited < HEAD_TIMEOUT_S + 5, waited


def test_head_requests_and_expect_100_continue_are_answered_on_one_connection(guarded):
    """A response's head is held until its body is written (one write per response): a HEAD
    answer, which has no body write, and the interim 100 Continue still leave at once."""
    body = json.dumps({"instances": [[1.0] * 6]}).encode()
    with _connect(guarded) as sock:
        sock.sendall(b"HEAD /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        head = _read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n"), head
        sock.sendall(
            b"POST /v1/models/detector:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        interim = _read_head(sock)
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(body)
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"predictions"' in answer


def test_pipelined_requests_are_answered_in_order_each_whole(guarded):
    """Two requests written at once on one connection (HTTP/1.1 pipelining): two whole
    responses, in order, whatever is held between a response's head and body."""
    body = json.dumps({"instances": [[1.0] * 6]}).encode()
    predict = (
        b"POST /v1/models/detector:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with _connect(guarded) as sock:
        sock.sendall(predict + b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n" + predict)
        data = b""
        while data.count(b"HTTP/1.1 200 ") < 3 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed after {data!r}"
            data += chunk
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 3 and b'"predictions"' in answers[0] and b'{"ready":true}' in answers[1]
    assert b'"predictions"' in answers[2]


def test_a_response_head_and_body_leave_in_one_write():
    from anomaly_mlops.serving.http_guard import CONTINUE, _OneWritePerResponse

    class Recording:
        def __init__(self):
            self.writes, self.closed = [], False

        def write(self, data):
            self.writes.append(bytes(data))

        def close(self):
            self.closed = True

        def is_closing(self):
            return self.closed

    transport = Recording()
    writer = _OneWritePerResponse(transport)
    writer.write(CONTINUE)  # interim: at once
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert transport.writes == [CONTINUE]
    writer.write(b"{}")
    assert transport.writes == [CONTINUE, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    writer.response_complete()
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")  # a HEAD answer: no body write; written when complete
    assert len(transport.writes) == 2  # held
    writer.response_complete()
    assert transport.writes[-1] == b"HTTP/1.1 200 OK\r\n\r\n"
    # a response cut short: what is held is written before close
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n")
    writer.close()
    assert transport.writes[-1].startswith(b"HTTP/1.1 200 OK") and transport.closed and writer.is_closing()


def test_many_idle_connections_do_not_keep_readiness_from_answering(guarded):
    """Connections that never send a request are closed by the head timeout; meanwhile the
    readiness route answers (bounded: 200 connections)."""
    idle = [_connect(guarded) for _ in range(200)]
    try:
        assert _ready(guarded)
        time.sleep(HEAD_TIMEOUT_S + 1)
        closed = 0
        for sock in idle:
            sock.settimeout(5)
            if _read_all(sock).startswith(b"HTTP/1.1 408 "):
                closed += 1
        assert closed == len(idle)
    finally:
        for sock in idle:
            sock.close()
    assert _ready(guarded)


def test_ordinary_requests_are_unaffected(guarded):
    session = requests.Session()
    for _ in range(20):
        answer = session.post(f"{guarded}/v1/models/detector:predict", json={"instances": [[1.0] * 6]}, timeout=5)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1


def test_large_requests_beyond_the_admission_bound_get_503_with_retry_after(model_dir, tmp_path):
    """300 concurrent 10,000-row requests took the server from 327 to 1,408 MiB; now at most
    --max-large-requests are read and scored at once, the rest are told to retry, before their
    body is read (bounded: 8 requests, one admitted at a time)."""
    import concurrent.futures

    import numpy as np

    rows = np.random.default_rng(0).normal(50, 10, size=(10_000, 6)).tolist()
    body = json.dumps({"instances": rows}).encode()  # encoded once: the eight go out together
    with model_server(
        "detector", str(model_dir), log_path=tmp_path / "log", extra_args=("--max-large-requests", "1")
    ) as url:

        def post(_):
            return requests.post(
                f"{url}/v1/models/detector:predict",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=60,
            )

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
        assert _ready(url)
        statuses = sorted(a.status_code for a in answers)
        refused = [a for a in answers if a.status_code == 503]
        assert set(statuses) <= {200, 503} and 200 in statuses and refused, statuses
        assert all(a.headers["retry-after"] == "1" and "retry" in a.json()["error"] for a in refused)
        assert all(len(a.json()["predictions"]) == 10_000 for a in answers if a.status_code == 200)
        assert post(0).status_code == 200  # retried when the server is free: answered
        metrics = requests.get(f"{url}/metrics", timeout=5).text
    assert f'anomaly_detector_large_requests_refused_total{{model="detector"}} {float(len(refused))}' in metrics


def test_a_small_request_after_a_large_one_of_its_entity_is_scored_after_it(windowed, tmp_path):
    """Large requests are decoded and scored on the one batch thread. A small request of the
    same entity that arrived while its large one waited there (behind other entities' large
    requests) was begun and smoothed first, so both answers matched no sequential
    order. Now it waits for the large one: both equal offline scoring in arrival order."""
    import concurrent.futures

    import numpy as np

    model, X = windowed
    rng = np.random.default_rng(5)
    large = np.tile(X[:500], (20, 1)) + rng.normal(0, 0.01, (10_000, X.shape[1]))
    small = X[500:501]
    offline = model.anomaly_scores(np.vstack([large, small]))

    def body(rows, entity: str) -> bytes:  # encoded beforehand: each is on the wire in milliseconds
        return json.dumps({"instances": rows.tolist(), "entity": entity}).encode()

    # Three other entities keep the batch thread busy while n1's large request waits there;
    # n1's small one comes in well after the large one's body (its place is after it).
    sent = [
        (body(large, "busy-1"), 0.02),
        (body(large, "busy-2"), 0.02),
        (body(large, "busy-3"), 0.02),
        (body(large, "n1"), 0.1),
        (body(small, "n1"), 0),
    ]
    with model_server("detector", str(model.model_dir), log_path=tmp_path / "log") as url:
        predict = f"{url}/v1/models/detector:predict"

        def post(data):
            return requests.post(predict, data=data, headers={"Content-Type": "application/json"}, timeout=120)

        with concurrent.futures.ThreadPoolExecutor(len(sent)) as pool:
            futures = []
            for data, pause in sent:
                futures.append(pool.submit(post, data))
                time.sleep(pause)
            answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 5
    large_answer, small_answer = answers[3].json(), answers[4].json()
    np.testing.assert_allclose(large_answer["anomaly_scores"], offline[:-1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(small_answer["anomaly_scores"], offline[-1:], rtol=0, atol=1e-9)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_requests_written_on_kept_alive_connections_at_sigterm_are_answered(model_dir, tmp_path, workers):
    """Clients that write their next request on a kept-alive connection while the server shuts
    down (5-24 of them got no answer: uvicorn closes idle connections at once): for
    DRAIN_IDLE_S each is still read and answered, and only then is the connection closed;
    the server exits 0."""
    import signal

    from server_process import ServerProcess

    server = ServerProcess(model_dir, tmp_path / "log", "--workers", workers)
    url, process = server.url, server.process
    body = json.dumps({"instances": [[50, 60, 30, 80, 50, 0]]}).encode()
    request = (
        f"POST /v1/models/detector:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    try:
        connections = [_connect(url) for _ in range(24)]
        for sock in connections:  # one answered request each: now idle and kept alive
            sock.sendall(request)
            assert _read_response(sock).startswith(b"HTTP/1.1 200")
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the server has begun to shut down: it no longer accepts connections
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/v2/health/ready", timeout=2)
        for sock in connections:  # the clients' pooled connections still look open to them
            sock.sendall(request)
        answers = [_read_all(sock) for sock in connections]
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert [a[:15] for a in answers] == [b"HTTP/1.1 200 OK"] * len(connections)  # then closed: recv saw its end
