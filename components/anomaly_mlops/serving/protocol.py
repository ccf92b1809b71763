"""The request protocol both servers speak: labels and anomaly scores over V1 and Open Inference (V2).

One pass through the forest per request (score_samples once; the label is a comparison
with the stored threshold), where the design record's sample called predict and
decision_function and so walked every tree twice.

Accepted inputs
  V1  {"instances": [[f1, ..., fd], ...]}  or  {"instances": [{"<feature>": v, ...}, ...]}
      ("inputs" is accepted in place of "instances"), optionally "entity": "<series id>"
  V2  one tensor of shape [n, d] (FP32/FP64/INT*), or one [n] tensor per feature, named
      after the features; optionally parameters {"entity": "<series id>"}
  A model whose score depends on earlier rows (time-series features, score smoothing)
  reads a request's rows as one series, oldest first, after the rows the server kept for
  its entity (history.py); without an entity the request's rows are the whole series.
Outputs
  V1  {"predictions": [-1|1, ...], "anomaly_scores": [float, ...]}, plus
      "history_complete": [bool, ...] for such a model (false: scored with less history
      than the model was trained with)
  V2  outputs "predictions" (INT64 [n]) and "anomaly_scores" (FP64 [n]), plus
      "history_complete" (BOOL [n]) for such a model
  predictions follow scikit-learn and the upstream sklearn runtime: -1 anomaly, 1 normal;
  anomaly_scores: higher is more anomalous
Malformed input is answered with HTTP 400 and a message naming the problem; a body over
the size cap with 413 before it is parsed. Requests of more than SMALL_BATCH_ROWS rows are
parsed and scored on a worker thread, so a large batch does not stall small requests or the
readiness probe.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import time
from typing import Any

import numpy as np

from anomaly_mlops.model.artifacts import (
    ANOMALY,
    NORMAL,
    LoadedModel,
    PendingScores,
)
from anomaly_mlops.model.features import smooth_scores
from anomaly_mlops.model.platform import SCHEMA_NAME as SELF_HEALING_SCHEMA
from anomaly_mlops.model.platform import is_engine_default_row
from anomaly_mlops.serving.history import MAX_ENTITY_ID_CHARS, EntityHistory
from anomaly_mlops.serving.problems import InputProblem
from anomaly_mlops.serving.series import history_marks, max_gap_s

log = logging.getLogger(__name__)

_INTEGER_V2 = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_NUMERIC_V2 = {"FP16", "FP32", "FP64", *_INTEGER_V2}
_PLAIN_NUMBERS = {int, float}
# Up to this many rows a request is parsed and scored on the event loop (well under a
# millisecond); above, on a worker thread.
SMALL_BATCH_ROWS = 512
# JSON bytes allowed per value when deriving the default body cap: "-1.2345678901234567e+300, "
# is 26; the rest is headroom for whitespace and per-feature names.
BODY_BYTES_PER_VALUE = 32


def default_max_body_bytes(max_instances: int, n_features: int) -> int:
    """The largest legal request (max_instances rows) with room to spare, and no more."""
    return max_instances * n_features * BODY_BYTES_PER_VALUE + 64 * 1024


NOT_JSON = "the request body was not read as JSON: send it with the header 'Content-Type: application/json'"


def parse_v1(payload: Any, features: tuple[str, ...], max_instances: int, expected: str | None = None) -> np.ndarray:
    if isinstance(payload, (bytes, bytearray, str)):
        raise InputProblem(NOT_JSON)
    if not isinstance(payload, dict):
        raise InputProblem("the request body must be a JSON object with an 'instances' list")
    key = "instances" if "instances" in payload else "inputs" if "inputs" in payload else None
    if key is None:
        raise InputProblem(f"the request body has no 'instances' list (keys: {sorted(payload)[:10]})")
    instances = payload[key]
    if not isinstance(instances, list):
        raise InputProblem(f"'{key}' must be a list of rows, got {type(instances).__name__}")
    _check_count(len(instances), max_instances)
    n_features = len(features)
    # Fast paths: rows that are lists of plain ints and floats (type(), so no bool) of the
    # right length; anything else takes the checks below, which name the problem. One row
    # (the serving norm) is checked in Python, without numpy's per-call cost.
    if len(instances) == 1:
        row = instances[0]
        try:
            if (
                type(row) is list
                and len(row) == n_features
                and {type(value) for value in row} <= _PLAIN_NUMBERS
                and all(map(math.isfinite, row))
            ):
                return np.array([row], dtype=np.float64)
        except OverflowError:  # an integer beyond float64 (Python's json parser): named below
            pass
    if (
        all(type(row) is list and len(row) == n_features for row in instances)
        and {type(value) for row in instances for value in row} <= _PLAIN_NUMBERS
    ):
        return _finite(np.asarray(instances, dtype=np.float64), features)
    if all(isinstance(row, dict) for row in instances):
        rows = []
        for i, row in enumerate(instances):
            missing = [f for f in features if f not in row]
            if missing:
                raise InputProblem(f"instance {i} lacks features {missing}")
            rows.append([row[f] for f in features])
        instances = rows
    for i, row in enumerate(instances):
        if not isinstance(row, list):
            raise InputProblem(
                f"instance {i} must be a list of {len(features)} numbers or an object keyed by feature name"
            )
        if len(row) != len(features):
            raise InputProblem(
                f"instance {i} has {len(row)} values; the model expects "
                f"{expected or f'{len(features)}: {list(features)}'}"
            )
        for j, value in enumerate(row):
            # bool is an int subclass; a true/false metric is almost surely a client bug.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputProblem(f"instance {i}, feature {features[j]!r}: expected a number, got {value!r}"[:300])
    return _finite(np.asarray(instances, dtype=np.float64), features)


def parse_v2(request, features: tuple[str, ...], max_instances: int) -> np.ndarray:
    inputs = list(request.inputs or [])
    if not inputs:
        raise InputProblem("the V2 request has no inputs")
    names = [t.name for t in inputs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputProblem(f"input names must be unique; repeated: {duplicated}")
    for tensor in inputs:
        _check_tensor(tensor)
    if len(inputs) == 1:
        tensor = inputs[0]
        shape = list(tensor.shape)
        if len(shape) != 2 or shape[1] != len(features):
            raise InputProblem(
                f"input {tensor.name!r} has shape {shape}; expected [n, {len(features)}] for features {list(features)}"
            )
        _check_count(shape[0], max_instances)
        X = _as_numpy(tensor).reshape(shape)
    else:
        by_name = {t.name: t for t in inputs}
        missing = [f for f in features if f not in by_name]
        if missing:
            raise InputProblem(f"per-feature inputs lack {missing}; names must match the features {list(features)}")
        columns = []
        for f in features:
            shape = list(by_name[f].shape)
            if len(shape) != 1 and not (len(shape) == 2 and shape[1] == 1):
                raise InputProblem(f"input {f!r} has shape {shape}; per-feature inputs are [n] or [n, 1]")
            columns.append(_as_numpy(by_name[f]).reshape(-1))
        if len({c.size for c in columns}) != 1:
            raise InputProblem("per-feature inputs have different lengths")
        _check_count(columns[0].size, max_instances)
        X = np.column_stack(columns)
    return _finite(X.astype(np.float64, copy=False), features)


def _check_tensor(tensor) -> None:
    """What kserve would otherwise cast silently: fractions in INT data, strings and booleans
    in numeric data, negative dimensions."""
    if tensor.datatype not in _NUMERIC_V2:
        raise InputProblem(f"input {tensor.name!r} has datatype {tensor.datatype}; send FP32 or FP64")
    shape = list(tensor.shape or [])
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise InputProblem(f"input {tensor.name!r} has shape {shape}; dimensions must be non-negative integers")
    data = tensor.data
    if not isinstance(data, list):
        return  # binary tensor data: typed by its bytes
    integral = tensor.datatype in _INTEGER_V2
    stack, index = [data], 0
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
            continue
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise InputProblem(
                f"input {tensor.name!r} element {index}: expected a number for {tensor.datatype}, got {item!r}"[:300]
            )
        if integral and isinstance(item, float) and not item.is_integer():
            raise InputProblem(
                f"input {tensor.name!r} element {index} is {item}, not an integer as "
                f"{tensor.datatype} requires; send fractional values as FP32 or FP64"
            )
        index += 1


def _as_numpy(tensor) -> np.ndarray:
    try:
        return np.asarray(tensor.as_numpy())
    except Exception as exc:  # kserve raises assorted errors for data/shape mismatch
        raise InputProblem(
            f"input {tensor.name!r} could not be read as {tensor.datatype} {list(tensor.shape)}: {exc}"
        ) from exc


def _check_count(n: int, max_instances: int) -> None:
    if n == 0:
        raise InputProblem("the request holds no instances")
    if n > max_instances:
        raise InputProblem(f"the request holds {n} instances; the limit is {max_instances} per request")


def _finite(X: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    if np.isfinite(X).all():
        return X
    i, j = (int(v) for v in np.argwhere(~np.isfinite(X))[0])
    raise InputProblem(f"instance {i}, feature {features[j]!r} is {X[i, j]}; values must be finite numbers")


def parse_entity(value) -> str | None:
    """The series a request's rows belong to (V1 "entity", V2 parameters.entity)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ENTITY_ID_CHARS:
        raise InputProblem(f"'entity' must be a non-empty string of at most {MAX_ENTITY_ID_CHARS} characters")
    return value


