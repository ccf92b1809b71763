"""The data step: read or generate operational metrics, check them against the feature
schema, split them in time into train and holdout, and write both as Parquet.

Sources: a CSV/Parquet file (local path or s3://) or the synthetic generator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError
from .params import DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS
from .schema import DEFAULT_FEATURES, ENTITY_COLUMN, LABEL_COLUMN, TIMESTAMP_COLUMN, FeatureSchema

log = logging.getLogger(__name__)

ANOMALY_KINDS = ("spike", "dip", "level_shift", "slow_leak", "stuck", "contention")


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


# --------------------------------------------------------------------------- synthetic


def daily_load(minutes: int) -> np.ndarray:
    """0-1 load, one value a minute: busy in the afternoon, quiet at night; weekends quieter."""
    t = np.arange(minutes)
    return 0.5 * (1 - np.cos(2 * np.pi * (t % 1440) / 1440 - np.pi / 6)) * np.where((t // 1440) % 7 >= 5, 0.7, 1.0)


def generate_synthetic(
    rows: int = 20_160,
    seed: int = 42,
    anomaly_rate: float = 0.03,
    start: str = "2026-01-05T00:00:00Z",
) -> pd.DataFrame:
    """Node metrics at one row a minute with daily seasonality and labelled anomalies.

    Anomalies are events of several minutes of one of ANOMALY_KINDS, placed without
    overlap until about ``anomaly_rate`` of the rows are labelled. Same seed, same frame.
    """
    if rows < 60:
        raise DataError(f"synthetic data needs at least 60 rows, got {rows}")
    if not 0.0 <= anomaly_rate < 0.5:
        raise DataError(f"anomaly_rate must be in [0, 0.5), got {anomaly_rate}")
    rng = np.random.default_rng(seed)
    load = daily_load(rows)

    cpu = 20 + 45 * load + rng.normal(0, 3.0, rows)
    memory = 50 + 12 * load + np.cumsum(rng.normal(0, 0.05, rows)).clip(-5, 5) + rng.normal(0, 1.0, rows)
    disk = 15 + 25 * load + rng.gamma(2.0, 2.0, rows)
    rx = 40 + 80 * load + 0.5 * (cpu - 40) + rng.normal(0, 5.0, rows)
    tx = 0.6 * rx + rng.normal(0, 3.0, rows)
    restarts = rng.poisson(0.005, rows).astype(float)
    frame = {
        "cpu_usage_pct": cpu,
        "memory_usage_pct": memory,
        "disk_io_mbps": disk,
        "network_rx_mbps": rx,
        "network_tx_mbps": tx,
        "restart_count": restarts,
    }
    labels = np.zeros(rows, dtype=np.int8)
    kinds = np.full(rows, "", dtype=object)

    target = int(anomaly_rate * rows)
    attempts = 0
    while labels.sum() < target and attempts < 10_000:
        attempts += 1
        kind = ANOMALY_KINDS[rng.integers(len(ANOMALY_KINDS))]
        length = {
            "spike": rng.integers(1, 6),
            "dip": rng.integers(5, 16),
            "level_shift": rng.integers(30, 91),
            "slow_leak": rng.integers(60, 181),
            "stuck": rng.integers(30, 61),
            "contention": rng.integers(10, 31),
        }[kind]
        length = int(min(length, max(1, target - labels.sum()) + 5, rows // 10))
        begin = int(rng.integers(0, rows - length))
        window = slice(begin, begin + length)
        # Keep one normal minute on each side so events stay distinct.
        if labels[max(0, begin - 1) : begin + length + 1].any():
            continue
        _inject(frame, kind, window, length, rng)
        labels[window] = 1
        kinds[window] = kind

    for name in ("cpu_usage_pct", "memory_usage_pct"):
        frame[name] = np.clip(frame[name], 0, 100)
    for name in ("disk_io_mbps", "network_rx_mbps", "network_tx_mbps", "restart_count"):
        frame[name] = np.clip(frame[name], 0, None)

    df = pd.DataFrame(frame)
    df.insert(0, TIMESTAMP_COLUMN, pd.date_range(start=start, periods=rows, freq="min"))
    df[LABEL_COLUMN] = labels
    df["anomaly_kind"] = kinds.astype(str)
    return df


def _inject(frame: dict, kind: str, window: slice, length: int, rng: np.random.Generator) -> None:
    if kind == "spike":
        name = ("cpu_usage_pct", "disk_io_mbps", "network_rx_mbps")[rng.integers(3)]
        frame[name][window] += rng.uniform(3, 6) * frame[name].std()
    elif kind == "dip":
        frame["network_rx_mbps"][window] *= rng.uniform(0.0, 0.1)
        frame["network_tx_mbps"][window] *= rng.uniform(0.0, 0.1)
        frame["cpu_usage_pct"][window] *= 0.3
    elif kind == "level_shift":
        frame["memory_usage_pct"][window] += rng.uniform(15, 30)
    elif kind == "slow_leak":
        frame["memory_usage_pct"][window] += np.linspace(0, rng.uniform(25, 40), length)
    elif kind == "stuck":
        name = ("cpu_usage_pct", "network_rx_mbps")[rng.integers(2)]
        frame[name][window] = frame[name][window.start]
        # A stuck exporter also reports zero traffic on its twin metric.
        frame["network_tx_mbps"][window] = 0.0
    elif kind == "contention":
        frame["cpu_usage_pct"][window] += rng.uniform(30, 50)
        frame["disk_io_mbps"][window] += rng.uniform(40, 80)
        frame["network_rx_mbps"][window] *= 0.5
        frame["restart_count"][window] += rng.poisson(1.0, length)
    else:  # pragma: no cover - ANOMALY_KINDS is closed
        raise ValueError(kind)


# --------------------------------------------------------------------------- loading


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
    from .artifacts import sha256_file

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
            return pd.read_parquet(path)
        if name.endswith((".csv", ".txt")):
            return pd.read_csv(path, compression=None)
        if name.endswith(".csv.gz") or magic[:2] == b"\x1f\x8b":
            return pd.read_csv(path, compression="gzip")
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"data file has no columns or rows: {source}") from exc
    except MemoryError as exc:
        raise DataError(f"{source} does not fit in memory; lower --max-bytes or split the file") from exc
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt input
        raise DataError(f"could not parse {source}: {type(exc).__name__}: {exc}"[:500]) from exc
    raise DataError(f"unknown data format for {source}: use .csv, .csv.gz or .parquet")


def _download_s3(uri: str, local: Path, max_bytes: int, s3_env: dict | None) -> None:
    from .storage import S3Settings, describe_client_error, parse_s3_uri

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


# --------------------------------------------------------------------------- the step


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
    schema = schema or FeatureSchema()
    if prometheus is not None:  # a prometheus.PrometheusSource: live metrics, labels from alert history
        from .prometheus import fetch_prometheus
        from .redact import redact

        frame, schema, labels_report = fetch_prometheus(prometheus, schema)
        source = f"prometheus {redact(prometheus.url)}"
    if frame is not None:
        log.info("using %d rows from %s", len(frame), source)
    elif source == "synthetic" and schema.name == "self-healing-platform":
        from .self_healing import generate_platform_synthetic

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
        if cut < 10 or len(frame) - cut < 10:
            raise DataError(
                f"{len(frame)} rows are too few to split {holdout_fraction:.0%} into a holdout; need 10+ on each side"
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


def _kept_columns(frame: pd.DataFrame, schema: FeatureSchema) -> list[str]:
    return [
        c
        for c in (TIMESTAMP_COLUMN, ENTITY_COLUMN, *schema.features, LABEL_COLUMN, "anomaly_kind")
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
