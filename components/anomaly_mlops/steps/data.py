"""The data step: read or generate operational metrics (a file, s3://, the synthetic
generator, or Prometheus with alert-history labels), check them against the feature schema,
split them in time into train and holdout, and write both as Parquet."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from anomaly_mlops.errors import DataError
from anomaly_mlops.model.platform import SCHEMA_NAME as SELF_HEALING_SCHEMA
from anomaly_mlops.model.schema import (
    ANOMALY_KIND_COLUMN,
    DEFAULT_FEATURES,
    ENTITY_COLUMN,
    LABEL_COLUMN,
    TIMESTAMP_COLUMN,
    FeatureSchema,
)
from anomaly_mlops.params import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, MIN_SPLIT_ROWS, check_seed
from anomaly_mlops.redact import redact
from anomaly_mlops.sources.files import frame_to_dataset, read_table
from anomaly_mlops.sources.synthetic import generate_synthetic

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train_path: Path
    holdout_path: Path
    schema: FeatureSchema
    train_rows: int
    holdout_rows: int
    holdout_anomalies: int
    labelled: bool = True
    labels: dict | None = None  # what each label source labelled (live data), as in labels.json


def prepare_data(
    out_dir: str | os.PathLike,
    *,
    source: str = "synthetic",
    schema: FeatureSchema | None = None,
    holdout_fraction: float = 0.3,
    rows: int = 20_160,
    seed: int = 42,
    anomaly_rate: float = 0.03,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    frame: pd.DataFrame | None = None,
    holdout_source: str | None = None,
    labels_report: dict | None = None,
    prometheus=None,
) -> PreparedData:
    """Write ``train.parquet``, ``holdout.parquet``, ``schema.json`` (and ``labels.json``
    for labelled live data) into ``out_dir``.

    The split is in time (the holdout is the latest part), as the model will meet the
    future, not a shuffled past. ``frame`` is data already fetched (e.g. from Prometheus);
    with ``holdout_source`` all of it trains and the labelled holdout is read from there.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise DataError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    check_seed(seed)
    schema = schema or FeatureSchema()
    if prometheus is not None:  # a prometheus.PrometheusSource: live metrics, labels from alert history
        frame, schema, labels_report = fetch_live(prometheus, schema)
        source = f"prometheus {redact(prometheus.url)}"
    if frame is not None:
        log.info("using %d rows from %s", len(frame), source)
    elif source == "synthetic" and schema.name == SELF_HEALING_SCHEMA:
        from anomaly_mlops.sources.self_healing import generate_platform_synthetic

        frame = generate_platform_synthetic(rows=rows, seed=seed, anomaly_rate=anomaly_rate)
        log.info("generated %d synthetic rows of the %s schema (seed %d)", len(frame), schema.name, seed)
    elif source == "synthetic":
        if schema.features != DEFAULT_FEATURES:
            raise DataError("the synthetic generator produces the default schema and the self-healing-platform schema")
        frame = generate_synthetic(rows=rows, seed=seed, anomaly_rate=anomaly_rate)
        log.info("generated %d synthetic rows (seed %d, anomaly rate %.3f)", len(frame), seed, anomaly_rate)
    else:
        frame, _ = read_table(source, max_bytes=max_bytes)
        log.info("read %d rows from %s", len(frame), source)
    # Validates the whole frame before anything is written.
    frame_to_dataset(frame, schema, source=source, max_rows=max_rows)
    if TIMESTAMP_COLUMN in frame.columns:
        frame = frame.sort_values(TIMESTAMP_COLUMN, kind="stable").reset_index(drop=True)
    if holdout_source:
        holdout, _ = read_table(holdout_source, max_bytes=max_bytes)
        frame_to_dataset(holdout, schema, source=holdout_source, require_labels=True, max_rows=max_rows)
        train_part = frame
    else:
        cut = int(round(len(frame) * (1 - holdout_fraction)))
        if cut < MIN_SPLIT_ROWS or len(frame) - cut < MIN_SPLIT_ROWS:
            raise DataError(
                f"{len(frame)} rows are too few to split {holdout_fraction:.0%} into a holdout; "
                f"need {MIN_SPLIT_ROWS}+ on each side"
            )
        train_part, holdout = frame.iloc[:cut], frame.iloc[cut:]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_path, holdout_path = out / "train.parquet", out / "holdout.parquet"
    _atomic_parquet(train_part[_kept_columns(train_part, schema)], train_path)
    _atomic_parquet(holdout[_kept_columns(holdout, schema)], holdout_path)
    (out / "schema.json").write_text(json.dumps(schema.to_dict(), indent=2) + "\n")
    if labels_report is not None:
        (out / "labels.json").write_text(json.dumps(labels_report, indent=2) + "\n")
    else:  # a reused folder must not keep an earlier run's report
        (out / "labels.json").unlink(missing_ok=True)
    holdout_anomalies = int(holdout[LABEL_COLUMN].sum()) if LABEL_COLUMN in holdout.columns else 0
    log.info(
        "wrote %s (%d rows) and %s (%d rows, %d labelled anomalous)",
        train_path,
        len(train_part),
        holdout_path,
        len(holdout),
        holdout_anomalies,
    )
    return PreparedData(
        train_path,
        holdout_path,
        schema,
        len(train_part),
        len(holdout),
        holdout_anomalies,
        labelled=LABEL_COLUMN in holdout.columns,
        labels=labels_report,
    )


def fetch_live(source, schema: FeatureSchema):
    """Prometheus rows for ``schema`` (the platform's schema with its engine's own PromQL),
    labelled: (frame, schema, labels report). ``source`` is a sources.prometheus.PrometheusSource."""
    from anomaly_mlops.sources.prometheus import fetch_prometheus
    from anomaly_mlops.sources.self_healing import fetch_platform_frame

    platform = schema.name == SELF_HEALING_SCHEMA and not source.queries
    return fetch_prometheus(source, schema, fetch_frame=fetch_platform_frame if platform else None)


def _kept_columns(frame: pd.DataFrame, schema: FeatureSchema) -> list[str]:
    return [
        c
        for c in (TIMESTAMP_COLUMN, ENTITY_COLUMN, *schema.features, LABEL_COLUMN, ANOMALY_KIND_COLUMN)
        if c in frame.columns
    ]


def _atomic_parquet(frame: pd.DataFrame, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