MAX_TIMESTAMP = 1e12  # seconds since the epoch: year 33658; a millisecond clock sent by mistake is beyond it


def parse_timestamps(values, n_rows: int) -> np.ndarray | None:
    """The rows' times (seconds since the epoch, oldest first): V1 "timestamps", V2 input
    "timestamp". Optional; with them an entity's rows are checked for order and gaps."""
    if values is None:
        return None
    if not isinstance(values, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise InputProblem("'timestamps' must be a list of numbers (seconds since the epoch), one per row")
    if len(values) != n_rows:
        raise InputProblem(f"'timestamps' holds {len(values)} values for {n_rows} rows")
    times = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(times)) or np.any(times < 0) or np.any(times > MAX_TIMESTAMP):
        raise InputProblem("'timestamps' must be seconds since the epoch (finite, not milliseconds)")
    if np.any(np.diff(times) <= 0):
        i = int(np.flatnonzero(np.diff(times) <= 0)[0]) + 1
        raise InputProblem(f"'timestamps' must increase: row {i} is at {times[i]:g}, not after row {i - 1}")
    return times


def score_rows(model: LoadedModel, history: EntityHistory | None, X: np.ndarray, entity: str | None, times=None):
    """(predictions, scores, history_complete or None): ``begin_scoring`` and its finish."""
    return begin_scoring(model, history, X, entity, times).score_alone(model)


