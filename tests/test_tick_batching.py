"""The lean server's per-tick batching (lean_server.TickBatcher): requests that reach the
event loop together are scored in one forest walk, with the same answers as one by one."""

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from anomaly_mlops.serving.history import EntityHistory
from anomaly_mlops.serving.lean_server import Metrics, TickBatcher
from anomaly_mlops.serving.protocol import ServedScoreCounters, begin_scoring, score_rows, served_score_counters


class CountingModel:
    """The real model, counting forest walks."""

    def __init__(self, model):
        self.model, self.walks = model, []

    def raw_scores(self, features):
        self.walks.append(len(features))
        return self.model.raw_scores(features)


def batcher_for(model, scored_by=None) -> TickBatcher:
    """A TickBatcher with its own metrics; ``scored_by`` walks the forest (default: ``model``)."""
    metrics = Metrics("m")
    served = ServedScoreCounters(model, "m", None, served_score_counters(metrics.registry))
    return TickBatcher(scored_by or model, metrics, served)


def test_requests_of_one_tick_share_one_walk_and_score_as_alone(windowed):
    model, X = windowed
    counting = CountingModel(model)
    batched_history, alone_history = EntityHistory(model), EntityHistory(model)
    # Entities a, b, c; "a" twice in the same tick (its second request must see the first),
    # one multi-row request without an entity.
    requests = [("a", X[0:1]), ("b", X[100:101]), ("a", X[1:2]), (None, X[200:230]), ("c", X[300:303])]
    expected = [score_rows(model, alone_history, rows, entity) for entity, rows in requests]

    async def one_tick():
        batcher = batcher_for(model, counting)
        futures = [batcher.score(begin_scoring(model, batched_history, rows, e)) for e, rows in requests]
        return await asyncio.gather(*futures), batcher

    results, batcher = asyncio.run(one_tick())
    assert counting.walks == [1 + 1 + 1 + 30 + 3]
    # the tick's rows counted once, in the bins of the answered scores
    labels = {"model": "m", "version": ""}
    assert batcher.metrics.registry.get_sample_value("anomaly_detector_rows_scored_total", labels) == 36
    bins = [
        batcher.metrics.registry.get_sample_value("anomaly_detector_score_bin_rows_total", {**labels, "bin": str(i)})
        for i in range(10)
    ]
    answered = np.concatenate([scores for _, scores, _ in results])
    assert bins == list(batcher.served.reference.counts(answered))
    for (labels, scores, complete), (want_labels, want_scores, want_complete) in zip(results, expected):
        assert scores.tolist() == want_scores.tolist()  # bit for bit: each row walks the same trees
        assert labels.tolist() == want_labels.tolist() and complete.tolist() == want_complete.tolist()
    assert batcher.metrics.requests_per_walk._sum.get() == len(requests)


@pytest.fixture(scope="module")
def raw_windowed(tmp_path_factory):
    """The windowed fixture's model with the metrics as they come (the default basis): its
    window columns are computed in C in one call per tick (FeatureTransform.apply_stacked)."""
    from anomaly_mlops.model.artifacts import load_model_dir
    from anomaly_mlops.params import TrainParams
    from anomaly_mlops.sources.synthetic import generate_synthetic
    from anomaly_mlops.steps.train import train

    frame = generate_synthetic(3000, seed=3)
    path = tmp_path_factory.mktemp("raw-windowed-data") / "train.csv"
    frame.to_csv(path, index=False)
    out = tmp_path_factory.mktemp("raw-windowed-model") / "m"
    train(
        str(path),
        out,
        TrainParams(n_estimators=30, feature_window=15, score_smoothing=4, window_columns="deviation,std"),
    )
    return load_model_dir(out), frame.iloc[:, 1:7].to_numpy()


@pytest.mark.parametrize("fixture", ["windowed", "raw_windowed"])
def test_a_tick_of_warm_entities_computes_its_windows_in_one_pass(fixture, request, monkeypatch):
    """One row each from entities with a full window of history (the serving norm): their
    window statistics are computed together, and every figure equals the one-by-one answer."""
    from anomaly_mlops.model import features
    from anomaly_mlops.model.features import FeatureTransform

    model, X = request.getfixturevalue(fixture)
    entities = [f"node-{i}" for i in range(6)]
    batched_history, alone_history = EntityHistory(model), EntityHistory(model)
    for i, entity in enumerate(entities):  # warm: more than history_rows rows each
        for history in (batched_history, alone_history):
            score_rows(model, history, X[i * 100 : i * 100 + 30], entity)
    tick = [(entity, X[i * 100 + 30 : i * 100 + 31]) for i, entity in enumerate(entities)]
    expected = [score_rows(model, alone_history, rows, entity) for entity, rows in tick]
    calls = []
    if model.transform.stacks_in_c:  # one C call over the six series
        c = features.window_stats_c
        counted = SimpleNamespace(
            window_columns=c.window_columns,
            stacked_window_features=lambda series, *rest: (
                calls.append(len(series)) or c.stacked_window_features(series, *rest)
            ),
        )
        monkeypatch.setattr(features, "window_stats_c", counted)
        one_pass = [len(entities)]
    else:  # numpy: one pass over the six windows side by side
        windowed_ = FeatureTransform._windowed
        monkeypatch.setattr(
            FeatureTransform, "_windowed", lambda self, X, last: calls.append(X.shape) or windowed_(self, X, last)
        )
        one_pass = [(model.transform.window, 6 * X.shape[1])]

    async def one_tick():
        batcher = batcher_for(model)
        return await asyncio.gather(*[batcher.score(begin_scoring(model, batched_history, r, e)) for e, r in tick])

    results = asyncio.run(one_tick())
    assert calls == one_pass
    for (labels, scores, complete), (want_labels, want_scores, want_complete) in zip(results, expected):
        assert scores.tolist() == want_scores.tolist() and complete.tolist() == want_complete.tolist() == [True]
        assert labels.tolist() == want_labels.tolist()


def test_streamed_entities_over_many_ticks_match_offline_scoring(windowed):
    """Ticks of different sizes, entities interleaved: each entity's scores equal offline scoring."""
    model, X = windowed
    series = {"a": X[:40], "b": X[500:540], "c": X[900:940]}
    history = EntityHistory(model)
    counting = CountingModel(model)
    streamed = {e: [] for e in series}

    async def stream():
        batcher = batcher_for(model, counting)
        sends = [(entity, row) for row in range(40) for entity in series]  # a, b, c interleaved
        tick_sizes = iter([1, 2, 3, 5, 8] * 10)
        while sends:
            size = next(tick_sizes)
            tick, sends = sends[:size], sends[size:]
            futures = [(e, batcher.score(begin_scoring(model, history, series[e][r : r + 1], e))) for e, r in tick]
            for entity, future in futures:
                streamed[entity].append((await future)[1][0])

    asyncio.run(stream())
    assert max(counting.walks) > 1
    for entity, rows in series.items():
        np.testing.assert_allclose(streamed[entity], model.score(rows)[1], rtol=0, atol=1e-9)


def test_a_failing_walk_fails_only_that_tick(windowed):
    model, X = windowed

    class Broken:
        def raw_scores(self, features):
            raise RuntimeError("walk failed")

    async def run():
        batcher = batcher_for(model, Broken())
        futures = [batcher.score(begin_scoring(model, EntityHistory(model), X[:5], None)) for _ in range(2)]
        return await asyncio.gather(*futures, return_exceptions=True)

    assert [str(r) for r in asyncio.run(run())] == ["walk failed", "walk failed"]
