"""Metrics from files: CSV or Parquet, local or s3://, checked strictly against the feature
schema (columns, NaN/inf, sizes) into a Dataset; labels from alert history or incident windows."""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly_mlops.errors import DataError
from anomaly_mlops.model.schema import ANOMALY_KIND_COLUMN, ENTITY_COLUMN, LABEL_COLUMN, TIMESTAMP_COLUMN, FeatureSchema
from anomaly_mlops.params import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS

MAX_METRIC_MAGNITUDE = 1e150  # squares of larger values (variance, window spread) overflow float64

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Validated feature matrix in schema order, optional 0/1 labels."""

    X: np.ndarray
    y: np.ndarray | None
    schema: FeatureSchema
    sha256: str
    source: str
    # Which series each row belongs to (rows of one entity in time order); None: one series.
    entities: np.ndarray | None = None
    # Median seconds between consecutive rows of an entity; None without timestamps.
    sample_interval_s: float | None = None

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])


def read_table(
    source: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    s3_env: dict | None = None,
) -> tuple[pd.DataFrame, str]:
    """Read a CSV (optionally .gz) or Parquet file, local or s3://; return the frame and
    the sha256 of the file bytes. The file is parsed from disk (an S3 object is spooled to
    a temporary file first), never held whole in memory beside the frame."""
    if source.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="anomaly-data-") as tmp:
            local = Path(tmp) / Path(source).name
            _download_s3(source, local, max_bytes, s3_env)
            return _parse_file(local, source), _sha256_of(local, source)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"data file not found: {source}" + (" (it is a directory)" if path.is_dir() else ""))
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"data file is empty (0 bytes): {source}")
    if size > max_bytes:
        raise DataError(
            f"data file {source} is {size} bytes, over the limit of {max_bytes} bytes; split it or raise --max-bytes"
        )
    return _parse_file(path, source), _sha256_of(path, source)


def _sha256_of(path: Path, source: str) -> str:
    from anomaly_mlops.model.artifacts import sha256_file

    try:
        return sha256_file(path)
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc.strerror}") from exc


def _parse_file(path: Path, source: str) -> pd.DataFrame:
    name = source.lower()
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise DataError(f"cannot read {source}: {exc.strerror}") from exc
    try:
        if name.endswith((".parquet", ".pq")) or magic == b"PAR1":  # extension-less: e.g. KFP artifacts
            import pyarrow.parquet as pq

            _check_unique_columns(pq.read_schema(path).names, source)
            return pd.read_parquet(path)
        if name.endswith((".csv", ".txt")):
            return _csv(path, source, gzipped=False)
        if name.endswith(".csv.gz") or magic[:2] == b"\x1f\x8b":
            return _csv(path, source, gzipped=True)
    except DataError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"data file has no columns or rows: {source}") from exc
    except MemoryError as exc:
        raise DataError(f"{source} does not fit in memory; lower --max-bytes or split the file") from exc
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt input
        reason = " ".join(str(exc).split())  # pyarrow's messages span lines; the error is one
        raise DataError(f"could not parse {source}: {type(exc).__name__}: {reason}"[:500]) from exc
    raise DataError(f"unknown data format for {source}: use .csv, .csv.gz or .parquet")


def _csv(path: Path, source: str, gzipped: bool) -> pd.DataFrame:
    """A CSV file; a header naming a column twice is refused (pandas would rename the second
    'name.1' and read the first as the metric, whichever was meant; Parquet alike)."""
    opener = gzip.open if gzipped else open
    with opener(path, "rt", newline="", encoding="utf-8-sig", errors="replace") as handle:
        _check_unique_columns(next(csv.reader(handle), []), source)
    return pd.read_csv(path, compression="gzip" if gzipped else None)


def _check_unique_columns(names: list[str], source: str) -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"{source} names columns more than once: {repeated}; which one holds the metric is ambiguous")


def _download_s3(uri: str, local: Path, max_bytes: int, s3_env: dict | None) -> None:
    from anomaly_mlops.store.s3 import S3Settings, describe_client_error, parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    settings = S3Settings.from_env(s3_env, need_bucket=False)
    client = settings.client()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] == 0:
            raise DataError(f"data file is empty (0 bytes): {uri}")
        if head["ContentLength"] > max_bytes:
            raise DataError(f"{uri} is {head['ContentLength']} bytes, over the limit of {max_bytes}")
        client.download_file(bucket, key, str(local))
    except DataError:
        raise
    except Exception as exc:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
            raise DataError(f"data object not found: {uri}") from exc
        raise describe_client_error(exc, f"read {uri}", settings) from exc


def frame_to_dataset(
    frame: pd.DataFrame,
    schema: FeatureSchema,
    *,
    source: str,
    sha256: str | None = None,
    require_labels: bool = False,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> Dataset:
    """Check a frame against the schema and return the float64 matrix in schema order."""
    if len(frame) == 0:
        raise DataError(f"{source} has a header but no rows")
    if len(frame) > max_rows:
        raise DataError(f"{source} has {len(frame)} rows, over the limit of {max_rows}; raise --max-rows")
    missing = [f for f in schema.features if f not in frame.columns]
    if missing:
        raise DataError(
            f"{source} is missing feature columns {missing}; it has {list(map(str, frame.columns))}; "
            f"the schema expects {list(schema.features)}"
        )
    known = {*schema.features, TIMESTAMP_COLUMN, ENTITY_COLUMN, LABEL_COLUMN, ANOMALY_KIND_COLUMN}
    ignored = [str(c) for c in frame.columns if c not in known]
    if ignored:
        label_like = [c for c in ignored if "label" in c.lower() or "anomal" in c.lower()]
        (log.warning if label_like else log.info)(
            "%s: ignoring %d column(s) not in the schema: %s%s", source, len(ignored), ", ".join(ignored[:20]),
            f"; labels are read from {LABEL_COLUMN!r} only" if label_like else "",
        )  # fmt: skip
    columns = []
    for name in schema.features:
        column = frame[name]
        if pd.api.types.is_datetime64_any_dtype(column) or pd.api.types.is_timedelta64_dtype(column):
            raise DataError(
                f"{source}: column {name!r} holds {column.dtype} values, not a metric; "
                "timestamps and durations cannot be features"
            )
        numeric = pd.to_numeric(column, errors="coerce")
        bad = numeric.isna() & column.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{source}: column {name!r} has non-numeric values, first at row {row + 1}: {column.iloc[row]!r}"
            )
        columns.append(numeric.to_numpy(dtype=np.float64))
    X = np.column_stack(columns)
    finite = np.isfinite(X)
    if not finite.all():
        problems = []
        for j, name in enumerate(schema.features):
            bad_rows = np.flatnonzero(~finite[:, j])
            if bad_rows.size:
                kinds = "NaN/missing" if np.isnan(X[bad_rows, j]).all() else "NaN or inf"
                problems.append(f"{name}: {bad_rows.size} {kinds} (first at row {bad_rows[0] + 1})")
        raise DataError(f"{source} has non-finite values: " + "; ".join(problems))
    huge = np.abs(X) > MAX_METRIC_MAGNITUDE
    if huge.any():
        row, j = (int(i) for i in np.argwhere(huge)[0])
        raise DataError(
            f"{source}: column {schema.features[j]!r} holds {X[row, j]:g} at row {row + 1}; metrics must lie within "
            f"±{MAX_METRIC_MAGNITUDE:g} (the scaler and the window columns square them, and beyond that they overflow)"
        )

    y = None
    if LABEL_COLUMN in frame.columns:
        labels = pd.to_numeric(frame[LABEL_COLUMN], errors="coerce").to_numpy()
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{source}: column {LABEL_COLUMN!r} must hold only 0 and 1")
        y = labels.astype(np.int8)
    elif require_labels:
        raise DataError(f"{source} has no {LABEL_COLUMN!r} column; validation needs labelled data")
    if sha256 is None:
        sha256 = hashlib.sha256(np.ascontiguousarray(X).tobytes()).hexdigest()
    entities = frame[ENTITY_COLUMN].astype(str).to_numpy() if ENTITY_COLUMN in frame.columns else None
    return Dataset(
        X=X,
        y=y,
        schema=schema,
        sha256=sha256,
        source=source,
        entities=entities,
        sample_interval_s=_sample_interval(frame, entities, source),
    )


def _sample_interval(frame: pd.DataFrame, entities: np.ndarray | None, source: str) -> float | None:
    """Median step between an entity's consecutive timestamps; rows must be in time order
    per entity, since time-series features read them in order."""
    if TIMESTAMP_COLUMN not in frame.columns or len(frame) < 2:
        return None
    stamps = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True, errors="coerce")
    if stamps.isna().any():
        return None
    seconds = (stamps - pd.Timestamp(0, tz="UTC")) / pd.Timedelta("1s")
    keys = pd.Series(entities if entities is not None else np.zeros(len(frame)))
    steps = seconds.groupby(keys.to_numpy()).diff().dropna().to_numpy()
    if (steps < 0).any():
        raise DataError(
            f"{source}: rows are not in time order within each entity; sort by {ENTITY_COLUMN} and {TIMESTAMP_COLUMN}"
        )
    positive = steps[steps > 0]
    return float(np.median(positive)) if positive.size else None


def load_dataset(
    source: str,
    schema: FeatureSchema | None = None,
    *,
    require_labels: bool = False,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Dataset:
    schema = schema or FeatureSchema()
    frame, digest = read_table(source, max_bytes=max_bytes)
    return frame_to_dataset(
        frame, schema, source=source, sha256=digest, require_labels=require_labels, max_rows=max_rows
    )


# --------------------------------------------------------------------------- labels


def apply_labels(
    frame: pd.DataFrame,
    firing: dict[str, np.ndarray] | None = None,
    grid: np.ndarray | None = None,
    incidents: pd.DataFrame | None = None,
    alerts_report: dict | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Label rows anomalous inside alert firing intervals (``firing``: entity -> mask over
    ``grid``; entity "" = every entity) and inside incident windows (columns start, end and
    optionally entity; end exclusive). Returns the frame and a report of what each source
    labelled (``alerts_report``: what the alert query found). When no source labelled a single
    row there is no ``is_anomaly`` column: the data is unlabelled, and says so, rather than
    all-normal."""
    reports: list[dict] = []
    epoch = pd.Timestamp(0, tz="UTC")
    stamps = ((pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True) - epoch) // pd.Timedelta("1s")).to_numpy()
    entities = (
        frame[ENTITY_COLUMN].astype(str).to_numpy() if ENTITY_COLUMN in frame.columns else np.full(len(frame), "")
    )
    labelled = np.zeros(len(frame), dtype=bool)
    if firing is not None:
        from_alerts = np.zeros(len(frame), dtype=bool)
        for entity, mask in firing.items():
            rows = np.isin(stamps, grid[mask]) & ((entities == entity) if entity else True)
            from_alerts |= rows
        reports.append({"source": "alerts", **(alerts_report or {}), "rows": int(from_alerts.sum())})
        labelled |= from_alerts
    if incidents is not None:
        missing = [c for c in ("start", "end") if c not in incidents.columns]
        if missing:
            raise DataError(f"the incident windows lack columns {missing}; expected start, end and optionally entity")
        starts = pd.to_datetime(incidents["start"], utc=True, errors="coerce")
        ends = pd.to_datetime(incidents["end"], utc=True, errors="coerce")
        if starts.isna().any() or ends.isna().any() or (ends <= starts).any():
            raise DataError("the incident windows need parseable start < end times on every line")
        from_incidents = np.zeros(len(frame), dtype=bool)
        for i in range(len(incidents)):
            window = (stamps >= starts.iloc[i].timestamp()) & (stamps < ends.iloc[i].timestamp())
            entity = (
                str(incidents["entity"].iloc[i])
                if "entity" in incidents.columns and pd.notna(incidents["entity"].iloc[i])
                else ""
            )
            from_incidents |= window & ((entities == entity) if entity else True)
        reports.append({"source": "incidents", "intervals": len(incidents), "rows": int(from_incidents.sum())})
        labelled |= from_incidents
    report = {"sources": reports, "rows": len(frame), "anomalous_rows": int(labelled.sum())}
    if labelled.any():
        frame = frame.assign(**{LABEL_COLUMN: labelled.astype(np.int8)})
        report["labelled"] = True
    else:
        report["labelled"] = False
        report["note"] = "no source labelled any row: the data is unlabelled (validation gates on what it can measure)"
    for one in reports:
        log.info("labels from %s: %s intervals, %s rows", one["source"], one.get("intervals"), one.get("rows"))
    if not report["labelled"]:
        log.warning(report["note"])
    return frame, report