def begin_scoring(model: LoadedModel, history: EntityHistory | None, X: np.ndarray, entity: str | None, times=None):
    """The rows' features, ready for the forest, and how to finish their scores. For a
    windowed model the rows are one series, oldest first: after the entity's kept history
    when ``entity`` is given, else on their own; rows scored with less history than the
    model was trained with are marked incomplete. A lone row with no history at all is
    refused, not guessed."""
    if history is None:
        return PendingScores(X, lambda raw: (model.label(raw), raw, None))
    if entity is not None:
        return history.begin(entity, X, times)
    if len(X) == 1:
        raise InputProblem(
            f"this model scores each row together with the {model.history_rows} rows before it "
            f"({describe_history(model)}): send 'entity' (V1 body key, V2 parameters.entity) naming "
            "the series so the server keeps its history, or send the preceding rows with this one, oldest first"
        )

    complete = history_marks(0, len(X), model.history_rows, times, max_gap_s(model))

    def finish(raw):
        scores = smooth_scores(raw, model.smoothing)
        return model.label(scores), scores, complete

    return PendingScores(X, finish, model.transform)


def parse_payload(model: LoadedModel, payload, v2: bool, max_instances: int, expected: str):
    """The rows, entity and timestamps (or None) of a V1 body or a V2 request (``.inputs``
    and ``.parameters``), as both servers read them. Raises InputProblem."""
    features = model.schema.features
    if v2:
        times = [t for t in payload.inputs or [] if getattr(t, "name", None) == "timestamp"]
        if times:  # a tensor beside the metrics, not one of them
            payload.inputs = [t for t in payload.inputs if t is not times[0]]
        X = parse_v2(payload, features, max_instances)
        stamps = _timestamp_tensor(times[0], len(X)) if times else None
        return X, parse_entity((payload.parameters or {}).get("entity")), stamps
    X = parse_v1(payload, features, max_instances, expected)
    return X, parse_entity(payload.get("entity")), parse_timestamps(payload.get("timestamps"), len(X))


