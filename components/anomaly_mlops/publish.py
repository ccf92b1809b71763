"""The publish step: put a verified model directory under an immutable S3 prefix
``<model>/<version>/``, and the matching download-and-verify used by the predictor.

Rules:
- every object is uploaded with a SHA-256 checksum S3 verifies on receipt, then checked
  again by HEAD before the manifest goes up;
- the manifest is written last and only if absent (``If-None-Match: *``), so a version
  without a manifest is incomplete and never served, and two racing publishers cannot
  both release;
- re-publishing identical content is a no-op; different content under a released version
  is refused (VersionConflictError).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .artifacts import MANIFEST_FILE, METADATA_FILE, parse_manifest, verify_model_dir
from .errors import ArtifactError, ConfigError, StorageError, VersionConflictError
from .storage import S3Settings, describe_client_error, parse_s3_uri

log = logging.getLogger(__name__)

_SEGMENT = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")
# Files above this go up in parts; a failed part aborts the whole multipart upload.
MULTIPART_THRESHOLD = 8 * 1024 * 1024


@dataclass
class PublishResult:
    uri: str
    bucket: str
    prefix: str
    version: str
    status: str  # "published" or "unchanged"
    manifest_sha256: str


def default_version(model_dir: Path) -> str:
    """``<UTC time of training>-<first 8 hex of the manifest digest>``: sortable and tied to content."""
    import json

    created = json.loads((model_dir / METADATA_FILE).read_text()).get("created_at", "")
    stamp = re.sub(r"[^0-9T]", "", created).replace("T", "t") or "untimed"
    digest = hashlib.sha256((model_dir / MANIFEST_FILE).read_bytes()).hexdigest()
    return f"v{stamp}-{digest[:8]}"


def _check_segment(kind: str, value: str) -> None:
    if not _SEGMENT.match(value or ""):
        raise ConfigError(
            f"{kind} {value!r} is not allowed: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )


def version_prefix(model_name: str, version: str, root_prefix: str = "") -> str:
    """``[<root>/]<model>/<version>/``: the immutable key prefix of one released version."""
    _check_segment("model name", model_name)
    _check_segment("version", version)
    root = root_prefix.strip("/")
    return f"{root}/{model_name}/{version}/" if root else f"{model_name}/{version}/"


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def publish(
    model_dir: str | Path,
    model_name: str,
    version: str | None = None,
    settings: S3Settings | None = None,
    root_prefix: str = "",
) -> PublishResult:
    model_dir = Path(model_dir)
    entries = verify_model_dir(model_dir)
    settings = settings or S3Settings.from_env()
    if not settings.bucket:
        raise ConfigError("no bucket: set AWS_S3_BUCKET (the data connection's bucket)")
    version = version or default_version(model_dir)
    prefix = version_prefix(model_name, version, root_prefix)
    uri = f"s3://{settings.bucket}/{prefix}"
    manifest_bytes = (model_dir / MANIFEST_FILE).read_bytes()
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    client = settings.client()
    bucket = settings.bucket

    try:
        client.head_bucket(Bucket=bucket)
    except Exception as exc:
        raise describe_client_error(exc, f"open bucket {bucket}", settings) from exc

    released = _read_released_manifest(client, bucket, prefix, settings)
    if released is not None:
        return _compare_released(released, manifest_bytes, uri, bucket, prefix, version, manifest_sha)

    log.info("publishing %s to %s (%d files)", model_dir, uri, len(entries))
    for number, (name, digest) in enumerate(sorted(entries.items()), 1):
        path = model_dir / name
        try:
            client.upload_file(
                str(path),
                bucket,
                prefix + name,
                ExtraArgs={"Metadata": {"sha256": digest}, "ChecksumAlgorithm": "SHA256"},
                Config=_transfer_config(),
            )
            head = client.head_object(Bucket=bucket, Key=prefix + name)
        except Exception as exc:
            raise describe_client_error(exc, f"upload {name} to {uri}", settings) from exc
        if head.get("Metadata", {}).get("sha256") != digest or head["ContentLength"] != path.stat().st_size:
            raise StorageError(f"{uri}{name} does not match the local file after upload; the version stays unreleased")
        log.info("  [%d/%d] %s (%d bytes)", number, len(entries), name, head["ContentLength"])

    try:
        client.put_object(
            Bucket=bucket,
            Key=prefix + MANIFEST_FILE,
            Body=manifest_bytes,
            ChecksumSHA256=_b64(manifest_sha),
            IfNoneMatch="*",
            Metadata={"sha256": manifest_sha},
        )
    except Exception as exc:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
            "PreconditionFailed",
            "ConditionalRequestConflict",
        ):
            # Someone released this version between our check and our write.
            released = _read_released_manifest(client, bucket, prefix, settings)
            if released is not None:
                return _compare_released(released, manifest_bytes, uri, bucket, prefix, version, manifest_sha)
        raise describe_client_error(exc, f"write the manifest of {uri}", settings) from exc
    log.info("released %s (manifest %s…)", uri, manifest_sha[:12])
    return PublishResult(uri, bucket, prefix, version, "published", manifest_sha)


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD,
                          use_threads=False)


def _read_released_manifest(client, bucket: str, prefix: str, settings: S3Settings) -> bytes | None:
    try:
        return client.get_object(Bucket=bucket, Key=prefix + MANIFEST_FILE)["Body"].read()
    except Exception as exc:
        if _is_missing(exc):
            return None
        raise describe_client_error(exc, f"read s3://{bucket}/{prefix}{MANIFEST_FILE}", settings) from exc


def _compare_released(released: bytes, local: bytes, uri, bucket, prefix, version, manifest_sha) -> PublishResult:
    if released == local:
        log.info("%s is already released with identical content; nothing to do", uri)
        return PublishResult(uri, bucket, prefix, version, "unchanged", manifest_sha)
    raise VersionConflictError(
        f"{uri} is already released with different content (manifest "
        f"{hashlib.sha256(released).hexdigest()[:12]}… vs local {manifest_sha[:12]}…); "
        "released versions are immutable: publish under a new version"
    )


def download_model(uri: str, dest: str | Path, settings: S3Settings | None = None) -> Path:
    """Fetch a released version and verify every file before returning its directory.

    Files go into a staging directory that replaces ``dest`` only after verification.
    """
    bucket, key = parse_s3_uri(uri)
    prefix = key.rstrip("/") + "/"
    settings = settings or S3Settings.from_env(need_bucket=False)
    client = settings.client()
    try:
        manifest = client.get_object(Bucket=bucket, Key=prefix + MANIFEST_FILE)["Body"].read()
    except Exception as exc:
        if _is_missing(exc):
            raise ArtifactError(
                f"s3://{bucket}/{prefix} has no {MANIFEST_FILE}: the version is not released (or incomplete)"
            ) from exc
        raise describe_client_error(exc, f"read the manifest of s3://{bucket}/{prefix}", settings) from exc
    entries = parse_manifest(manifest.decode("utf-8", "replace"), f"s3://{bucket}/{prefix}{MANIFEST_FILE}")
    dest = Path(dest)
    staging = dest.with_name(dest.name + ".download")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name in entries:
            try:
                client.download_file(bucket, prefix + name, str(staging / name))
            except Exception as exc:
                raise describe_client_error(exc, f"download s3://{bucket}/{prefix}{name}", settings) from exc
        (staging / MANIFEST_FILE).write_bytes(manifest)
        verify_model_dir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    log.info("downloaded and verified s3://%s/%s into %s", bucket, prefix, dest)
    return dest
