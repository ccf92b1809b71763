"""The publish step: put a verified model directory under an immutable S3 prefix
``<model>/<version>/``, and the matching download-and-verify used by the predictor.

Protocol (every publisher follows it, so a released version is always consistent):
1. If the version's manifest exists, the version is released: identical content is a
   no-op after auditing every object (a damaged object is re-uploaded from our identical
   bytes: "repaired"); different content is refused (VersionConflictError).
2. Otherwise take the version's claim, ``<model>/.claims/<version>.json``, written only if
   absent (``If-None-Match: *``). The claim names the manifest digest; only publishers of
   that exact content write under the version prefix, so a publisher of other content
   writes nothing there and fails with VersionConflictError. The claims folder cannot be a
   version name (versions never start with '.'), and it lies outside every version prefix,
   so the KServe storage initializer never downloads it.
3. Abort multipart uploads left under the prefix by a killed publisher, upload every file
   with a SHA-256 checksum S3 verifies on receipt, write the manifest last and only if
   absent, then audit every listed object (server-side SHA-256, size) before reporting.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from anomaly_mlops.errors import ArtifactError, ConfigError, StorageError, VersionConflictError
from anomaly_mlops.model.artifacts import MANIFEST_FILE, METADATA_FILE, parse_manifest, verify_model_dir
from anomaly_mlops.store.s3 import S3Settings, describe_client_error, parse_s3_uri, read_small_object

log = logging.getLogger(__name__)

_SEGMENT = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?$")
# Files above this go up in parts; a failed part aborts the whole multipart upload.
MULTIPART_THRESHOLD = 8 * 1024 * 1024
CLAIMS_FOLDER = ".claims"
STALE_STAGING_S = 3600  # a volume publisher's staging folder older than this is a dead one's
_CONDITION_FAILED = ("PreconditionFailed", "ConditionalRequestConflict")


@dataclass
class PublishResult:
    uri: str
    bucket: str
    prefix: str
    version: str
    status: str  # "published", "unchanged" or "repaired"
    manifest_sha256: str


def default_version(model_dir: Path) -> str:
    """``<UTC time of training>-<first 8 hex of the manifest digest>``: sortable and tied to content."""
    created = json.loads((model_dir / METADATA_FILE).read_text()).get("created_at", "")
    stamp = re.sub(r"[^0-9T]", "", created).replace("T", "t") or "untimed"
    digest = hashlib.sha256((model_dir / MANIFEST_FILE).read_bytes()).hexdigest()
    return f"v{stamp}-{digest[:8]}"


def check_name_segment(kind: str, value: str) -> None:
    """A model name or version as a release may carry it (one S3 key segment)."""
    if not _SEGMENT.match(value or ""):
        raise ConfigError(
            f"{kind} {value!r} is not allowed: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )


def version_prefix(model_name: str, version: str, root_prefix: str = "") -> str:
    """``[<root>/]<model>/<version>/``: the immutable key prefix of one released version."""
    check_name_segment("model name", model_name)
    check_name_segment("version", version)
    root = root_prefix.strip("/")
    return f"{root}/{model_name}/{version}/" if root else f"{model_name}/{version}/"


def claim_key(prefix: str) -> str:
    """``[<root>/]<model>/.claims/<version>.json`` for the version prefix ``[<root>/]<model>/<version>/``."""
    model_part, version = prefix.rstrip("/").rsplit("/", 1)
    return f"{model_part}/{CLAIMS_FOLDER}/{version}.json"


def _error_code(exc: Exception) -> str | None:
    from botocore.exceptions import ClientError

    return exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None


def _is_missing(exc: Exception) -> bool:
    return _error_code(exc) in ("404", "NoSuchKey", "NotFound")


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


@dataclass
class _Target:
    """Where one publish writes: client, bucket, version prefix, and the local model."""

    client: object
    settings: S3Settings
    bucket: str
    prefix: str
    model_dir: Path
    entries: dict[str, str]

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def fail(self, exc: Exception, action: str) -> StorageError:
        return describe_client_error(exc, action, self.settings)


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
    manifest_bytes = (model_dir / MANIFEST_FILE).read_bytes()
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    target = _Target(settings.client(), settings, settings.bucket, prefix, model_dir, entries)
    result = lambda status: PublishResult(target.uri, target.bucket, prefix, version, status, manifest_sha)  # noqa: E731

    try:
        target.client.head_bucket(Bucket=target.bucket)
    except Exception as exc:
        raise target.fail(exc, f"open bucket {target.bucket}") from exc

    released = _read_manifest(target)
    if released is not None:
        return result(_settle_released(target, released, manifest_bytes))
    _claim(target, manifest_sha)
    # A publisher of other content may have released between our manifest read and our claim
    # only without a claim (an older client); check again before writing anything.
    released = _read_manifest(target)
    if released is not None:
        return result(_settle_released(target, released, manifest_bytes))

    _abort_leftover_uploads(target)
    log.info("publishing %s to %s (%d files)", model_dir, target.uri, len(entries))
    for number, name in enumerate(sorted(entries), 1):
        # Before every write: the claim may have been deleted (a publisher paused for long
        # looks dead) and the version released with other content since the last one.
        released = _recheck_claim(target, manifest_sha)
        if released is not None:
            return result(_settle_released(target, released, manifest_bytes))
        size = _upload(target, name)
        log.info("  [%d/%d] %s (%d bytes)", number, len(entries), name, size)

    released = _recheck_claim(target, manifest_sha)
    if released is not None:
        return result(_settle_released(target, released, manifest_bytes))
    try:
        target.client.put_object(
            Bucket=target.bucket,
            Key=prefix + MANIFEST_FILE,
            Body=manifest_bytes,
            ChecksumSHA256=_b64(manifest_sha),
            IfNoneMatch="*",
            Metadata={"sha256": manifest_sha, **_provenance_metadata(model_dir)},
        )
    except Exception as exc:
        if _error_code(exc) in _CONDITION_FAILED:
            released = _read_manifest(target)
            if released is not None:
                # Our content, released while we held the claim: by our own write whose answer
                # was lost (a 500 after the write, retried), or a co-publisher of the same bytes.
                _settle_released(target, released, manifest_bytes)
                return result("published")
        raise target.fail(exc, f"write the manifest of {target.uri}") from exc
    damaged = _audit(target)
    if damaged:
        # Only publishers of this very content write here; a co-publisher's late part can
        # still land after our check, so mend from our identical bytes and check again.
        _repair(target, damaged)
    log.info("released %s (manifest %s…)", target.uri, manifest_sha[:12])
    return result("published")


def _provenance_metadata(model_dir: Path) -> dict[str, str]:
    """The commit and run that made the model, as object metadata of the released manifest."""
    origin = json.loads((model_dir / METADATA_FILE).read_text()).get("provenance") or {}
    keys = {"git_commit": "git-commit", "run_id": "run-id"}
    return {keys[k]: str(v)[:200] for k, v in origin.items() if k in keys and v}


def _upload(target: _Target, name: str) -> int:
    """Upload one file with its digest; check it by HEAD; return its size."""
    path, digest = target.model_dir / name, target.entries[name]
    try:
        target.client.upload_file(
            str(path),
            target.bucket,
            target.prefix + name,
            ExtraArgs={"Metadata": {"sha256": digest}, "ChecksumAlgorithm": "SHA256"},
            Config=_transfer_config(),
        )
    except Exception as exc:
        raise target.fail(exc, f"upload {name} to {target.uri}") from exc
    problem = _object_problem(target, name)
    if problem:
        raise StorageError(f"{target.uri}{name} {problem} after upload; the version stays unreleased")
    return path.stat().st_size


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD, use_threads=False
    )


def _part_size(size: int) -> int:
    """The part size s3transfer really uses for our chunk size (it raises it to S3's 5 MiB minimum)."""
    from s3transfer.utils import ChunksizeAdjuster

    return ChunksizeAdjuster().adjust_chunksize(MULTIPART_THRESHOLD, size)


def _composite_sha256(path: Path) -> tuple[str, int]:
    """S3's checksum of our multipart upload of ``path`` (sha256 over the parts' sha256) and the part count."""
    part_size, parts, count = _part_size(path.stat().st_size), hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(part_size):
            parts.update(hashlib.sha256(block).digest())
            count += 1
    return base64.b64encode(parts.digest()).decode(), count


def _object_problem(target: _Target, name: str) -> str | None:
    """None when the stored object holds our bytes, else what is wrong with it.

    The server's own SHA-256 (computed on receipt) is compared where the store keeps one;
    a store that keeps no checksums at all is checked by size and our sha256 metadata."""
    path, digest = target.model_dir / name, target.entries[name]
    try:
        head = target.client.head_object(Bucket=target.bucket, Key=target.prefix + name, ChecksumMode="ENABLED")
    except Exception as exc:
        if _is_missing(exc):
            return "is missing"
        raise target.fail(exc, f"check {target.uri}{name}") from exc
    if head["ContentLength"] != path.stat().st_size:
        return f"has {head['ContentLength']} bytes, not {path.stat().st_size}"
    server_sha = head.get("ChecksumSHA256")
    if server_sha:
        expected = {_b64(digest)}
        if path.stat().st_size >= MULTIPART_THRESHOLD:
            composite, parts = _composite_sha256(path)
            expected |= {composite, f"{composite}-{parts}"}
        return None if server_sha in expected else "does not match its manifest digest (server SHA-256)"
    if any(key.startswith("Checksum") and key != "ChecksumType" for key in head):
        return "was not written by a publisher of this content (no SHA-256 checksum)"
    if head.get("Metadata", {}).get("sha256") != digest:
        return "does not match its manifest digest"
    return None


def _audit(target: _Target) -> dict[str, str]:
    """Every listed object that does not hold our bytes, with the reason."""
    problems = {name: _object_problem(target, name) for name in sorted(target.entries)}
    return {name: problem for name, problem in problems.items() if problem}


def _repair(target: _Target, damaged: dict[str, str]) -> None:
    for name, problem in damaged.items():
        log.warning("%s%s %s: uploading it again from identical local content", target.uri, name, problem)
        _upload(target, name)
    still = _audit(target)
    if still:
        raise StorageError(
            f"{target.uri} is damaged and could not be mended: " + "; ".join(f"{n} {p}" for n, p in still.items())
        )


def _read_manifest(target: _Target) -> bytes | None:
    try:
        return read_small_object(target.client, target.bucket, target.prefix + MANIFEST_FILE)
    except Exception as exc:
        if _is_missing(exc):
            return None
        raise target.fail(exc, f"read {target.uri}{MANIFEST_FILE}") from exc


def _settle_released(target: _Target, released: bytes, local: bytes) -> str:
    """The version is released: "unchanged" or "repaired" for our content, else a conflict."""
    if released != local:
        raise VersionConflictError(
            f"{target.uri} is already released with different content (manifest "
            f"{hashlib.sha256(released).hexdigest()[:12]}… vs local {hashlib.sha256(local).hexdigest()[:12]}…); "
            "released versions are immutable: publish under a new version"
        )
    damaged = _audit(target)
    if not damaged:
        log.info("%s is already released with identical content; nothing to do", target.uri)
        return "unchanged"
    _repair(target, damaged)
    return "repaired"


def _claim(target: _Target, manifest_sha: str) -> None:
    """Own the version for this content, or raise VersionConflictError naming the holder."""
    key = claim_key(target.prefix)
    claim = {
        "manifest_sha256": manifest_sha,
        "publisher": f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}",
        "claimed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        target.client.put_object(
            Bucket=target.bucket,
            Key=key,
            Body=json.dumps(claim).encode(),
            IfNoneMatch="*",
            ContentType="application/json",
        )
        return
    except Exception as exc:
        if _error_code(exc) not in _CONDITION_FAILED:
            raise target.fail(exc, f"claim {target.uri} (s3://{target.bucket}/{key})") from exc
    try:
        held = json.loads(read_small_object(target.client, target.bucket, key))
    except Exception as exc:
        raise target.fail(exc, f"read the claim s3://{target.bucket}/{key}") from exc
    if held.get("manifest_sha256") == manifest_sha:
        log.info("%s is claimed for this same content by %s; completing it", target.uri, held.get("publisher"))
        return
    raise VersionConflictError(
        f"{target.uri} is being published with different content (claimed by {held.get('publisher')} at "
        f"{held.get('claimed_at')}, manifest {str(held.get('manifest_sha256'))[:12]}…); publish under a new version. "
        f"If that publisher died before releasing, delete s3://{target.bucket}/{key} and the unreleased objects "
        f"under {target.uri}"
    )


