"""Ending a rollout: promote it or roll it back, and tell the Model Registry what serves and
who decided (``anomaly-mlops promote|rollback``, the verify step, the Tekton tasks).

- Promote: all traffic to the new version; in the registry it becomes LIVE and ``serving``,
  the one it replaced ARCHIVED.
- Rollback: the previous version serves again; the registry the other way round.
- With the approval gate, promote refuses a version that is not approved, and the decision
  (who, when, through what) is recorded on the version (steps/approval.py).
- ``release_when_approved`` is the recurring check the KFP pipelines rely on (they have no
  manual step): it promotes the version under approval once approved, and rolls it back once
  rejected or past its deadline; while it is pending it changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from anomaly_mlops.errors import ConfigError, DeployError
from anomaly_mlops.steps.approval import APPROVED, PENDING, Approval, ApprovalError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryTarget:
    """Where promote and rollback record what serves: the registry and the registered model;
    with ``cards`` (the S3 settings of the releases), the decision also goes on the version's
    model card."""

    url: str
    model_name: str
    token: str | None = None
    cards: object | None = None


def served_versions(client, name: str, namespace: str) -> tuple[str | None, str | None]:
    """(model version, previous model version) the InferenceService's annotations record."""
    version, previous, _ = _served(client, name, namespace)
    return version, previous


def _served(client, name: str, namespace: str) -> tuple[str | None, str | None, bool]:
    from anomaly_mlops.steps.deploy import MODEL_VERSION_ANNOTATION, PREVIOUS_VERSION_ANNOTATION

    isvc = client.get(name, namespace)
    if isvc is None:
        raise DeployError(f"InferenceService {namespace}/{name} does not exist")
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    split = "canaryTrafficPercent" in ((isvc.get("spec") or {}).get("predictor") or {})
    return annotations.get(MODEL_VERSION_ANNOTATION), annotations.get(PREVIOUS_VERSION_ANNOTATION), split


def promote(
    client, name: str, namespace: str, registry: RegistryTarget | None = None, approval: Approval | None = None
) -> dict:
    """All traffic to the latest revision; with ``approval``, only when it is approved. A
    rollout that already has all traffic (RawDeployment, a first release) is not written to."""
    version, previous, split = _served(client, name, namespace)
    if approval is not None and approval.state != APPROVED:
        raise ApprovalError(f"{namespace}/{name} {version}: the approval is {approval.describe()}; not promoted")
    if split:
        client.promote(name, namespace)
    out: dict = {"promoted": name, "version": version}
    if approval is not None:
        out["approval"] = approval.describe()
    if registry:
        extra = {version: approval.properties()} if approval and version else None
        out["registry_states"] = _record(registry, version, previous, extra)
        _card(registry, version, approval, out)
    return out


def rollback(
    client, name: str, namespace: str, registry: RegistryTarget | None = None, approval: Approval | None = None
) -> dict:
    """The previous version serves again; ``approval`` (a rejection or timeout) is recorded on
    the version rolled back, even when there is nothing to roll back to."""
    version, previous = served_versions(client, name, namespace)
    extra = {version: approval.properties()} if approval and version else None
    try:
        done = client.rollback(name, namespace)
    except DeployError as exc:
        if registry and extra:
            _record(registry, None, None, extra)
            _card(registry, version, approval, {})
        if approval is not None and not previous:
            raise DeployError(
                f"{namespace}/{name}: {version} is {approval.describe()}, but nothing served before it, so it still "
                "serves; delete the InferenceService or deploy an approved version"
            ) from exc
        raise
    out: dict = {"rolled_back": name, "done": done, "version": version, "serving": previous}
    if approval is not None:
        out["approval"] = approval.describe()
    if registry:
        out["registry_states"] = _record(registry, previous, version, extra)
        _card(registry, version, approval, out)
    return out


def _record(registry: RegistryTarget, serving, retired, extra) -> dict[str, str]:
    from anomaly_mlops.steps.registry import set_serving_state

    return set_serving_state(registry.url, registry.model_name, serving, retired, registry.token, properties=extra)


def _card(registry: RegistryTarget, version: str | None, approval: Approval | None, out: dict) -> None:
    """The decision on the version's model card, when the card store is given."""
    if registry.cards is None or approval is None or not version:
        return
    from anomaly_mlops.steps.model_card import refresh_approval

    who = f" by {', '.join(approval.by)}" if approval.by else ""
    via = f" through {approval.via}" if approval.via else ""
    said = f": {approval.message}" if approval.message else ""
    detail = f"Decided {approval.decided_at or 'now'}{who}{via}{said}."
    out["model_card"] = refresh_approval(registry.model_name, version, approval.state, detail, registry.cards)


def release_when_approved(
    client, name: str, namespace: str, registry: RegistryTarget, now: datetime | None = None
) -> dict:
    """``promote --when-approved``: act on the approval of the version the InferenceService
    serves. Approved: promote (once). Rejected or past its deadline: roll back (once).
    Pending: nothing. Not gated: nothing."""
    version, _ = served_versions(client, name, namespace)
    if not version:
        raise ConfigError(f"{namespace}/{name} records no model version (annotation anomaly-mlops.io/model-version)")
    from anomaly_mlops.steps.registry import version_properties_of

    base = {"isvc": f"{namespace}/{name}", "version": version}
    properties = version_properties_of(registry.url, registry.model_name, version, registry.token)
    if properties is None:  # deployed before registration was on, or by hand
        return {**base, "action": "none", "reason": f"the Model Registry holds no version {version!r}"}
    approval = Approval.from_properties(properties)
    serving = properties.get("serving")
    if approval is None:
        return {**base, "action": "none", "reason": "the version was released without the approval gate"}
    if approval.expired(now):
        approval = approval.timed_out(now, via="anomaly-mlops promote --when-approved")
    if approval.state == PENDING:
        return {**base, "action": "none", "reason": f"approval {approval.describe()}"}
    if approval.state == APPROVED:
        if serving == "true":
            return {**base, "action": "none", "reason": "already promoted"}
        return {**base, "action": "promoted", **promote(client, name, namespace, registry, approval)}
    if serving == "false":
        return {**base, "action": "none", "reason": f"already rolled back ({approval.describe()})"}
    log.warning("%s/%s %s is %s: rolling back", namespace, name, version, approval.describe())
    return {**base, "action": "rolled back", **rollback(client, name, namespace, registry, approval)}
