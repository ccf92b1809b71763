"""Entity history shared by replicas and worker processes (serving/shared_history.py), with
real parts: a real Redis server, real server processes, a round-robin proxy on loopback.

Without a shared store, three replicas behind round-robin routing scored 6-9% of one entity's
rows with full history and got every score wrong; here every replica appends to and reads
from one record per entity, and the answers equal one server's, bit for bit.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
import requests
from redis_server import RedisServer, redis_binary
from server_process import ServerProcess as Replica

from anomaly_mlops.adapters.local_services import model_server

from fake_http import JsonFakeServer

ENTITIES = ("node-a", "node-b")
ROWS = 48  # per entity: the windowed fixture needs 17 rows of history, so 31 complete rows each


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    redis_binary()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


class RoundRobinProxy(JsonFakeServer):
    """Each request to the next backend in turn, as a Service without session affinity
    spreads them; a backend that refuses the connection is skipped (its endpoint removed).
    The API fakes' server lifecycle, with a forwarding handler of its own."""

    def __init__(self, backends: list[str]):
        self.backends = backends
        self.turn = itertools.count()
        self.hits = {b: 0 for b in backends}
        super().__init__()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                for _ in range(len(proxy.backends)):
                    backend = proxy.backends[next(proxy.turn) % len(proxy.backends)]
                    try:
                        answer = requests.post(
                            backend + self.path, data=body, headers={"Content-Type": "application/json"}, timeout=10
                        )
                        break
                    except requests.ConnectionError:
                        continue
                else:
                    self.send_error(502)
                    return
                proxy.hits[backend] += 1
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args):
                pass

        return Handler


def stream(url: str, entity: str, rows: np.ndarray, each=None) -> list[dict]:
    """One entity's rows one at a time, each after the previous answer (a client's stream)."""
    answers = []
    with requests.Session() as session:
        for i, row in enumerate(rows):
            if each:
                each(i)
            r = session.post(
                f"{url}/v1/models/detector:predict", json={"instances": [row.tolist()], "entity": entity}, timeout=10
            )
            answers.append({"status": r.status_code, **r.json()})
    return answers


def stream_entities(url: str, series: dict[str, np.ndarray], each=None) -> dict[str, list[dict]]:
    """Both entities at once, each in its own order."""
    with ThreadPoolExecutor(len(series)) as pool:
        futures = {
            e: pool.submit(stream, url, e, rows, each if e == ENTITIES[0] else None) for e, rows in series.items()
        }
        return {e: f.result() for e, f in futures.items()}


def figures(answers: list[dict]) -> tuple[list[float], list[bool]]:
    return [a["anomaly_scores"][0] for a in answers], [a["history_complete"][0] for a in answers]


@pytest.fixture(scope="module")
def series(windowed):
    _, X = windowed
    return {ENTITIES[0]: X[:ROWS], ENTITIES[1]: X[500 : 500 + ROWS]}


@pytest.fixture(scope="module")
def one_server(windowed, series, tmp_path_factory):
    """The reference: one server keeping history in process, streamed the same way."""
    model, _ = windowed
    with model_server("detector", str(model.model_dir), log_path=tmp_path_factory.mktemp("one") / "log") as url:
        answers = stream_entities(url, series)
    for entity, rows in series.items():  # itself equal to offline scoring of each whole series
        np.testing.assert_allclose(figures(answers[entity])[0], model.score(rows)[1], rtol=0, atol=1e-12)
    return answers


def test_three_replicas_behind_round_robin_answer_as_one_server_bit_for_bit(
    windowed, redis, series, one_server, tmp_path
):
    model, _ = windowed
    redis.command("FLUSHALL")
    replicas = [Replica(model.model_dir, tmp_path / f"r{i}.log", "--history-url", redis.url) for i in range(3)]
    proxy = RoundRobinProxy([r.url for r in replicas])
    try:
        answers = stream_entities(proxy.url, series)
    finally:
        proxy.stop()
        for replica in replicas:
            replica.stop()
    assert min(proxy.hits.values()) >= ROWS * 2 // 3 - 1  # every replica took its share
    for entity in ENTITIES:
        assert figures(answers[entity]) == figures(one_server[entity])  # == on floats: bit for bit
        assert sum(figures(answers[entity])[1]) == ROWS - model.history_rows


