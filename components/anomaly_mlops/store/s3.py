"""S3 access with the OpenShift AI data-connection keys.

A data connection named ``<name>`` is the secret ``aws-connection-<name>`` with the keys
below; in KFP and Tekton the keys arrive as environment variables. Values are never
logged: ``S3Settings.__repr__`` redacts them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from urllib.parse import urlparse

from anomaly_mlops.errors import ConfigError, StorageError
from anomaly_mlops.redact import redact

log = logging.getLogger(__name__)

# botocore retries a request until its answer's headers are in; a body cut short after them
# is read again here, for the small objects the release protocol decides on.
SMALL_READ_TRIES = 3

ENV_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_S3_ENDPOINT",
    "AWS_S3_BUCKET",
    "AWS_DEFAULT_REGION",
)


@dataclass(frozen=True)
class S3Settings:
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    endpoint: str | None
    bucket: str | None
    region: str = "us-east-1"
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_attempts: int = 5

    @classmethod
    def from_env(cls, env: os._Environ | dict | None = None, *, need_bucket: bool = True) -> S3Settings:
        env = os.environ if env is None else env
        missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(k)]
        if need_bucket and not env.get("AWS_S3_BUCKET"):
            missing.append("AWS_S3_BUCKET")
        if missing:
            raise ConfigError(
                "S3 credentials are incomplete: missing "
                + ", ".join(missing)
                + ". Mount the OpenShift AI data connection secret (aws-connection-<name>) "
                "as environment variables, or export them for a local run."
            )
        endpoint = env.get("AWS_S3_ENDPOINT") or None
        if endpoint and urlparse(endpoint).scheme not in ("http", "https"):
            raise ConfigError(f"AWS_S3_ENDPOINT must start with http:// or https://, got {redact(endpoint)!r}")
        return cls(
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            endpoint=endpoint,
            bucket=env.get("AWS_S3_BUCKET") or None,
            region=env.get("AWS_DEFAULT_REGION") or "us-east-1",
        )

    def client(self):
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            retries={"total_max_attempts": self.max_attempts, "mode": "standard"},  # first try included
            # Path-style works with MinIO, Ceph RGW and ODF, which OpenShift AI users run.
            s3={"addressing_style": "path"},
        )
        return boto3.client(
            "s3",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            endpoint_url=self.endpoint,
            region_name=self.region,
            config=config,
        )

    def describe(self) -> str:
        """Where, never who: safe for logs."""
        return f"endpoint={redact(self.endpoint) if self.endpoint else 'AWS default'} bucket={self.bucket}"


def read_small_object(client, bucket: str, key: str) -> bytes:
    """The whole body of a small object (a manifest, a claim). A GET that fails raises as
    the client raises it; one whose body is cut short is made again, SMALL_READ_TRIES times."""
    from botocore.exceptions import IncompleteReadError, ResponseStreamingError
    from urllib3.exceptions import HTTPError as TransportError

    for attempt in range(1, SMALL_READ_TRIES + 1):
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            return body.read()
        except (IncompleteReadError, ResponseStreamingError, TransportError, ConnectionError) as exc:
            if attempt == SMALL_READ_TRIES:
                raise
            log.warning("s3://%s/%s: the body was cut short (%s); reading it again", bucket, key, type(exc).__name__)
    raise AssertionError("unreachable")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ConfigError(f"not an s3:// URI: {uri!r} (expected s3://bucket/key)")
    return parsed.netloc, parsed.path.lstrip("/")


def describe_client_error(exc: Exception, action: str, settings: S3Settings) -> StorageError:
    """Turn botocore failures into one clear sentence (without credentials)."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError

    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
        return StorageError(f"cannot reach S3 while trying to {action} ({settings.describe()}): {redact(str(exc))}")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "?")
        hint = {
            "NoSuchBucket": "the bucket does not exist; check AWS_S3_BUCKET",
            "InvalidAccessKeyId": "the access key is not known to this endpoint",
            "SignatureDoesNotMatch": "the secret access key is wrong",
            "AccessDenied": "the credentials may not do this",
        }.get(code, err.get("Message", ""))
        return StorageError(f"S3 refused to {action} ({settings.describe()}): {code}: {hint}")
    return StorageError(f"S3 failed to {action} ({settings.describe()}): {redact(str(exc))}")