def _recheck_claim(target: _Target, manifest_sha: str) -> bytes | None:
    """Right before a write under the version: the released manifest if the version was
    released meanwhile (nothing more is written then), else None once the claim is checked
    to still name this content; VersionConflictError when it is gone or names other content."""
    released = _read_manifest(target)
    if released is not None:
        return released
    key = claim_key(target.prefix)
    try:
        held = json.loads(read_small_object(target.client, target.bucket, key))
    except json.JSONDecodeError:
        held = None
    except Exception as exc:
        if not _is_missing(exc):
            raise target.fail(exc, f"read the claim s3://{target.bucket}/{key}") from exc
        held = None
    if not isinstance(held, dict) or held.get("manifest_sha256") != manifest_sha:
        raise VersionConflictError(
            f"{target.uri}: this publisher's claim s3://{target.bucket}/{key} was deleted or replaced while it "
            "uploaded, so it stopped before writing again; the version is not released by it. Publish again "
            "(under a new version if other content now holds this one)"
        )
    return None


def _abort_leftover_uploads(target: _Target) -> None:
    """Multipart uploads under the prefix are a killed publisher's: only claim holders write here."""
    try:
        uploads = target.client.list_multipart_uploads(Bucket=target.bucket, Prefix=target.prefix).get("Uploads", [])
        for upload in uploads:
            target.client.abort_multipart_upload(Bucket=target.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            log.info(
                "aborted an unfinished multipart upload of %s (started %s)", upload["Key"], upload.get("Initiated")
            )
    except Exception as exc:
        raise target.fail(exc, f"clean unfinished uploads under {target.uri}") from exc


def download_model(uri: str, dest: str | Path, settings: S3Settings | None = None) -> Path:
    """Fetch a released version and verify every file before returning its directory.

    ``dest`` must not exist or be an empty directory (never overwritten). Files go into a
    staging directory beside it that becomes ``dest`` only after verification.
    """
    bucket, key = parse_s3_uri(uri)
    prefix = key.rstrip("/") + "/"
    dest = Path(dest)
    if dest.is_symlink() or dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        kind = "directory is not empty" if dest.is_dir() else "path exists and is not a directory"
        raise ConfigError(f"download target {dest}: the {kind}; name a new or empty directory")
    settings = settings or S3Settings.from_env(need_bucket=False)
    client = settings.client()
    try:
        manifest = read_small_object(client, bucket, prefix + MANIFEST_FILE)
    except Exception as exc:
        if _is_missing(exc):
            raise ArtifactError(
                f"s3://{bucket}/{prefix} has no {MANIFEST_FILE}: the version is not released (or incomplete)"
            ) from exc
        raise describe_client_error(exc, f"read the manifest of s3://{bucket}/{prefix}", settings) from exc
    entries = parse_manifest(manifest.decode("utf-8", "replace"), f"s3://{bucket}/{prefix}{MANIFEST_FILE}")
    staging = dest.with_name(f".{dest.name}.download-{uuid.uuid4().hex[:8]}")
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create a download directory beside {dest}: {exc.strerror}") from exc
    try:
        for name in entries:
            try:
                client.download_file(bucket, prefix + name, str(staging / name))
            except Exception as exc:
                raise describe_client_error(exc, f"download s3://{bucket}/{prefix}{name}", settings) from exc
        (staging / MANIFEST_FILE).write_bytes(manifest)
        verify_model_dir(staging)
        if dest.is_dir():
            dest.rmdir()  # empty, checked above; fails rather than delete anything that appeared since
        staging.rename(dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("downloaded and verified s3://%s/%s into %s", bucket, prefix, dest)
    return dest


# --------------------------------------------------------------------------- a mounted volume (PVC)


def publish_to_directory(
    model_dir: str | Path,
    root: str | Path,
    model_name: str,
    version: str | None = None,
    claim_name: str | None = None,
) -> PublishResult:
    """Publish into ``<root>/<model>/<version>/`` on a mounted volume, with the S3 rules:
    a claim (``<root>/<model>/.claims/<version>.json``, created exclusively) for one
    content, files copied, fsynced and verified in a staging folder beside the version with
    the manifest last, then renamed into place in one step, so a version folder is complete
    or absent. Identical content is a no-op after verification (a damaged file is replaced
    from the identical local bytes: "repaired"); other content is refused.

    With ``claim_name`` the result's uri is ``pvc://<claim>/<model>/<version>/``, what
    KServe's ``storageUri`` takes when the volume is that PersistentVolumeClaim."""
    model_dir, root = Path(model_dir), Path(root)
    entries = verify_model_dir(model_dir)
    version = version or default_version(model_dir)
    relative = version_prefix(model_name, version)
    if not root.is_dir():
        raise ConfigError(f"publish target {root} is not a mounted directory")
    target = root / relative
    manifest_bytes = (model_dir / MANIFEST_FILE).read_bytes()
    manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
    uri = f"pvc://{claim_name}/{relative}" if claim_name else str(target) + "/"
    result = lambda status: PublishResult(uri, claim_name or str(root), relative, version, status, manifest_sha)  # noqa: E731
    try:
        if (target / MANIFEST_FILE).is_file():
            return result(_settle_directory(target, model_dir, manifest_bytes, uri))
        _claim_file(root / claim_key(relative), manifest_sha, uri)
        _remove_stale_staging(target, version)
        staging = target.with_name(f".staging-{version}-{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True)
        try:
            for name in sorted(entries):
                _copy_synced(model_dir / name, staging / name)
            _copy_synced(model_dir / MANIFEST_FILE, staging / MANIFEST_FILE)
            verify_model_dir(staging)
            _fsync_dir(staging)
            try:
                staging.rename(target)  # atomic; fails if the version appeared meanwhile
            except OSError:
                if (target / MANIFEST_FILE).is_file():
                    return result(_settle_directory(target, model_dir, manifest_bytes, uri))
                raise
            _fsync_dir(target.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise StorageError(f"cannot publish into {target}: {exc.strerror or exc}") from exc
    verify_model_dir(target)
    log.info("released %s (manifest %s…)", uri, manifest_sha[:12])
    return result("published")


def _remove_stale_staging(target: Path, version: str) -> None:
    """A publisher killed mid-copy leaves its staging folder: only publishers of this content
    (the claim's) stage this version, and none takes an hour to copy a model."""
    for leftover in target.parent.glob(f".staging-{version}-*"):
        try:
            age = time.time() - leftover.stat().st_mtime
        except FileNotFoundError:
            continue  # its publisher just finished
        if age > STALE_STAGING_S:
            log.info("removing %s, left %.0f min ago by a publisher that did not finish", leftover, age / 60)
            shutil.rmtree(leftover, ignore_errors=True)


def _settle_directory(target: Path, model_dir: Path, local: bytes, uri: str) -> str:
    released = (target / MANIFEST_FILE).read_bytes()
    if released != local:
        raise VersionConflictError(
            f"{uri} is already released with different content (manifest {hashlib.sha256(released).hexdigest()[:12]}… "
            f"vs local {hashlib.sha256(local).hexdigest()[:12]}…); released versions are immutable: publish under a "
            "new version"
        )
    try:
        verify_model_dir(target)
        log.info("%s is already released with identical content; nothing to do", uri)
        return "unchanged"
    except ArtifactError as exc:
        log.warning("%s is damaged (%s); replacing its files from identical local content", uri, exc)
    listed = parse_manifest(local.decode(), uri)
    for name in listed:
        replacement = target / f".{name}.{uuid.uuid4().hex[:8]}"
        _copy_synced(model_dir / name, replacement)
        replacement.replace(target / name)
    for stray in set(p.name for p in target.iterdir()) - set(listed) - {MANIFEST_FILE}:
        (target / stray).unlink()
    verify_model_dir(target)
    return "repaired"


def _claim_file(path: Path, manifest_sha: str, uri: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    claim = {
        "manifest_sha256": manifest_sha,
        "publisher": f"{socket.gethostname()}/{os.getpid()}",
        "claimed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        with open(path, "x") as handle:
            json.dump(claim, handle)
            handle.flush()
            os.fsync(handle.fileno())
        return
    except FileExistsError:
        text = path.read_text()
    try:
        held = json.loads(text)
    except json.JSONDecodeError:
        held = None
    if not isinstance(held, dict) or "manifest_sha256" not in held:
        raise VersionConflictError(
            f"{uri}: its claim {path} is {'empty' if not text.strip() else 'not a whole claim'} (a publisher killed "
            f"while writing it?), so nothing is published under it. If no publisher of {uri} is running, delete "
            f"{path} and publish again"
        )
    if held.get("manifest_sha256") != manifest_sha:
        raise VersionConflictError(
            f"{uri} is being published with different content (claimed by {held.get('publisher')} at "
            f"{held.get('claimed_at')}); publish under a new version. If that publisher died, delete {path}"
        )


def _copy_synced(source: Path, dest: Path) -> None:
    with open(source, "rb") as reader, open(dest, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
        writer.flush()
        os.fsync(writer.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def resolve_model_dir(model_uri: str, cache_dir: str | Path) -> Path:
    """A local directory as is; an s3:// prefix downloaded and verified into ``cache_dir``
    (the caller owns and removes it)."""
    if model_uri.startswith("s3://"):
        from anomaly_mlops.store.releases import download_model

        return download_model(model_uri, Path(cache_dir) / "model")
    return Path(model_uri)


def served_version(model_uri: str, local: Path) -> str:
    """The release name: the version segment of an s3:// URI, else what publish would name it."""
    if model_uri.startswith("s3://"):
        return model_uri.rstrip("/").rsplit("/", 1)[-1]
    return default_version(local)