def test_a_replica_killed_mid_stream_leaves_the_others_right(windowed, redis, series, one_server, tmp_path):
    model, _ = windowed
    redis.command("FLUSHALL")
    replicas = [Replica(model.model_dir, tmp_path / f"r{i}.log", "--history-url", redis.url) for i in range(3)]
    proxy = RoundRobinProxy([r.url for r in replicas])

    def kill_one(i):
        if i == ROWS // 2:
            replicas[1].process.kill()
            replicas[1].process.wait(10)

    try:
        answers = stream_entities(proxy.url, series, each=kill_one)
    finally:
        proxy.stop()
        for replica in replicas:
            replica.stop()
    for entity in ENTITIES:
        assert figures(answers[entity]) == figures(one_server[entity])


def test_the_kserve_and_lean_servers_share_one_history(windowed, redis, series, one_server, tmp_path):
    model, _ = windowed
    redis.command("FLUSHALL")
    replicas = [
        Replica(model.model_dir, tmp_path / "lean.log", "--history-url", redis.url),
        Replica(model.model_dir, tmp_path / "kserve.log", "--server", "kserve", "--history-url", redis.url),
    ]
    proxy = RoundRobinProxy([r.url for r in replicas])
    try:
        answers = stream_entities(proxy.url, {ENTITIES[0]: series[ENTITIES[0]]})
    finally:
        proxy.stop()
        for replica in replicas:
            replica.stop()
    assert figures(answers[ENTITIES[0]]) == figures(one_server[ENTITIES[0]])


def test_two_worker_processes_share_history_and_report_summed_metrics(windowed, redis, series, one_server, tmp_path):
    model, _ = windowed
    redis.command("FLUSHALL")
    server = Replica(model.model_dir, tmp_path / "w.log", "--workers", "2", "--history-url", redis.url)
    try:
        # A new connection per request: the kernel hands each to either worker.
        answers = {e: [] for e in ENTITIES}
        for i in range(ROWS):
            for entity in ENTITIES:
                r = requests.post(
                    f"{server.url}/v1/models/detector:predict",
                    json={"instances": [series[entity][i].tolist()], "entity": entity},
                    headers={"Connection": "close"},
                    timeout=10,
                )
                answers[entity].append(r.json())
        scrapes = [requests.get(f"{server.url}/metrics", headers={"Connection": "close"}).text for _ in range(6)]
    finally:
        server.stop()
    for entity in ENTITIES:
        assert figures(answers[entity]) == figures(one_server[entity])
    for text in scrapes:  # whichever worker answered, the count is both workers' sum
        assert metric_sum(text, "anomaly_detector_rows_scored_total") == 2 * ROWS
        assert metric_sum(text, "anomaly_detector_score_bin_rows_total") == 2 * ROWS
        # a constant of the model, not multiplied by the workers
        assert metric_sum(text, "anomaly_detector_score_bin_reference_share") == pytest.approx(1.0)
    assert server.process.returncode == 0


