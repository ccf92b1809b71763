"""A Prometheus that answers badly: malformed, trickled, huge or echoing our token. The data
step reads it through the real client (sources/prometheus.py) over HTTP on loopback and must
fail with one line, within its deadline and memory bound, never printing the token."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from anomaly_mlops.adapters.cli import main
from anomaly_mlops.errors import DataError
from anomaly_mlops.sources import prometheus as source
from anomaly_mlops.sources.prometheus import fetch_range

TOKEN = "opaque-token-7f3a9c1e"
QUERIES = {"cpu_usage_pct": "cpu", "memory_usage_pct": "mem"}
END = 1_800_000_000  # a fixed window, step-aligned


class BadPrometheus:
    """One raw HTTP answer per connection, chosen by ``mode``; the request head is recorded."""

    def __init__(self):
        self.mode = "ok"
        self.requests = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def stop(self):
        self.stopped = True
        self.sock.close()

    def _serve(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _matrix(self, values) -> bytes:
        return json.dumps(
            {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": values}]}}
        ).encode()

    def _answer(self, conn):
        with conn:
            conn.recv(65536)
            self.requests += 1
            start = END - 3600
            ok = [[t, "1"] for t in range(start, END + 1, 60)]
            status, body, trickle = 200, None, False
            if self.mode == "ok":
                body = self._matrix(ok)
            elif self.mode == "duplicated timestamps":
                body = self._matrix(ok[:10] + [ok[9]] + ok[10:])
            elif self.mode == "no data":
                body = b'{"status": "success"}'
            elif self.mode == "a list":
                body = b"[1, 2, 3]"
            elif self.mode == "not a number":
                body = self._matrix(ok[:5] + [[start + 300, "a lot"]] + ok[6:])
            elif self.mode == "a one-element pair":
                body = self._matrix(ok[:5] + [[start + 300]] + ok[6:])
            elif self.mode == "a string series":
                body = b'{"status": "success", "data": {"resultType": "matrix", "result": ["cpu"]}}'
            elif self.mode == "echoed token, JSON":
                status = 400
                body = json.dumps(
                    {"status": "error", "errorType": "bad_data", "error": f"bad auth: Bearer {TOKEN} refused"}
                ).encode()
            elif self.mode == "echoed token, text":
                status, body = 502, f"upstream said: token {TOKEN} is not valid here".encode()
            elif self.mode == "huge":
                body = self._matrix([[t, "1"] for t in range(start, start + 200_000)])
            elif self.mode == "trickle":
                body, trickle = self._matrix(ok), True
            head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            try:
                conn.sendall(head.encode())
                if trickle:
                    for byte in body:
                        conn.sendall(bytes([byte]))
                        time.sleep(0.5)
                else:
                    conn.sendall(body)
            except OSError:
                pass


@pytest.fixture
def bad():
    server = BadPrometheus()
    yield server
    server.stop()


def data_step(url: str, tmp_path, capsys) -> tuple[int, str]:
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "queries.json").write_text(json.dumps(QUERIES))
    code = main(
        ["data", "--prometheus-url", url, "--queries", str(tmp_path / "queries.json"), "--lookback", "1h",
         "--end", str(END), "--token-file", str(tmp_path / "token"), "--out", str(tmp_path / "out")]
    )  # fmt: skip
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "mode, message",
    [
        ("duplicated timestamps", "1 sample(s) at a time it already had a sample for"),
        ("no data", "without a list of series in data.result"),
        ("a list", "with something that is not a query result"),
        ("not a number", "a sample that is not a number"),
        ("a one-element pair", "not a metric and a list of [time, value] pairs"),
        ("a string series", "not a metric and a list of [time, value] pairs"),
    ],
)
def test_a_malformed_answer_is_one_line_not_a_traceback(bad, tmp_path, capsys, mode, message):
    bad.mode = mode
    code, err = data_step(bad.url, tmp_path, capsys)
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_the_fake_serves_a_good_answer_the_step_accepts(bad, tmp_path, capsys):
    code, err = data_step(bad.url, tmp_path, capsys)
    assert code == 0, err


@pytest.mark.parametrize("mode", ["echoed token, JSON", "echoed token, text"])
def test_a_token_echoed_in_an_error_is_never_printed(bad, tmp_path, capsys, mode):
    bad.mode = mode
    code, err = data_step(bad.url, tmp_path, capsys)
    assert code == 2 and "Prometheus refused the query" in err
    assert TOKEN not in err and "[redacted]" in err


def test_a_trickled_answer_is_cut_off_at_the_deadline(bad):
    """One byte every half second: each read is quick, the answer never ends; the client's
    deadline covers the whole answer, not each read."""
    bad.mode = "trickle"
    started = time.monotonic()
    with pytest.raises(DataError, match=r"did not answer the query for 'cpu_usage_pct' within 2s"):
        fetch_range(bad.url, QUERIES, lookback_s=3600, end=END, timeout_s=2)
    assert time.monotonic() - started < 5


def test_an_answer_over_the_size_bound_is_refused_with_advice(bad, monkeypatch):
    """Halving the piece does not shrink this answer: after MAX_ANSWER_SPLITS halvings (one
    request each, depth first) the query is refused with advice."""
    bad.mode = "huge"  # about 3.6 MB of samples, whatever the range asked
    monkeypatch.setattr(source, "MAX_ANSWER_BYTES", 1 << 20)
    with pytest.raises(
        DataError, match=r"more than 1 MiB for 'cpu_usage_pct', fetched in pieces of 3 steps: aggregate"
    ):
        fetch_range(bad.url, QUERIES, lookback_s=3600, end=END, timeout_s=10)
    assert bad.requests == source.MAX_ANSWER_SPLITS + 1