def _timestamp_tensor(tensor, n_rows: int) -> np.ndarray:
    _check_tensor(tensor)
    if len(list(tensor.shape)) != 1:
        raise InputProblem(f"input 'timestamp' has shape {list(tensor.shape)}; expected [{n_rows}]")
    return parse_timestamps(_as_numpy(tensor).reshape(-1).tolist(), n_rows)


def begin_request(
    model: LoadedModel, history, payload, v2: bool, max_instances: int, expected: str, outside=None
) -> PendingScores:
    """Parse a request and begin scoring its rows (both servers); the rows are counted by
    ``outside`` (ServedRowCounters) once they are accepted for scoring, and rows it finds to
    carry no information (the platform engine's all-default row) are answered normal.
    Raises InputProblem."""
    X, entity, times = parse_payload(model, payload, v2, max_instances, expected)
    pending = begin_scoring(model, history, X, entity, times)
    if outside is not None:
        uninformative = outside.observe(X)
        if uninformative is not None:
            finish = pending.finish

            def answered_normal(raw):
                predictions, scores, complete = finish(raw)
                return (
                    np.where(uninformative[-len(predictions) :], NORMAL, predictions).astype(np.int8),
                    scores,
                    complete,
                )

            pending.finish = answered_normal
    return pending


def score_payload(model: LoadedModel, history, payload, v2: bool, max_instances: int, expected: str, outside=None):
    """Parse and score a request: (predictions, scores, history_complete or None)."""
    return begin_request(model, history, payload, v2, max_instances, expected, outside).score_alone(model)


# Served rows outside the training range (drift.py), on both servers' /metrics: a level that
# moved since training, which the forest flags row after row, shows here before a retraining.
OUTSIDE_ROWS_METRIC = (
    "anomaly_detector_rows_outside_training_range",
    "Rows received for scoring with at least one metric outside the range the model was fitted on",
)
OUTSIDE_METRIC_METRIC = (
    "anomaly_detector_metric_outside_training_range",
    "Rows received for scoring with this metric outside the range the model was fitted on",
)


# The Self-Healing Platform engine's all-default row (its Prometheus unreachable): no
# information, answered normal, counted here and logged (at most once a minute).
ENGINE_DEFAULT_ROWS_METRIC = (
    "anomaly_detector_engine_default_rows",
    "Rows that were the platform engine's all-default row (its Prometheus unreachable), answered normal",
)


def outside_range_counters(registry=None) -> tuple:
    """The Prometheus counters ServedRowCounters needs (in ``registry``, else the default one
    KServe serves)."""
    from prometheus_client import Counter

    where = {} if registry is None else {"registry": registry}
    return (
        Counter(*OUTSIDE_ROWS_METRIC, ["model"], **where),
        Counter(*OUTSIDE_METRIC_METRIC, ["model", "metric"], **where),
        Counter(*ENGINE_DEFAULT_ROWS_METRIC, ["model"], **where),
    )


