"""The KServe custom predictor: labels and anomaly scores over V1 and Open Inference (V2).

One pass through the forest per request (score_samples once; the label is a comparison
with the stored threshold), where the design record's sample called predict and
decision_function and so walked every tree twice.

Accepted inputs
  V1  {"instances": [[f1, ..., fd], ...]}  or  {"instances": [{"<feature>": v, ...}, ...]}
      ("inputs" is accepted in place of "instances")
  V2  one tensor of shape [n, d] (FP32/FP64/INT*), or one [n] tensor per feature, named
      after the features
Outputs
  V1  {"predictions": [0|1, ...], "anomaly_scores": [float, ...]}
  V2  outputs "predictions" (INT64 [n]) and "anomaly_scores" (FP64 [n])
Malformed input is answered with HTTP 400 and a message naming the problem.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import LoadedModel, load_model_dir

log = logging.getLogger(__name__)

DEFAULT_MAX_INSTANCES = 10_000
_NUMERIC_V2 = {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


class InputProblem(ValueError):
    """Raised by parse_instances; the server turns it into kserve's InvalidInput (400)."""


def resolve_model_dir(model_uri: str, cache_dir: str | None = None) -> Path:
    """A local directory as is; an s3:// prefix downloaded and verified into the cache."""
    if model_uri.startswith("s3://"):
        from .publish import download_model

        cache = Path(cache_dir or tempfile.mkdtemp(prefix="anomaly-model-"))
        return download_model(model_uri, cache / "model")
    return Path(model_uri)


def parse_v1(payload: Any, features: tuple[str, ...], max_instances: int) -> np.ndarray:
    if not isinstance(payload, dict):
        raise InputProblem("the request body must be a JSON object with an 'instances' list")
    key = "instances" if "instances" in payload else "inputs" if "inputs" in payload else None
    if key is None:
        raise InputProblem(f"the request body has no 'instances' list (keys: {sorted(payload)[:10]})")
    instances = payload[key]
    if not isinstance(instances, list):
        raise InputProblem(f"'{key}' must be a list of rows, got {type(instances).__name__}")
    _check_count(len(instances), max_instances)
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
            raise InputProblem(f"instance {i} must be a list of {len(features)} numbers or an object keyed by feature name")
        if len(row) != len(features):
            raise InputProblem(f"instance {i} has {len(row)} values; the model expects {len(features)}: {list(features)}")
        for j, value in enumerate(row):
            # bool is an int subclass; a true/false metric is almost surely a client bug.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputProblem(f"instance {i}, feature {features[j]!r}: expected a number, got {value!r}"[:300])
    return _finite(np.asarray(instances, dtype=np.float64), features)


def parse_v2(request, features: tuple[str, ...], max_instances: int) -> np.ndarray:
    inputs = list(request.inputs or [])
    if not inputs:
        raise InputProblem("the V2 request has no inputs")
    for tensor in inputs:
        if tensor.datatype not in _NUMERIC_V2:
            raise InputProblem(f"input {tensor.name!r} has datatype {tensor.datatype}; send FP32 or FP64")
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


def _as_numpy(tensor) -> np.ndarray:
    try:
        return np.asarray(tensor.as_numpy())
    except Exception as exc:  # kserve raises assorted errors for data/shape mismatch
        raise InputProblem(f"input {tensor.name!r} could not be read as {tensor.datatype} {list(tensor.shape)}: {exc}") from exc


def _check_count(n: int, max_instances: int) -> None:
    if n == 0:
        raise InputProblem("the request holds no instances")
    if n > max_instances:
        raise InputProblem(f"the request holds {n} instances; the limit is {max_instances} per request")


def _finite(X: np.ndarray, features: tuple[str, ...]) -> np.ndarray:
    bad = ~np.isfinite(X)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise InputProblem(f"instance {i}, feature {features[j]!r} is {X[i, j]}; values must be finite numbers")
    return X


def build_model_class():
    """Defined lazily so importing this module needs no kserve (and parses no argv)."""
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from prometheus_client import Counter

    rows_scored = Counter("anomaly_detector_rows_scored", "Rows scored by the anomaly detector", ["model"])
    rows_flagged = Counter("anomaly_detector_rows_flagged", "Rows the anomaly detector flagged anomalous", ["model"])

    class AnomalyDetectorModel(kserve.Model):
        def __init__(self, name: str, model_uri: str, max_instances: int = DEFAULT_MAX_INSTANCES,
                     cache_dir: str | None = None, scoring: str = "fast"):
            super().__init__(name)
            self.model_uri = model_uri
            self.max_instances = max_instances
            self.cache_dir = cache_dir
            self.scoring = scoring
            self.detector: LoadedModel | None = None

        def load(self) -> bool:
            local = resolve_model_dir(self.model_uri, self.cache_dir)
            self.detector = load_model_dir(local)
            if self.scoring == "sklearn":
                self.detector.fast = None
            meta = self.detector.metadata
            log.info("loaded model %s from %s: %d features, threshold %.5f, trained %s",
                     self.name, self.model_uri, len(self.detector.schema), self.detector.threshold, meta.get("created_at"))
            self.ready = True
            return self.ready

        def predict(self, payload, headers=None, response_headers=None):
            features = self.detector.schema.features
            is_v2 = isinstance(payload, InferRequest)
            try:
                X = parse_v2(payload, features, self.max_instances) if is_v2 else parse_v1(payload, features, self.max_instances)
            except InputProblem as exc:
                raise InvalidInput(str(exc)) from None
            predictions, scores = self.detector.score(X)
            rows_scored.labels(self.name).inc(len(X))
            rows_flagged.labels(self.name).inc(int(predictions.sum()))
            if not is_v2:
                return {"predictions": predictions.tolist(), "anomaly_scores": scores.tolist()}
            labels = InferOutput(name="predictions", shape=[len(X)], datatype="INT64")
            labels.set_data_from_numpy(predictions.astype(np.int64), binary_data=False)
            values = InferOutput(name="anomaly_scores", shape=[len(X)], datatype="FP64")
            values.set_data_from_numpy(scores.astype(np.float64), binary_data=False)
            return InferResponse(model_name=self.name, infer_outputs=[labels, values], response_id=payload.id or str(uuid.uuid4()))

    return AnomalyDetectorModel


def serve(
    model_name: str,
    model_uri: str,
    http_port: int = 8080,
    grpc_port: int | None = None,
    workers: int = 1,
    max_instances: int = DEFAULT_MAX_INSTANCES,
    scoring: str = "fast",
) -> None:
    """Load, verify and serve until SIGTERM. Blocks."""
    # kserve parses sys.argv at import time; keep our CLI flags away from it.
    saved_argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve

        model_class = build_model_class()
    finally:
        sys.argv = saved_argv
    model = model_class(model_name, model_uri, max_instances=max_instances, scoring=scoring)
    model.load()
    server = kserve.ModelServer(
        http_port=http_port,
        grpc_port=grpc_port or 8081,
        enable_grpc=grpc_port is not None,
        workers=workers,
    )
    server.start([model])

