"""The train step: StandardScaler + IsolationForest, threshold from the training scores."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .artifacts import ARTIFACT_FORMAT, MANIFEST_FILE, METADATA_FILE, MODEL_FILE, SAFE_MODEL_FILE, write_manifest
from .data import Dataset, load_dataset
from .errors import ConfigError, DataError
from .features import FeatureTransform
from .params import TrainParams
from .schema import FeatureSchema

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model_dir: Path
    threshold: float
    train_rows: int
    fit_seconds: float
    manifest_sha256: str
    metadata: dict = field(repr=False)


def library_versions() -> dict[str, str]:
    import joblib
    import numpy
    import sklearn
    import skops

    return {
        "anomaly-mlops": __version__,
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "joblib": joblib.__version__,
        "skops": skops.__version__,
    }


def fit_detector(X: np.ndarray, params: TrainParams):
    """Fit the pipeline and fix the threshold from the training scores alone.
    Returns (pipeline, threshold, training anomaly scores)."""
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipeline = Pipeline(
        [
            ("scaler", StandardScaler()),
            (
                "iforest",
                IsolationForest(
                    n_estimators=params.n_estimators,
                    max_samples=params.max_samples,
                    max_features=params.max_features,
                    contamination="auto",
                    random_state=params.seed,
                    n_jobs=params.n_jobs,
                ),
            ),
        ]
    )
    pipeline.fit(X)
    train_scores = -pipeline.score_samples(X)
    threshold = float(np.quantile(train_scores, 1.0 - params.contamination))
    # predict() flags score_samples < offset_, i.e. anomaly score > -offset_.
    pipeline.named_steps["iforest"].offset_ = -threshold
    return pipeline, threshold, train_scores


def _prepare_output(out: Path) -> Path:
    """Refuse a used or unwritable output before any work; return the staging directory
    beside it (a crash never leaves a half model at ``out``)."""
    if out.is_symlink() or out.exists() and (not out.is_dir() or any(out.iterdir())):
        kind = "is not empty" if out.is_dir() else "exists and is not a directory"
        raise ConfigError(f"model output {out} {kind}; choose a new directory")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the model output beside {out}: {exc.strerror}") from exc
    return staging


def provenance(git_commit: str | None = None, run_id: str | None = None) -> dict:
    """Which code and which run made a model: the commit (given, or the image's
    ANOMALY_MLOPS_GIT_COMMIT, set when the image is built from a commit) and the run id."""
    return {
        "git_commit": git_commit or os.environ.get("ANOMALY_MLOPS_GIT_COMMIT") or None,
        "run_id": run_id or os.environ.get("ANOMALY_MLOPS_RUN_ID") or None,
    }


def train(
    data: Dataset | str,
    out_dir: str | os.PathLike,
    params: TrainParams | None = None,
    schema: FeatureSchema | None = None,
    origin: dict | None = None,
) -> TrainResult:
    """Fit and write a complete model directory (manifest last) at ``out_dir``.
    ``origin`` (see ``provenance``) is recorded in metadata.json."""
    import joblib
    import skops.io as skops_io

    params = params or TrainParams()
    params.check()
    out = Path(out_dir)
    staging = _prepare_output(out)
    try:
        dataset = data if isinstance(data, Dataset) else load_dataset(data, schema)
        if dataset.n_rows < 16:
            raise DataError(f"training needs at least 16 rows, {dataset.source} has {dataset.n_rows}")
        constant = [n for n, s in zip(dataset.schema.features, dataset.X.std(axis=0)) if s == 0]
        if constant:
            log.warning("features constant in training data (they carry no signal): %s", constant)

        log.info("fitting %d trees on %d rows x %d features", params.n_estimators, dataset.n_rows, len(dataset.schema))
        started = time.perf_counter()
        transform = FeatureTransform(params.feature_window)
        pipeline, threshold, train_scores = fit_detector(transform.apply(dataset.X), params)
        fit_seconds = time.perf_counter() - started
        log.info(
            "fitted in %.2fs; threshold %.5f (%.1f%% of training rows above)",
            fit_seconds,
            threshold,
            100 * float((train_scores > threshold).mean()),
        )

        joblib.dump(pipeline, staging / MODEL_FILE)
        skops_io.dump(pipeline, staging / SAFE_MODEL_FILE)
        metadata = {
            "artifact_format": ARTIFACT_FORMAT,
            "model_type": "StandardScaler+IsolationForest",
            "schema": dataset.schema.to_dict(),
            "threshold": threshold,
            "feature_transform": transform.to_dict(),
            "score_definition": "anomaly_score = -pipeline.score_samples(feature_transform(x)); "
            "anomalous when anomaly_score > threshold",
            "params": asdict(params),
            "data": {"source": dataset.source, "sha256": dataset.sha256, "rows": dataset.n_rows},
            "library_versions": library_versions(),
            "train_score_quantiles": {q: float(np.quantile(train_scores, float(q))) for q in ("0.5", "0.9", "0.99")},
            "fit_seconds": round(fit_seconds, 3),
            "provenance": origin or provenance(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        manifest_sha = write_manifest(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    staging.rename(out)
    log.info("model written to %s (%s %s…)", out, MANIFEST_FILE, manifest_sha[:12])
    return TrainResult(out, threshold, dataset.n_rows, fit_seconds, manifest_sha, metadata)
