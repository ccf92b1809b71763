"""Optional: each released version in the Kubeflow Model Registry (``anomaly-mlops register``),
through its Python client (PyPI ``model-registry``, pinned to 0.3.9, the release generated
from the OpenAPI spec in ../shared/schemas/model-registry/), so OpenShift AI users find it,
its storage and where it came from.

- Registered model = the model name; version = the release's version name; the artifact
  points at the released ``s3://`` prefix with the data connection's ``storage_key`` and
  ``storage_path``, and the model format our ServingRuntime declares.
- The version's custom properties: the validation metrics (when given), the data's source,
  rows and digest, the feature schema, the threshold, the training time, and lineage: the
  source kind (``kfp`` or ``tekton``), run id and name, namespace, git commit, manifest sha256.
- Idempotent: a version already registered with this manifest is left as it is; one with
  another manifest is refused, as publish refuses it. Names that break the release's naming
  rules are refused before anything is written. An unreachable registry is one line that
  says the release itself is safe and how to register it later.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from anomaly_mlops.errors import ConfigError, VersionConflictError
from anomaly_mlops.model.artifacts import MANIFEST_FILE, METADATA_FILE
from anomaly_mlops.redact import redact
from anomaly_mlops.store.releases import version_prefix

log = logging.getLogger(__name__)

# What manifests/kserve/base/servingruntime.yaml declares in supportedModelFormats.
MODEL_FORMAT = ("anomaly-isolation-forest", "1")
SOURCE_KINDS = ("kfp", "tekton", "local")
METRICS = ("roc_auc", "pr_auc", "f1", "flagged_rate", "score_psi")


class RegistryError(ConfigError):
    """The Model Registry could not be reached or refused the registration."""


@dataclass
class Registration:
    registered_model_id: str
    model_version_id: str
    name: str
    version: str
    status: str  # "registered" or "unchanged"


@dataclass
class Lineage:
    source_kind: str = "local"  # kfp, tekton or local
    run_id: str = ""
    run_name: str = ""
    namespace: str = ""
    git_commit: str = ""


def version_properties(model_dir: Path, validation: dict | None, lineage: Lineage) -> dict[str, str | int | float]:
    """The custom properties a version carries: metrics, data, schema, threshold, lineage."""
    import hashlib

    from anomaly_mlops.steps.model_card import summarize_validation

    validation = summarize_validation(validation)
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    data = metadata.get("data") or {}
    provenance = metadata.get("provenance") or {}
    properties: dict[str, str | int | float] = {
        "manifest_sha256": hashlib.sha256((model_dir / MANIFEST_FILE).read_bytes()).hexdigest(),
        "threshold": float(metadata["threshold"]),
        "feature_schema": ",".join(metadata["schema"]["features"]),
        "data_source": redact(str(data.get("source", ""))),
        "data_rows": int(data.get("rows") or 0),
        "data_sha256": str(data.get("sha256", "")),
        "trained_at": str(metadata.get("created_at", "")),
        "model_source_kind": lineage.source_kind,
        "run_id": lineage.run_id or str(provenance.get("run_id") or ""),
        "run_name": lineage.run_name,
        "namespace": lineage.namespace,
        "git_commit": lineage.git_commit or str(provenance.get("git_commit") or ""),
    }
    for name in METRICS:
        value = (validation or {}).get(name)
        if isinstance(value, int | float) and value == value:
            properties[name] = float(value)
    if validation and "passed" in validation:
        properties["gates_passed"] = "true" if validation["passed"] else "false"
    return {k: v for k, v in properties.items() if v != ""}


def register_version(
    url: str,
    model_dir: str | Path,
    model_name: str,
    version: str,
    uri: str,
    *,
    storage_key: str,
    validation: dict | None = None,
    lineage: Lineage | None = None,
    token: str | None = None,
    author: str = "anomaly-mlops",
    model_card: str | None = None,
    approval=None,
) -> Registration:
    """Register the released version at ``uri`` (idempotent; see the module's docstring)."""
    lineage = lineage or Lineage()
    if lineage.source_kind not in SOURCE_KINDS:
        raise ConfigError(f"--source-kind must be one of {', '.join(SOURCE_KINDS)}, got {lineage.source_kind!r}")
    storage_path = version_prefix(model_name, version)  # the release's naming rules, before any write
    if not uri.startswith("s3://") or not uri.rstrip("/").endswith(storage_path.rstrip("/")):
        raise ConfigError(f"--uri must be the released version's s3:// prefix (…/{storage_path}), got {uri!r}")
    parts = _registry_address(url)
    model_dir = Path(model_dir)
    properties = version_properties(model_dir, validation, lineage)
    if model_card:
        properties["model_card"] = model_card
    if approval is not None:  # steps/approval.Approval: the gate's pending request
        properties.update(approval.properties())
    later = (
        f"the release {uri} is published and safe; register it later with `anomaly-mlops register "
        f"--registry-url URL --model-dir DIR --model-name {model_name} --version {version} --uri {uri}`"
    )
    client = _client(parts, token, author, later)
    try:
        known = client.get_registered_model(model_name)  # None when new (get_model_version raises then)
        existing = client.get_model_version(model_name, version) if known is not None else None
        if existing is not None:
            held = (existing.custom_properties or {}).get("manifest_sha256")
            if held != properties["manifest_sha256"]:
                raise VersionConflictError(
                    f"{model_name} {version} is registered with other content (manifest {str(held)[:12]}…, this one "
                    f"{properties['manifest_sha256'][:12]}…); registered versions are not overwritten"
                )
            log.info("%s %s is already registered with this manifest; nothing to do", model_name, version)
            return Registration(known.id, existing.id, model_name, version, "unchanged")
        model = client.register_model(
            model_name,
            uri,
            version=version,
            model_format_name=MODEL_FORMAT[0],
            model_format_version=MODEL_FORMAT[1],
            storage_key=storage_key,
            storage_path=storage_path,
            model_source_kind=lineage.source_kind,
            model_source_id=lineage.run_id or None,
            model_source_name=lineage.run_name or None,
            model_source_group=lineage.namespace or None,
            version_description=f"anomaly detector trained {properties.get('trained_at', '')}".strip(),
            metadata=properties,
        )
        registered = client.get_model_version(model_name, version)
    except VersionConflictError:
        raise
    except Exception as exc:  # noqa: BLE001 - the client raises aiohttp, pydantic and its own errors
        raise RegistryError(
            f"the Model Registry at {redact(url)} failed the registration ({_reason(exc)}); {later}"
        ) from exc
    log.info("registered %s %s in the Model Registry (version id %s)", model_name, version, registered.id)
    return Registration(model.id, registered.id, model_name, version, "registered")


def _registry_address(url: str):
    """``url`` split, or a ConfigError when it is no http(s) address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--registry-url must be http(s)://HOST[:PORT], got {redact(url)!r}")
    return parts


def _client(parts, token: str | None, author: str, later: str):
    import warnings

    try:
        from model_registry import ModelRegistry
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise RegistryError(f"the model-registry client is not installed: {exc}") from exc
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its "no token" and port hints: our errors say what matters
            return ModelRegistry(
                f"{parts.scheme}://{parts.hostname}",
                port,
                author=author,
                is_secure=parts.scheme == "https",
                user_token=token or "none",
            )
    except Exception as exc:  # noqa: BLE001
        raise RegistryError(
            f"cannot reach the Model Registry at {parts.scheme}://{parts.netloc} ({_reason(exc)}); {later}"
        ) from exc


def _reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}")[:200]


# The labels OpenShift AI's Model Registry controller reads on an InferenceService deployed
# from the registry (and writes itself on one deployed from the dashboard).
LABEL_MODEL_ID = "modelregistry.kubeflow.org/registered-model-id"
LABEL_VERSION_ID = "modelregistry.kubeflow.org/model-version-id"
LABEL_REGISTRY = "modelregistry.kubeflow.org/name"


@dataclass
class RegisteredVersion:
    registered_model_id: str
    model_version_id: str
    name: str
    version: str
    uri: str
    storage_key: str | None
    storage_path: str | None

    def labels(self, registry_name: str) -> dict[str, str]:
        """The InferenceService labels that link it to this version of ``registry_name``."""
        return {LABEL_MODEL_ID: self.registered_model_id, LABEL_VERSION_ID: self.model_version_id,
                LABEL_REGISTRY: registry_name}  # fmt: skip


def registry_labels(registration: str | dict, registry_name: str) -> dict[str, str]:
    """The InferenceService labels for a registration (register's JSON output, or its dict);
    none without one or without the registry's name."""
    if not registration or not registry_name:
        return {}
    found = json.loads(registration) if isinstance(registration, str) else registration
    return {LABEL_MODEL_ID: str(found["registered_model_id"]), LABEL_VERSION_ID: str(found["model_version_id"]),
            LABEL_REGISTRY: registry_name}  # fmt: skip


def resolve_registered(
    url: str, reference: str, token: str | None = None, *, serving: bool = False
) -> RegisteredVersion:
    """``NAME[:VERSION]`` in the registry, with its model artifact's storage: that version;
    without one, the newest LIVE version, or with ``serving`` the one marked serving by the last
    promote or rollback (set_serving_state)."""
    name, _, version = reference.partition(":")
    if not name:
        raise ConfigError(f"--from-registry takes NAME[:VERSION], got {reference!r}")
    parts = _registry_address(url)
    client = _client(parts, token, "anomaly-mlops", "nothing was changed")
    try:
        model = client.get_registered_model(name)
        if model is None:
            raise ConfigError(f"the Model Registry has no registered model {name!r}")
        if version:
            found = client.get_model_version(name, version)
            wanted = f"version {version!r}"
        else:
            if serving:  # the one marked last
                candidates = [
                    v for v in client.get_model_versions(name) if (v.custom_properties or {}).get("serving") == "true"
                ]
                wanted, when = "version marked serving (no promote yet)", "last_update_time_since_epoch"
            else:  # the newest
                candidates = [v for v in client.get_model_versions(name) if str(v.state).endswith("LIVE")]
                wanted, when = "LIVE version", "create_time_since_epoch"
            found = max(candidates, key=lambda v: int(getattr(v, when) or 0)) if candidates else None
        if found is None:
            raise ConfigError(f"the Model Registry has no {wanted} of {name!r}")
        artifact = client.get_model_artifact(name, found.name)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise RegistryError(
            f"the Model Registry at {redact(url)} could not resolve {reference} ({_reason(exc)})"
        ) from exc
    if artifact is None or not artifact.uri:
        raise ConfigError(f"{name} {found.name} has no model artifact with a URI in the Model Registry")
    return RegisteredVersion(model.id, found.id, name, found.name, artifact.uri, artifact.storage_key,
                             artifact.storage_path)  # fmt: skip


REGISTRY_URL_ENV = "ANOMALY_MLOPS_REGISTRY_URL"  # where champion "registry:NAME" looks
REGISTRY_TOKEN_FILE_ENV = "ANOMALY_MLOPS_REGISTRY_TOKEN_FILE"


def set_serving_state(
    url: str,
    model_name: str,
    serving: str | None,
    retired: str | None,
    token: str | None = None,
    properties: dict[str, dict[str, str]] | None = None,
) -> dict[str, str]:
    """After a promote or a rollback: the version now serving LIVE, the one it replaced
    ARCHIVED, so the registry says what serves; ``properties`` adds custom properties per
    version (the approval decision). Versions the registry does not hold are left out
    (deployed before registration was on). Returns {version: state} as set."""
    from model_registry.types import ModelVersionState

    properties = properties or {}
    changes = {}
    for version, state in ((retired, ModelVersionState.ARCHIVED), (serving, ModelVersionState.LIVE)):
        if version and not (version == serving and state is ModelVersionState.ARCHIVED):
            serving_flag = {"serving": str(state is ModelVersionState.LIVE).lower()}
            changes[version] = (state, {**properties.get(version, {}), **serving_flag})
    for version, extra in properties.items():
        changes.setdefault(version, (None, extra))
    return update_versions(url, model_name, changes, token, "the deployment itself is done")


def update_versions(
    url: str, model_name: str, changes: dict[str, tuple], token: str | None, done: str
) -> dict[str, str]:
    """Per version name, (state or None, custom properties to set). Versions the registry does
    not hold are left out. Returns {version: state} for those changed; ``done`` says, in an
    error, what already happened and stays."""
    client = _client(_registry_address(url), token, "anomaly-mlops", done)
    changed: dict[str, str] = {}
    try:
        if client.get_registered_model(model_name) is None:
            return changed
        for version, (state, properties) in changes.items():
            found = client.get_model_version(model_name, version)
            if found is None:
                continue
            if state is not None:
                found.state = state
            found.custom_properties = {**(found.custom_properties or {}), **properties}
            client.update(found)
            changed[version] = str(getattr(found.state, "value", found.state))
    except Exception as exc:  # noqa: BLE001
        raise RegistryError(
            f"the Model Registry at {redact(url)} could not record the change to {model_name} ({_reason(exc)}); {done}"
        ) from exc
    return changed


def version_properties_of(url: str, model_name: str, version: str, token: str | None = None) -> dict | None:
    """The custom properties (and ``state``) of one registered version; None when the registry
    does not hold it."""
    client = _client(_registry_address(url), token, "anomaly-mlops", "nothing was changed")
    try:
        if client.get_registered_model(model_name) is None:
            return None
        found = client.get_model_version(model_name, version)
    except Exception as exc:  # noqa: BLE001
        raise RegistryError(
            f"the Model Registry at {redact(url)} could not read {model_name} {version} ({_reason(exc)})"
        ) from exc
    if found is None:
        return None
    return {**(found.custom_properties or {}), "state": str(getattr(found.state, "value", found.state))}


def serving_from_registry(model_name: str) -> str:
    """Champion ``registry:NAME``: the s3:// URI of the version the registry says serves (marked
    ``serving`` by the last promote or rollback), from the registry at $ANOMALY_MLOPS_REGISTRY_URL."""
    import os

    from anomaly_mlops.params import read_token

    url = os.environ.get(REGISTRY_URL_ENV)
    if not url:
        raise ConfigError(
            f"champion 'registry:{model_name}' needs ${REGISTRY_URL_ENV} (the Model Registry's REST endpoint)"
        )
    token = read_token(os.environ.get(REGISTRY_TOKEN_FILE_ENV))
    return resolve_registered(url, model_name, token, serving=True).uri