class ServedRowCounters:
    """Counts served rows outside the model's training ranges (rows with any metric outside,
    and per metric; nothing for a model trained before its ranges were recorded) and, for the
    self-healing-platform schema, the engine's all-default rows."""

    def __init__(self, model: LoadedModel, model_name: str, counters: tuple):
        from anomaly_mlops.model.drift import RangeCheck

        self.check = RangeCheck.of_model(model.metadata)
        rows, per_metric, defaults = counters
        self.rows = rows.labels(model_name)
        self.per_metric = [per_metric.labels(model_name, name) for name in model.schema.features]
        self.engine_defaults = defaults.labels(model_name) if model.schema.name == SELF_HEALING_SCHEMA else None
        self._logged_defaults_at = -math.inf

    def observe(self, X: np.ndarray) -> np.ndarray | None:
        """Count ``X``'s rows; return which rows carry no information (None: none do)."""
        uninformative = None
        if self.engine_defaults is not None:
            defaults = is_engine_default_row(X)
            n = int(np.count_nonzero(defaults))
            if n:
                uninformative = defaults
                self.engine_defaults.inc(n)
                if time.monotonic() - self._logged_defaults_at >= 60:
                    self._logged_defaults_at = time.monotonic()
                    log.warning(
                        "%d row(s) were the platform engine's all-default row (its Prometheus unreachable?): "
                        "answered normal; anomaly_detector_engine_default_rows_total counts them",
                        n,
                    )
        if self.check is None:
            return uninformative
        if len(X) == 1 and self.check.inside_row(X[0].tolist()):  # the serving norm, without numpy's per-call cost
            return uninformative
        outside = self.check.outside(X)
        if outside.any():
            self.rows.inc(int(np.count_nonzero(outside.any(axis=1))))
            for j in np.flatnonzero(outside.any(axis=0)):
                self.per_metric[j].inc(int(np.count_nonzero(outside[:, j])))
        return uninformative


# What served traffic looks like against what the model was calibrated on, per model version
# (drift.ScoreReference; manifests/monitoring turns these into the flagged share and the score
# PSI over a sliding window, summed over replicas and worker processes, and alerts on them).
SCORED_ROWS_METRIC = ("anomaly_detector_rows_scored", "Rows scored")
FLAGGED_ROWS_METRIC = ("anomaly_detector_rows_flagged", "Rows flagged anomalous")
SCORE_BIN_ROWS_METRIC = (
    "anomaly_detector_score_bin_rows",
    "Rows scored, by bin of the calibration scores' deciles (score_bin_reference_share: each bin's share there)",
)
SCORE_BIN_REFERENCE_METRIC = (
    "anomaly_detector_score_bin_reference_share",
    "Share of the model's calibration scores in this bin (rows served in the same bins: score_bin_rows)",
)
CALIBRATED_FLAGGED_METRIC = (
    "anomaly_detector_calibrated_flagged_share",
    "Share of the model's calibration rows above its threshold: the flagged share served traffic should show",
)


def served_score_counters(registry=None) -> tuple:
    """The Prometheus metrics ServedScoreCounters needs (in ``registry``, else the default one
    KServe serves). The gauges are constants of the model: the largest of the worker processes'."""
    from prometheus_client import Counter, Gauge

    where = {} if registry is None else {"registry": registry}
    labels = ["model", "version"]
    return (
        Counter(*SCORED_ROWS_METRIC, labels, **where),
        Counter(*FLAGGED_ROWS_METRIC, labels, **where),
        Counter(*SCORE_BIN_ROWS_METRIC, [*labels, "bin"], **where),
        Gauge(*SCORE_BIN_REFERENCE_METRIC, [*labels, "bin"], multiprocess_mode="max", **where),
        Gauge(*CALIBRATED_FLAGGED_METRIC, labels, multiprocess_mode="max", **where),
    )


class ServedScoreCounters:
    """Counts the rows a model version scored and flagged and, for a model with a score
    reference (trained with one recorded), its served scores per reference bin. Called once
    per forest walk with every row scored in it: no allocation that grows with traffic."""

    def __init__(self, model: LoadedModel, model_name: str, version: str | None, counters: tuple):
        from anomaly_mlops.model.drift import ScoreReference

        labels = (model_name, version or "")
        scored, flagged, bins, reference_share, calibrated = counters
        self.scored = scored.labels(*labels)
        self.flagged = flagged.labels(*labels)
        self.reference = ScoreReference.of_model(model.metadata)
        self.bins = []
        if self.reference is not None:
            for i, share in enumerate(self.reference.shares):
                self.bins.append(bins.labels(*labels, str(i)))
                reference_share.labels(*labels, str(i)).set(share)
            calibrated.labels(*labels).set(self.reference.flagged_share)

    def observe(self, predictions: np.ndarray, scores: np.ndarray) -> None:
        if not len(scores):
            return
        if len(scores) == 1:  # a single-row walk (the serving norm), without numpy's per-call cost
            self._observe_one(int(predictions[0]), float(scores[0]))
            return
        self.scored.inc(len(scores))
        flagged = int(np.count_nonzero(predictions == ANOMALY))
        if flagged:
            self.flagged.inc(flagged)
        if self.reference is not None:
            counts = self.reference.counts(scores)
            for i in np.flatnonzero(counts):
                self.bins[i].inc(int(counts[i]))

    def _observe_one(self, prediction: int, score: float) -> None:
        self.scored.inc()
        if prediction == ANOMALY:
            self.flagged.inc()
        if self.reference is not None:
            # the bin ScoreReference.bin_of gives it (numpy's searchsorted, side="right")
            self.bins[bisect.bisect_right(self.reference.edges, score)].inc()


