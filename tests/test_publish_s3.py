"""Publish and download against a real S3-protocol server (moto server mode on loopback)."""

import logging
import uuid

import pytest

from anomaly_mlops.adapters.local_services import free_port
from anomaly_mlops.errors import ArtifactError, ConfigError, StorageError, VersionConflictError
from anomaly_mlops.model.artifacts import MANIFEST_FILE, load_model_dir, write_manifest
from anomaly_mlops.store.releases import download_model, publish
from anomaly_mlops.store.s3 import S3Settings


def keys(raw, bucket, prefix):
    return sorted(o["Key"] for o in raw.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def unique_name():
    return f"m-{uuid.uuid4().hex[:8]}"


def test_publish_then_download_round_trip(model_dir, settings, raw, tmp_path):
    name = unique_name()
    result = publish(model_dir, name, "v1", settings)
    assert result.status == "published"
    assert result.uri == f"s3://{settings.bucket}/{name}/v1/"
    assert keys(raw, settings.bucket, f"{name}/v1/") == [
        f"{name}/v1/{MANIFEST_FILE}",
        f"{name}/v1/forest.npz",
        f"{name}/v1/metadata.json",
        f"{name}/v1/model.joblib",
        f"{name}/v1/model.skops",
    ]
    # The claim lies beside the version, outside the prefix the storage initializer downloads.
    assert keys(raw, settings.bucket, f"{name}/.claims/") == [f"{name}/.claims/v1.json"]
    local = download_model(result.uri, tmp_path / "dl", settings)
    assert load_model_dir(local).threshold == load_model_dir(model_dir).threshold


def test_default_version_is_time_and_digest(model_dir, settings):
    result = publish(model_dir, unique_name(), settings=settings)
    assert result.version.startswith("v") and result.version[-8:] == result.manifest_sha256[:8]


def test_republishing_identical_content_is_a_no_op(model_dir, settings, raw):
    name = unique_name()
    publish(model_dir, name, "v1", settings)
    before = raw.head_object(Bucket=settings.bucket, Key=f"{name}/v1/model.joblib")["LastModified"]
    again = publish(model_dir, name, "v1", settings)
    assert again.status == "unchanged"
    assert raw.head_object(Bucket=settings.bucket, Key=f"{name}/v1/model.joblib")["LastModified"] == before


def test_released_version_is_never_overwritten(model_dir, copy_model, settings, raw):
    name = unique_name()
    publish(model_dir, name, "v1", settings)
    original = raw.get_object(Bucket=settings.bucket, Key=f"{name}/v1/{MANIFEST_FILE}")["Body"].read()
    other = copy_model()
    (other / "metadata.json").write_text(
        (other / "metadata.json").read_text().replace('"threshold"', '"note": 1, "threshold"')
    )
    write_manifest(other)
    with pytest.raises(VersionConflictError, match="already released with different content"):
        publish(other, name, "v1", settings)
    assert raw.get_object(Bucket=settings.bucket, Key=f"{name}/v1/{MANIFEST_FILE}")["Body"].read() == original
    assert publish(other, name, "v2", settings).status == "published"


def _failing_client(settings, monkeypatch, should_fail):
    """Clients whose requests fail where should_fail(operation, params) says so, as a dropped
    connection would; everything else reaches the real server."""
    real_client = S3Settings.client

    def client(self):
        c = real_client(self)

        def hook(params, model, **_):
            if should_fail(model.name, params):
                raise ConnectionResetError("simulated connection drop")

        c.meta.events.register("before-call.s3", hook)
        return c

    monkeypatch.setattr(S3Settings, "client", client)


def test_interrupted_upload_leaves_no_released_version(model_dir, settings, raw, monkeypatch, tmp_path):
    name = unique_name()
    fail = {"on": True}
    _failing_client(
        settings,
        monkeypatch,
        lambda op, p: (
            fail["on"]
            and op in ("PutObject", "CreateMultipartUpload")
            and str(p.get("url_path", "")).endswith("model.joblib")
        ),
    )
    with pytest.raises(StorageError):
        publish(model_dir, name, "v1", settings)
    assert f"{name}/v1/{MANIFEST_FILE}" not in keys(raw, settings.bucket, name)
    with pytest.raises(ArtifactError, match="not released"):
        download_model(f"s3://{settings.bucket}/{name}/v1/", tmp_path / "dl", settings)
    fail["on"] = False
    assert publish(model_dir, name, "v1", settings).status == "published"


def test_racing_publisher_cannot_overwrite_the_manifest(model_dir, settings, raw, monkeypatch):
    """Another publisher releases between our existence check and our manifest write."""
    name = unique_name()
    key = f"{name}/v1/{MANIFEST_FILE}"
    real_client = S3Settings.client

    def client(self):
        c = real_client(self)

        def sneak_in(params, model, **_):
            if model.name == "PutObject" and str(params.get("url_path", "")).endswith(MANIFEST_FILE):
                raw.put_object(Bucket=settings.bucket, Key=key, Body=b"0" * 64 + b"  model.joblib\n")

        c.meta.events.register("before-call.s3", sneak_in)
        return c

    monkeypatch.setattr(S3Settings, "client", client)
    with pytest.raises(VersionConflictError):
        publish(model_dir, name, "v1", settings)
    assert raw.get_object(Bucket=settings.bucket, Key=key)["Body"].read().startswith(b"0" * 64)


def test_tampered_object_on_s3_is_refused_on_download(model_dir, settings, raw, tmp_path):
    name = unique_name()
    result = publish(model_dir, name, "v1", settings)
    raw.put_object(Bucket=settings.bucket, Key=f"{name}/v1/model.joblib", Body=b"not the model")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        download_model(result.uri, tmp_path / "dl", settings)
    assert not (tmp_path / "dl").exists() and not (tmp_path / "dl.download").exists()


def test_unreachable_s3_is_a_clear_error(model_dir, s3_env):
    env = {**s3_env, "AWS_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    settings = S3Settings.from_env(env)
    settings = S3Settings(**{**settings.__dict__, "max_attempts": 2, "connect_timeout_s": 1.0})
    with pytest.raises(StorageError, match="cannot reach S3 .*endpoint=http://127.0.0.1"):
        publish(model_dir, unique_name(), "v1", settings)


def test_missing_bucket_is_named(model_dir, s3_env):
    settings = S3Settings.from_env({**s3_env, "AWS_S3_BUCKET": "no-such-bucket"})
    with pytest.raises(StorageError, match="NoSuchBucket|404"):
        publish(model_dir, unique_name(), "v1", settings)


def test_missing_secret_keys_are_listed_and_values_never_shown(caplog):
    with pytest.raises(ConfigError, match="missing AWS_SECRET_ACCESS_KEY, AWS_S3_BUCKET"):
        S3Settings.from_env({"AWS_ACCESS_KEY_ID": "AKIA-SECRET-VALUE"})
    caplog.set_level(logging.DEBUG)
    settings = S3Settings.from_env(
        {
            "AWS_ACCESS_KEY_ID": "AKIA-SECRET-VALUE",
            "AWS_SECRET_ACCESS_KEY": "s3cr3t-VALUE",
            "AWS_S3_BUCKET": "b",
            "AWS_S3_ENDPOINT": "http://127.0.0.1:9",
        }
    )
    text = repr(settings) + settings.describe()
    assert "s3cr3t-VALUE" not in text and "AKIA-SECRET-VALUE" not in text
    with pytest.raises(ConfigError, match="must start with http"):
        S3Settings.from_env(
            {
                "AWS_ACCESS_KEY_ID": "a",
                "AWS_SECRET_ACCESS_KEY": "b",
                "AWS_S3_BUCKET": "c",
                "AWS_S3_ENDPOINT": "minio:9000",
            }
        )


@pytest.mark.parametrize("version", ["V1", "a/b", "-x", "..", "x" * 70])
def test_bad_version_names_are_refused(model_dir, settings, version):
    with pytest.raises(ConfigError, match="not allowed"):
        publish(model_dir, "m", version, settings)


def test_incomplete_local_model_is_not_published(copy_model, settings):
    model = copy_model()
    (model / MANIFEST_FILE).unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        publish(model, unique_name(), "v1", settings)


def test_a_publisher_that_lost_its_claim_never_writes_under_the_version_again(
    model_dir, copy_model, settings, raw, monkeypatch
):
    """Paused after its first file, this publisher looks dead: an operator deletes its claim
    (as the conflict message advises) and another content is released as v1. Resumed, it
    writes nothing more and says why; the released files are the other content's."""
    from anomaly_mlops.store import releases

    name = unique_name()
    other = copy_model()
    (other / "metadata.json").write_text(
        (other / "metadata.json").read_text().replace('"threshold"', '"note": 1, "threshold"')
    )
    write_manifest(other)
    real_upload, uploads = releases._upload, []

    def paused_upload(target, file):
        uploads.append((target.model_dir, file))
        size = real_upload(target, file)
        if len(uploads) == 1:  # the pause: the claim deleted, other content released meanwhile
            raw.delete_object(Bucket=settings.bucket, Key=releases.claim_key(f"{name}/v1/"))
            assert publish(other, name, "v1", settings).status == "published"
        return size

    monkeypatch.setattr(releases, "_upload", paused_upload)
    with pytest.raises(VersionConflictError, match="already released with different content"):
        publish(model_dir, name, "v1", settings)
    mine = [file for folder, file in uploads if folder == model_dir]
    assert len(mine) == 1  # nothing written after the pause
    for file in ("forest.npz", "metadata.json", "model.joblib", "model.skops", MANIFEST_FILE):
        body = raw.get_object(Bucket=settings.bucket, Key=f"{name}/v1/{file}")["Body"].read()
        assert body == (other / file).read_bytes(), file


def test_a_publisher_whose_claim_was_deleted_stops_before_its_next_write(model_dir, settings, raw, monkeypatch):
    from anomaly_mlops.store import releases

    name = unique_name()
    real_upload, uploads = releases._upload, []

    def upload_then_lose_the_claim(target, file):
        uploads.append(file)
        size = real_upload(target, file)
        raw.delete_object(Bucket=settings.bucket, Key=releases.claim_key(f"{name}/v1/"))
        return size

    monkeypatch.setattr(releases, "_upload", upload_then_lose_the_claim)
    with pytest.raises(VersionConflictError, match="claim .* was deleted or replaced while it uploaded"):
        publish(model_dir, name, "v1", settings)
    assert len(uploads) == 1
    assert f"{name}/v1/{MANIFEST_FILE}" not in keys(raw, settings.bucket, name)


def test_a_first_release_whose_manifest_write_answered_500_reports_published(model_dir, settings, raw, monkeypatch):
    """The store wrote the manifest but answered 500; the client's retry then finds it there
    (412). The version was released by this publish: "published", not "unchanged"."""
    from botocore.awsrequest import AWSResponse

    name = unique_name()
    real_client = S3Settings.client
    answered = []

    class Body:
        def stream(self):
            yield b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>"

    def client(self):
        c = real_client(self)

        def written_then_500(request, **_):
            if request.method == "PUT" and request.url.split("?")[0].endswith(MANIFEST_FILE) and not answered:
                answered.append(500)
                raw.put_object(Bucket=settings.bucket, Key=f"{name}/v1/{MANIFEST_FILE}", Body=request.body)
                return AWSResponse(request.url, 500, {}, Body())
            return None

        c.meta.events.register("before-send.s3.PutObject", written_then_500)
        return c

    monkeypatch.setattr(S3Settings, "client", client)
    result = publish(model_dir, name, "v1", settings)
    assert answered == [500]
    assert result.status == "published"
    assert (
        raw.get_object(Bucket=settings.bucket, Key=f"{name}/v1/{MANIFEST_FILE}")["Body"].read()
        == (model_dir / MANIFEST_FILE).read_bytes()
    )
