import re

import numpy as np
import pandas as pd
import pytest

from anomaly_mlops.errors import DataError
from anomaly_mlops.model.schema import DEFAULT_FEATURES, FeatureSchema
from anomaly_mlops.sources.files import frame_to_dataset, load_dataset
from anomaly_mlops.sources.synthetic import ANOMALY_KINDS, generate_synthetic
from anomaly_mlops.steps.data import prepare_data


def test_synthetic_is_deterministic_by_seed():
    a = generate_synthetic(rows=3000, seed=1)
    b = generate_synthetic(rows=3000, seed=1)
    c = generate_synthetic(rows=3000, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["cpu_usage_pct"], c["cpu_usage_pct"])


def test_synthetic_has_every_anomaly_kind_and_the_asked_rate():
    frame = generate_synthetic(rows=20_160, seed=3, anomaly_rate=0.05)
    kinds = set(frame.loc[frame.is_anomaly == 1, "anomaly_kind"])
    assert kinds == set(ANOMALY_KINDS)
    assert 0.045 <= frame.is_anomaly.mean() <= 0.06
    assert (frame.loc[frame.is_anomaly == 0, "anomaly_kind"] == "").all()
    assert frame[list(DEFAULT_FEATURES)].notna().all().all()
    assert frame.cpu_usage_pct.between(0, 100).all()


def test_synthetic_has_daily_seasonality():
    frame = generate_synthetic(rows=1440 * 7, seed=4, anomaly_rate=0.0)
    hourly = frame.groupby(frame.timestamp.dt.hour)["cpu_usage_pct"].mean()
    # Afternoon load clearly above the night's.
    assert hourly.loc[13:17].mean() > hourly.loc[0:4].mean() + 20


def test_prepare_splits_in_time_and_writes_schema(tmp_path):
    result = prepare_data(tmp_path, rows=2000, seed=5, holdout_fraction=0.25)
    train = pd.read_parquet(result.train_path)
    holdout = pd.read_parquet(result.holdout_path)
    assert (len(train), len(holdout)) == (1500, 500)
    assert train.timestamp.max() < holdout.timestamp.min()
    assert (tmp_path / "schema.json").exists()


def _frame(rows=50):
    return generate_synthetic(rows=max(rows, 60), seed=0).head(rows)


def test_missing_columns_are_named():
    frame = _frame().drop(columns=["disk_io_mbps", "restart_count"])
    with pytest.raises(DataError, match=r"missing feature columns \['disk_io_mbps', 'restart_count'\]"):
        frame_to_dataset(frame, FeatureSchema(), source="x.csv")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_located(bad):
    frame = _frame()
    frame.loc[7, "memory_usage_pct"] = bad
    with pytest.raises(DataError, match=r"memory_usage_pct: 1 .* \(first at row 8\)"):
        frame_to_dataset(frame, FeatureSchema(), source="x.csv")


@pytest.mark.parametrize("huge", [1e200, -1e151])
def test_values_whose_squares_overflow_are_located(huge):
    """train's scaler and window columns square the metrics: 1e200 was a scikit-learn traceback."""
    frame = _frame()
    frame.loc[11, "network_rx_mbps"] = huge
    with pytest.raises(
        DataError, match=re.escape(f"'network_rx_mbps' holds {huge:g} at row 12; metrics must lie within")
    ):
        frame_to_dataset(frame, FeatureSchema(), source="x.csv")
    frame.loc[11, "network_rx_mbps"] = 1e150  # the largest allowed: its square is finite
    assert frame_to_dataset(frame, FeatureSchema(), source="x.csv").X[11, 3] == 1e150


def test_columns_outside_the_schema_are_named_and_a_label_like_one_warned_of(caplog):
    """A 'label' column is not the labels (is_anomaly): said, not silently dropped."""
    import logging

    frame = _frame().drop(columns=["is_anomaly"], errors="ignore").assign(label=0, host_name="a")
    with caplog.at_level(logging.INFO, logger="anomaly_mlops.sources.files"):
        dataset = frame_to_dataset(frame, FeatureSchema(), source="x.csv")
    assert dataset.y is None
    (record,) = [r for r in caplog.records if "ignoring" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "x.csv: ignoring 2 column(s) not in the schema: label, host_name; labels are read from 'is_anomaly' only"
    )


def test_non_numeric_values_are_located():
    frame = _frame().astype({"cpu_usage_pct": object})
    frame.loc[3, "cpu_usage_pct"] = "high"
    with pytest.raises(DataError, match=r"'cpu_usage_pct' has non-numeric values, first at row 4: 'high'"):
        frame_to_dataset(frame, FeatureSchema(), source="x.csv")