def metric_sum(text: str, name: str) -> float:
    """The sum of a metric's samples in a /metrics text (model "detector")."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("model") == "detector"
    )


def test_a_stopped_store_gives_503_never_a_score_without_history(windowed, tmp_path):
    model, X = windowed
    store = RedisServer(tmp_path).start()
    server = Replica(model.model_dir, tmp_path / "s.log", "--history-url", store.url)
    url = f"{server.url}/v1/models/detector:predict"

    def post(i):
        return requests.post(url, json={"instances": [X[i].tolist()], "entity": "e"}, timeout=10)

    try:
        before = [post(i) for i in range(20)]
        assert [r.json()["history_complete"][0] for r in before][-1] is True
        store.stop()
        down = post(20)
        started = time.monotonic()
        assert requests.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200
        assert time.monotonic() - started < 1
        store.start()  # back, empty (no persistence): the entity starts again, marked incomplete
        after = post(21)
        metrics = requests.get(f"{server.url}/metrics").text
    finally:
        server.stop()
        store.stop()
    assert down.status_code == 503
    assert down.headers["Retry-After"] == "1"
    assert "history store" in down.json()["error"] and "not scored" in down.json()["error"]
    assert "anomaly_scores" not in down.json()
    assert after.status_code == 200 and after.json()["history_complete"] == [False]
    assert 'anomaly_detector_history_unavailable_total{model="detector"} 1.0' in metrics


def test_versions_never_read_each_others_history(windowed, redis, tmp_path):
    """Two models (a canary and the stable version) on one store, one entity: each answers
    as if it were alone."""
    from anomaly_mlops.model.artifacts import load_model_dir
    from anomaly_mlops.steps.train import TrainParams, train

    model, X = windowed
    other_dir = tmp_path / "other"
    csv = tmp_path / "train.csv"
    import pandas as pd

    pd.DataFrame(X[:1500], columns=list(model.schema.features)).to_csv(csv, index=False)
    train(str(csv), other_dir, TrainParams(n_estimators=20, feature_window=15, score_smoothing=4, seed=9))
    other = load_model_dir(other_dir)
    redis.command("FLUSHALL")
    a = Replica(model.model_dir, tmp_path / "a.log", "--history-url", redis.url)
    b = Replica(other_dir, tmp_path / "b.log", "--history-url", redis.url)
    try:
        scores = {a.url: [], b.url: []}
        for i in range(30):
            for replica in (a, b):
                r = requests.post(
                    f"{replica.url}/v1/models/detector:predict",
                    json={"instances": [X[i].tolist()], "entity": "shared-name"},
                    timeout=10,
                )
                scores[replica.url].append(r.json()["anomaly_scores"][0])
    finally:
        a.stop()
        b.stop()
    np.testing.assert_allclose(scores[a.url], model.score(X[:30])[1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores[b.url], other.score(X[:30])[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "2"], "give --history-url"),
        (["--server", "kserve", "--workers", "2"], "the KServe model server runs one process per pod"),
        (["--history-url", "http://cache:6379"], "--history-url must be redis://"),
        (["--history-url", "http://user:s3cret@cache:6379"], "--history-url must be redis://"),
        (["--history-url", "redis://cache:6379/zero"], "database must be a number"),
    ],
)
def test_serve_refuses_what_cannot_keep_history_right(windowed, args, message):
    model, _ = windowed
    done = subprocess.run(
        [sys.executable, "-m", "anomaly_mlops.adapters.cli", "serve", "--model-dir", str(model.model_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr
    assert "s3cret" not in done.stderr


def test_rows_of_a_split_stream_never_count_as_complete_history(windowed, series, tmp_path):
    """Two servers that each keep history in process, taking one entity's rows in turn (the
    split that gave 144 wrong answers marked complete): with timestamps, each sees a gap of two
    sample intervals between its rows, so no answer says its history is complete."""
    model, _ = windowed
    rows = series[ENTITIES[0]]
    times = 1_700_000_000 + 60.0 * np.arange(len(rows))
    a = Replica(model.model_dir, tmp_path / "a.log")
    b = Replica(model.model_dir, tmp_path / "b.log")
    try:
        marks = []
        for i, row in enumerate(rows):
            r = requests.post(
                f"{(a, b)[i % 2].url}/v1/models/detector:predict",
                json={"instances": [row.tolist()], "entity": "split", "timestamps": [times[i]]},
                timeout=10,
            )
            marks.append(r.json()["history_complete"][0])
    finally:
        a.stop()
        b.stop()
    assert not any(marks)


@pytest.mark.parametrize("store", ["in-process", "shared"])
def test_order_and_gaps_by_timestamp_in_either_store(windowed, redis, store):
    """A row not after the entity's newest is refused (400) and changes nothing; a gap over
    1.5 sample intervals starts the history again; both stores answer alike."""
    import asyncio

    from anomaly_mlops.serving.history import EntityHistory
    from anomaly_mlops.serving.problems import InputProblem
    from anomaly_mlops.serving.shared_history import SharedHistory

    model, X = windowed
    redis.command("FLUSHALL")
    t = 1_700_000_000 + 60.0 * np.arange(200)
    t[60:] += 600  # ten minutes missing before row 60

    async def run():
        history = EntityHistory(model) if store == "in-process" else SharedHistory(model, redis.url, "m", "v")

        async def score(rows, times):
            pending = await history.begin("e", X[rows], None if times is None else t[times]).ready()
            return pending.score_alone(model)

        out = [await score(slice(i, i + 1), slice(i, i + 1)) for i in range(40)]
        with pytest.raises(InputProblem, match="not after the entity's newest row"):
            await score(slice(40, 41), slice(39, 40))
        out += [await score(slice(40, 60), slice(40, 60))]  # unchanged by the refused row
        out += [await score(slice(60, 80), slice(60, 80))]  # after the gap
        out += [await score(slice(80, 81), None)]  # without timestamps: the run goes on
        if store == "shared":
            await history.close()
        return out

    out = asyncio.run(run())
    marks = np.concatenate([o[2] for o in out])
    expected = [i >= model.history_rows for i in range(60)] + [i >= model.history_rows for i in range(21)]
    assert marks.tolist() == expected
    scores = np.concatenate([o[1] for o in out])
    np.testing.assert_allclose(scores[:60], model.score(X[:60])[1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores[60:], model.score(X[60:81])[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "timestamps, message",
    [
        ([1.0, 1.0], "'timestamps' must increase"),
        ([1.0], "'timestamps' holds 1 values for 2 rows"),
        ([1.0, "2"], "must be a list of numbers"),
        ([1.7e12, 1.7e12 + 60_000], "not milliseconds"),
    ],
)
def test_bad_timestamps_are_refused_with_the_reason(windowed, timestamps, message):
    from anomaly_mlops.serving.problems import InputProblem
    from anomaly_mlops.serving.protocol import parse_timestamps

    with pytest.raises(InputProblem, match=message):
        parse_timestamps(timestamps, 2)


def test_a_row_still_being_scored_elsewhere_is_recomputed_not_waited_for(windowed, redis):
    """Process B gets the entity's next row while process A has not written back the raw
    score of the row before (still scoring it): B recomputes that score from the rows it got,
    and both answers equal offline scoring."""
    import asyncio

    from anomaly_mlops.serving.history import EntityHistory
    from anomaly_mlops.serving.shared_history import SharedHistory

    model, X = windowed
    redis.command("FLUSHALL")

    async def run():
        a, b = (SharedHistory(model, redis.url, "m", "v") for _ in range(2))
        first = await a.begin("e", X[:20]).ready()
        out = [first.score_alone(model)]
        await asyncio.sleep(0.05)  # A's write-back reaches the store
        held = await a.begin("e", X[20:21]).ready()  # A scores row 20 later
        later = await b.begin("e", X[21:22]).ready()
        assert later.last == model.smoothing  # its row and the smoothing's earlier rows, recomputed
        out += [held.score_alone(model), later.score_alone(model)]
        await a.close()
        await b.close()
        return out

    out = asyncio.run(run())
    one = EntityHistory(model)  # one server, the same requests
    expected = [one.score("e", X[:20]), one.score("e", X[20:21]), one.score("e", X[21:22])]
    np.testing.assert_array_equal(np.concatenate([o[1] for o in out]), np.concatenate([e[1] for e in expected]))


def test_a_write_back_travels_with_the_next_append_or_alone_soon_after(windowed, redis, monkeypatch):
    """A process streaming an entity one request at a time, answering each before the next
    arrives, writes to the store once a request: each request's raw scores go with the next
    request's append (one write and one wakeup of the store, not two). The last ones, with
    no request after them, go alone WRITE_BACK_DELAY_S later, and another process then finds
    every raw score written back: it recomputes nothing."""
    import asyncio

    from anomaly_mlops.serving import shared_history
    from anomaly_mlops.serving.history import EntityHistory
    from anomaly_mlops.serving.shared_history import SharedHistory

    model, X = windowed
    redis.command("FLUSHALL")
    monkeypatch.setattr(shared_history, "WRITE_BACK_DELAY_S", 0.2)  # far beyond a loop iteration, even on a slow host

    async def run():
        a, b = (SharedHistory(model, redis.url, "m", "v") for _ in range(2))
        out = [(await a.begin("e", X[:20]).ready()).score_alone(model)]
        await asyncio.sleep(0.5)
        writes = []
        send = a._connection.send

        def counting(payload, futures):
            writes.append(payload.count(b"EVALSHA"))
            send(payload, futures)

        a._connection.send = counting
        for i in range(20, 40):
            out.append((await a.begin("e", X[i : i + 1]).ready()).score_alone(model))
            for _ in range(3):  # the answer goes out, the next request comes in: the loop runs on
                await asyncio.sleep(0)
        # the first request's write-back went during the sleep; then each append with the one before it
        assert writes == [1] + [2] * 19
        await asyncio.sleep(0.5)
        assert writes == [1] + [2] * 19 + [1]  # the last write-back, alone, after the delay
        later = await b.begin("e", X[40:41]).ready()
        assert later.last == 1  # no raw score to recompute
        out.append(later.score_alone(model))
        await a.close()
        await b.close()
        return out

    out = asyncio.run(run())
    one = EntityHistory(model)
    expected = [one.score("e", X[:20])] + [one.score("e", X[i : i + 1]) for i in range(20, 41)]
    np.testing.assert_array_equal(np.concatenate([o[1] for o in out]), np.concatenate([e[1] for e in expected]))


def test_each_process_gets_only_the_rows_others_appended_since_its_copy(windowed, redis):
    """A process keeps a copy of the kept rows of the entities it served; the store sends
    the rows appended after that copy (none when no other process served the entity), and
    all of them when the copy is of another generation (the record expired) or too old.
    Alternating processes, several requests of one entity in one tick, an expired record:
    the scores are one server's, bit for bit, and a process alone receives a fraction of
    the kept rows' bytes a request."""
    import asyncio

    from anomaly_mlops.serving.history import EntityHistory
    from anomaly_mlops.serving.shared_history import SharedHistory

    model, X = windowed
    redis.command("FLUSHALL")
    row_bytes, kept_bytes = 8 * X.shape[1], 8 * X.shape[1] * model.history_rows
    received = {"a": 0}

    async def run():
        a, b = (SharedHistory(model, redis.url, "m", "v") for _ in range(2))
        out = []

        async def score(history, rows):
            pending = await history.begin("e", rows).ready()
            return pending.score_alone(model)

        out.append(await score(a, X[:40]))
        await asyncio.sleep(0.05)  # its write-back reaches the store
        reader = a._connection.data_received

        def counting(data):
            received["a"] += len(data)
            reader(data)

        a._connection.data_received = counting
        for i in range(40, 60):  # A alone: its copy is current
            out.append(await score(a, X[i : i + 1]))
        alone = received["a"]
        for i in range(60, 90):  # A and B in turn, and 3 rows of A's in one tick
            out.append(await score(b if i % 2 else a, X[i : i + 1]))
        pendings = [a.begin("e", X[i : i + 1]) for i in range(90, 93)]
        await asyncio.gather(*(p.ready() for p in pendings))
        out += [p.score_alone(model) for p in pendings]
        for i in range(93, 93 + model.history_rows + 3):  # B alone: A's copy falls behind the kept rows
            out.append(await score(b, X[i : i + 1]))
        j = 96 + model.history_rows
        out.append(await score(a, X[j : j + 1]))
        assert redis.command("DEL", a.prefix + "e") == b":1"
        out.append(await score(a, X[j + 1 : j + 2]))  # a new record: A's copy is of the old one
        await a.close()
        await b.close()
        return out, alone, j

    out, alone, j = asyncio.run(run())
    assert alone < 20 * kept_bytes / 4, alone  # 20 requests: a fraction of the kept rows each
    assert alone > 20 * row_bytes / 8  # (their replies were read)
    one = EntityHistory(model)
    expected = [one.score("e", X[:40])]
    expected += [one.score("e", X[i : i + 1]) for i in range(40, j + 1)]
    one = EntityHistory(model)  # the deleted record: history starts again
    expected.append(one.score("e", X[j + 1 : j + 2]))
    for got, want in zip(out, expected, strict=True):
        np.testing.assert_array_equal(got[1], want[1])
        assert got[2].tolist() == want[2].tolist()


