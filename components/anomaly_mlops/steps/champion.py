"""The champion a challenger is compared with: the released version the InferenceService
serves, the latest released version in S3, or one named explicitly.

    ""                              no champion (the first release, or comparison off)
    latest                          the newest released version of <model> in the bucket
                                    (by the time its manifest was written)
    serving:<namespace>/<name>      the version the InferenceService serves (storage key/path
                                    or s3:// storageUri; needs get on inferenceservices)
    s3://bucket/<model>/<version>/  that version;  a local directory: that model directory
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from anomaly_mlops.errors import ConfigError
from anomaly_mlops.model.drift import ScoreReference

log = logging.getLogger(__name__)


def latest_release(model_name: str, root_prefix: str = "", settings=None) -> str | None:
    """s3:// URI of the newest released version of ``model_name``; None when none is.
    Newest: the latest manifest write; S3 keeps that to the second, so a tie goes to the
    greater version name (default names begin with the training time)."""
    from anomaly_mlops.model.artifacts import MANIFEST_FILE
    from anomaly_mlops.store.releases import version_prefix
    from anomaly_mlops.store.s3 import S3Settings, describe_client_error

    settings = settings or S3Settings.from_env()
    prefix = version_prefix(model_name, "x", root_prefix)[: -len("x/")]
    client = settings.client()
    newest = None
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                version, _, name = item["Key"][len(prefix) :].partition("/")
                if name == MANIFEST_FILE and not version.startswith("."):
                    newest = max(newest or (item["LastModified"], version), (item["LastModified"], version))
    except Exception as exc:
        raise describe_client_error(
            exc, f"list the released versions under s3://{settings.bucket}/{prefix}", settings
        ) from exc
    return f"s3://{settings.bucket}/{prefix}{newest[1]}/" if newest else None


def serving_release(reference: str, settings=None) -> str:
    """s3:// URI of what ``<namespace>/<name>``'s InferenceService serves."""
    from anomaly_mlops.steps.deploy import InferenceServiceClient, load_custom_objects_api, storage_of
    from anomaly_mlops.store.s3 import S3Settings

    namespace, _, name = reference.partition("/")
    if not (namespace and name):
        raise ConfigError(f"champion 'serving:{reference}' must name <namespace>/<inferenceservice>")
    isvc = InferenceServiceClient(load_custom_objects_api()).get(name, namespace)
    if isvc is None:
        raise ConfigError(f"InferenceService {namespace}/{name} does not exist: no serving champion")
    location = storage_of(isvc) or ""
    if location.startswith("s3://"):
        return location
    if "://" in location or ":" not in location:
        raise ConfigError(f"{namespace}/{name} serves {location or 'no model'}; only S3 storage can be compared")
    settings = settings or S3Settings.from_env()
    return f"s3://{settings.bucket}/{location.partition(':')[2].lstrip('/')}"


def resolve_champion(spec: str | None, model_name: str, cache_dir: str | Path, root_prefix: str = ""):
    """The champion as a LoadedModel, or None (with the reason logged)."""
    from anomaly_mlops.model.artifacts import load_model_dir
    from anomaly_mlops.store.releases import resolve_model_dir

    if not spec:
        return None
    if spec == "latest":
        uri = latest_release(model_name, root_prefix)
        if uri is None:
            log.info("champion: no released version of %s yet; this is the first release", model_name)
            return None
    elif spec.startswith("serving:"):
        uri = serving_release(spec[len("serving:") :])
    elif spec.startswith("registry:"):
        from anomaly_mlops.steps.registry import serving_from_registry

        uri = serving_from_registry(spec[len("registry:") :])
    else:
        uri = spec
    log.info("champion: %s", uri)
    return load_model_dir(resolve_model_dir(uri, cache_dir))


def psi(reference: np.ndarray, candidate: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``candidate`` against ``reference``, over the
    reference's deciles (a small floor keeps empty bins finite)."""
    if len(np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)))) < 3:
        return 0.0 if np.allclose(reference.mean(), candidate.mean()) else float("inf")
    deciles = ScoreReference.of_scores(reference, np.inf, bins)
    return deciles.psi(deciles.counts(candidate))