def test_labels_must_be_binary():
    frame = _frame()
    frame.loc[0, "is_anomaly"] = 2
    with pytest.raises(DataError, match="must hold only 0 and 1"):
        frame_to_dataset(frame, FeatureSchema(), source="x.csv")


def test_empty_file_header_only_and_unknown_format(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty \(0 bytes\)"):
        load_dataset(str(empty))
    header = tmp_path / "header.csv"
    header.write_text(",".join(DEFAULT_FEATURES) + "\n")
    with pytest.raises(DataError, match="header but no rows"):
        load_dataset(str(header))
    other = tmp_path / "data.xlsx"
    other.write_bytes(b"PK")
    with pytest.raises(DataError, match="unknown data format"):
        load_dataset(str(other))
    with pytest.raises(DataError, match="not found"):
        load_dataset(str(tmp_path / "nope.csv"))


def test_corrupt_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="could not parse"):
        load_dataset(str(path))


def test_size_and_row_limits(tmp_path):
    path = tmp_path / "m.csv"
    _frame(100).to_csv(path, index=False)
    with pytest.raises(DataError, match="over the limit of 100 bytes"):
        load_dataset(str(path), max_bytes=100)
    with pytest.raises(DataError, match="100 rows, over the limit of 99"):
        load_dataset(str(path), max_rows=99)


def test_csv_gz_and_parquet_load_identically(tmp_path):
    frame = _frame(200)
    frame.to_csv(tmp_path / "m.csv.gz", index=False)
    frame.to_parquet(tmp_path / "m.parquet", index=False)
    a = load_dataset(str(tmp_path / "m.csv.gz"))
    b = load_dataset(str(tmp_path / "m.parquet"))
    np.testing.assert_allclose(a.X, b.X)
    assert a.X.shape == (200, len(DEFAULT_FEATURES))
    assert len(a.sha256) == 64 and a.sha256 != b.sha256  # digest of the file bytes


def test_format_is_sniffed_without_an_extension(tmp_path):
    _frame(30).to_parquet(tmp_path / "artifact", index=False)
    assert load_dataset(str(tmp_path / "artifact")).n_rows == 30


def test_custom_schema_orders_columns(tmp_path):
    frame = pd.DataFrame({"b": [1.0, 2.0], "a": [3.0, 4.0], "extra": ["x", "y"]})
    ds = frame_to_dataset(frame, FeatureSchema(("a", "b")), source="mem")
    np.testing.assert_array_equal(ds.X, [[3.0, 1.0], [4.0, 2.0]])


@pytest.mark.parametrize("name", ["m.csv", "m.csv.gz", "m.parquet"])
def test_a_file_naming_a_column_twice_is_refused(tmp_path, name):
    """pandas reads a CSV's second as 'cpu_usage_pct.1': with every schema column present the
    first would be taken as the metric, silently, whichever was meant; pyarrow refused a
    Parquet file's with a message of many lines."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = _frame(120)
    path = tmp_path / name
    if name.endswith(".parquet"):
        columns = [*frame.to_dict("series").values(), frame["cpu_usage_pct"] * 2]
        pq.write_table(pa.table(columns, names=[*frame.columns, "cpu_usage_pct"]), path)
    else:
        frame.insert(1, "copy", frame["cpu_usage_pct"] * 2)
        text = frame.to_csv(index=False).replace("copy", "cpu_usage_pct", 1)
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    with pytest.raises(DataError, match=r"names columns more than once: \['cpu_usage_pct'\]; which one holds"):
        load_dataset(str(path))


def test_schema_rejects_duplicates_and_bad_names():
    with pytest.raises(DataError, match="duplicate"):
        FeatureSchema(("a", "a"))
    with pytest.raises(DataError, match="invalid feature names"):
        FeatureSchema(("ok", "bad name"))
    assert FeatureSchema.parse("x, y").features == ("x", "y")


def test_load_from_s3(s3_env, tmp_path):
    import boto3

    frame = _frame(120)
    frame.to_parquet(tmp_path / "m.parquet", index=False)
    client = boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_S3_ENDPOINT"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    client.upload_file(str(tmp_path / "m.parquet"), s3_env["AWS_S3_BUCKET"], "data/m.parquet")
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, s3_env):
        ds = load_dataset(f"s3://{s3_env['AWS_S3_BUCKET']}/data/m.parquet")
        assert ds.n_rows == 120
        with pytest.raises(DataError, match="data object not found"):
            load_dataset(f"s3://{s3_env['AWS_S3_BUCKET']}/data/absent.parquet")