def test_a_record_is_one_string_of_fixed_size_however_long_the_stream(windowed, redis):
    """One key per entity, a string of the header, the kept raw scores and the kept rows
    (rings written in place): its size does not grow with the stream nor with a request
    larger than the kept rows, it carries the TTL, and a record of another type at the key
    is answered 503 with the store's reason, not misread."""
    import asyncio

    from anomaly_mlops.serving.history import EntityHistory
    from anomaly_mlops.serving.shared_history import RECORD_HEADER_BYTES, HistoryUnavailable, SharedHistory

    model, X = windowed
    redis.command("FLUSHALL")
    size = RECORD_HEADER_BYTES + 8 * (model.smoothing - 1) + 8 * X.shape[1] * model.history_rows
    sizes = []

    async def run():
        a = SharedHistory(model, redis.url, "m", "v")
        key = a.prefix + "e"
        out = []
        for rows in (X[:5], *(X[i : i + 1] for i in range(5, 60)), X[60:100], X[100:101]):
            out.append((await a.begin("e", rows).ready()).score_alone(model))
            sizes.append(redis.command("STRLEN", key))
        assert redis.command("TYPE", key) == b"+string"
        assert 0 < int(redis.command("PTTL", key)[1:]) <= a.ttl_s * 1000
        redis.command("DEL", a.prefix + "h")
        redis.command("HSET", a.prefix + "h", "r", "x")
        with pytest.raises(HistoryUnavailable, match="WRONGTYPE"):
            await a.begin("h", X[:1]).ready()
        await a.close()
        return out

    out = asyncio.run(run())
    # grown once, while the first rows filled the ring; the same since, through six wraps
    assert set(sizes[-40:]) == {f":{size}".encode()} and len(set(sizes)) <= model.history_rows, sizes
    one = EntityHistory(model)
    expected = [one.score("e", X[:5])] + [one.score("e", X[i : i + 1]) for i in range(5, 60)]
    expected += [one.score("e", X[60:100]), one.score("e", X[100:101])]
    for got, want in zip(out, expected, strict=True):
        np.testing.assert_array_equal(got[1], want[1])