def v1_answer(predictions: np.ndarray, scores: np.ndarray, complete: np.ndarray | None) -> dict:
    answer = {"predictions": predictions.tolist(), "anomaly_scores": scores.tolist()}
    if complete is not None:
        answer["history_complete"] = complete.tolist()
    return answer


# The V2 output tensors, in order; history_complete only for a model that keeps history.
V2_OUTPUTS = (("predictions", "INT64"), ("anomaly_scores", "FP64"), ("history_complete", "BOOL"))


def v2_outputs(predictions: np.ndarray, scores: np.ndarray, complete: np.ndarray | None) -> list[dict]:
    """The V2 output tensors (as JSON objects), as output_types describes them."""
    n = len(scores)
    data = (predictions, scores, complete)
    return [
        {"name": name, "datatype": datatype, "shape": [n], "data": values.tolist()}
        for (name, datatype), values in zip(V2_OUTPUTS, data)
        if values is not None
    ]


def describe_history(model: LoadedModel) -> str:
    window = model.metadata.get("feature_transform", {}).get("window_minutes")
    smoothing = model.metadata.get("score_smoothing", {}).get("minutes")
    parts = [f"features over {window} min" if model.transform.window else None]
    parts.append(f"scores averaged over {smoothing} min" if model.smoothing > 1 else None)
    return ", ".join(p for p in parts if p)


def input_types(model: LoadedModel) -> list[dict]:
    return [{"name": "input-0", "datatype": "FP64", "shape": [-1, len(model.schema)]}]


def output_types(model: LoadedModel) -> list[dict]:
    kept = len(V2_OUTPUTS) if model.history_rows else len(V2_OUTPUTS) - 1
    return [{"name": name, "datatype": datatype, "shape": [-1]} for name, datatype in V2_OUTPUTS[:kept]]


def claimed_rows(payload, v2: bool) -> int:
    """Rows a request claims, cheaply, to choose where it is parsed; 0 when unknown. A V2
    request may be KServe's InferRequest or a decoded JSON object."""
    try:
        if v2:
            first = payload["inputs"][0] if isinstance(payload, dict) else payload.inputs[0]
            shape = first["shape"] if isinstance(first, dict) else first.shape
            return int(shape[0]) if shape else 0
        rows = payload.get("instances", payload.get("inputs"))
        return len(rows) if isinstance(rows, list) else 0
    except Exception:  # malformed requests are refused by the parser, on the loop
        return 0


def too_large(size: str, limit: int) -> str:
    return f"the request body is {size}; the limit is {limit} bytes (--max-body-bytes); send fewer rows per request"


async def read_body_capped(headers: dict, receive, limit: int) -> tuple[bytes | None, str | None]:
    """(body, None), or (None, how large) once the body is over ``limit`` bytes, declared
    in Content-Length or received; (None, None) when the client went away."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None, f"{int(declared)} bytes"
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None, None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None, f"more than {limit} bytes"
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks), None


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, before anything parses it.

    A declared Content-Length is checked up front; a chunked body is read up to the cap
    and replayed to the app."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and not (declared.isdigit() and int(declared) > self.max_bytes):
            return await self.app(scope, receive, send)  # within the cap: the app reads it
        body, refused = await read_body_capped(headers, receive, self.max_bytes)
        if refused:
            return await self._refuse(send, refused)
        if body is None:
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send, size: str) -> None:
        body = json.dumps({"error": too_large(size, self.max_bytes)}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