def test_the_copies_a_process_keeps_are_bounded_and_own_their_memory(windowed, redis):
    """The copies of entities' rows a process keeps: at most max_entities of them (the least
    recently served go first), and a large request's copy holds the kept rows, not the request."""
    import asyncio

    from anomaly_mlops.serving.shared_history import SharedHistory

    model, X = windowed
    redis.command("FLUSHALL")

    async def run():
        history = SharedHistory(model, redis.url, "m", "v", max_entities=2)
        for entity, rows in (("a", X[:30]), ("b", X[:30]), ("c", X[:2000])):
            (await history.begin(entity, rows).ready()).score_alone(model)
        await history.close()
        return history._copies

    copies = asyncio.run(run())
    assert [key.decode().rsplit(":", 1)[1] for key in copies] == ["b", "c"]
    kept = copies[next(reversed(copies))][2]
    np.testing.assert_array_equal(kept, X[2000 - model.history_rows : 2000])
    assert kept.base is None or kept.base.nbytes <= 2 * kept.nbytes  # not a view of the 2,000 rows


def _children(pid: int) -> set[int]:
    from pathlib import Path

    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def test_a_killed_worker_is_started_again_and_the_others_serve_on(model_dir, tmp_path):
    import signal

    server = Replica(model_dir, tmp_path / "w.log", "--workers", "2")  # a row-wise model: no store needed
    url = f"{server.url}/v1/models/detector:predict"
    try:
        workers = _children(server.process.pid)
        assert len(workers) == 2
        victim = min(workers)
        import os

        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{victim}") and time.monotonic() < deadline:
            time.sleep(0.02)  # connections queued to the dying worker's socket are lost with it
        answers = [requests.post(url, json={"instances": [[50, 60, 30, 80, 50, 0]]}, timeout=10) for _ in range(20)]
        deadline = time.monotonic() + 10
        while len(_children(server.process.pid) - {victim}) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        replaced = _children(server.process.pid)
    finally:
        server.stop()
    assert [a.status_code for a in answers] == [200] * 20
    assert len(replaced) == 2 and victim not in replaced
    assert "starting it again" in server.log_path.read_text()
    assert server.process.returncode == 0


def test_a_store_that_lost_its_scripts_answers_503_once_then_history_goes_on(windowed, redis, tmp_path):
    """SCRIPT FLUSH (an operator, or a failover to a replica without them): the request that
    meets it is answered 503, the connection is made again with the scripts loaded, and the
    entity's history, still in the store, goes on."""
    model, X = windowed
    redis.command("FLUSHALL")
    server = Replica(model.model_dir, tmp_path / "s.log", "--history-url", redis.url)
    url = f"{server.url}/v1/models/detector:predict"

    def post(i):
        return requests.post(url, json={"instances": [X[i].tolist()], "entity": "e"}, timeout=10)

    try:
        before = [post(i).status_code for i in range(20)]
        assert redis.command("SCRIPT", "FLUSH") == b"+OK"
        refused = post(20)
        after = [post(i) for i in range(20, 25)]
    finally:
        server.stop()
    assert before == [200] * 20 and refused.status_code == 503
    assert [a.status_code for a in after] == [200] * 5
    assert all(a.json()["history_complete"] == [True] for a in after)
