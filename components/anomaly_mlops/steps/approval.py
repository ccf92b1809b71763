"""The approval gate: a person approves a version before it takes all traffic.

The decision lives on the version in the Model Registry (custom properties ``approval``,
``approval_by``, ``approval_message``, ``approval_requested_at``, ``approval_deadline``,
``approval_decided_at``, ``approval_via``), so the dashboard, the model card and
``anomaly-mlops promote --when-approved`` read one record.

- Requested at registration (``register --require-approval``): ``pending`` with a deadline.
- Decided by ``anomaly-mlops approve|reject`` (or by editing ``approval`` in the dashboard),
  or, in Tekton, by OpenShift Pipelines' manual approval gate: an ``ApprovalTask``
  (openshift-pipelines.org/v1alpha1) whose responses ``approval_from_task`` reads.
- A decision is final: a rejected or timed-out version is never promoted by this gate.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from anomaly_mlops.errors import AnomalyMLOpsError, ConfigError

PENDING, APPROVED, REJECTED, TIMED_OUT = "pending", "approved", "rejected", "timed-out"
STATES = (PENDING, APPROVED, REJECTED, TIMED_OUT)
DEFAULT_TIMEOUT_HOURS = 24.0

# The manual approval gate's CRD (../shared/schemas/manual-approval-gate/v0.9.0).
APPROVAL_TASK_GROUP, APPROVAL_TASK_VERSION, APPROVAL_TASK_PLURAL = (
    "openshift-pipelines.org",
    "v1alpha1",
    "approvaltasks",
)
# Tekton labels every CustomRun with its PipelineRun and pipeline task (tektoncd/pipeline v1.15.0
# pkg/reconciler/pipelinerun/pipelinerun.go l.1853-1870), and the gate copies the CustomRun's
# labels onto the ApprovalTask it creates (manual-approval-gate v0.9.0
# pkg/reconciler/approvaltask/utils.go l.395-400).
PIPELINE_RUN_LABEL, PIPELINE_TASK_LABEL = "tekton.dev/pipelineRun", "tekton.dev/pipelineTask"


class ApprovalError(AnomalyMLOpsError):
    """The version is not approved (rejected, timed out, or still pending)."""

    exit_code = 7


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(stamp: str) -> datetime | None:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Approval:
    state: str
    by: tuple[str, ...] = ()
    message: str = ""
    requested_at: str = ""
    deadline: str = ""
    decided_at: str = ""
    via: str = ""

    def properties(self) -> dict[str, str]:
        """The registry's custom properties for this approval (empty ones left out)."""
        values = {
            "approval": self.state,
            "approval_by": ",".join(self.by),
            "approval_message": self.message[:500],
            "approval_requested_at": self.requested_at,
            "approval_deadline": self.deadline,
            "approval_decided_at": self.decided_at,
            "approval_via": self.via,
        }
        return {k: v for k, v in values.items() if v}

    @classmethod
    def from_properties(cls, properties: dict) -> Approval | None:
        """The approval a version's custom properties record; None when it was never gated."""
        state = str(properties.get("approval") or "").strip().lower()
        if not state:
            return None
        if state not in STATES:  # edited by hand in the dashboard: say so instead of guessing
            raise ConfigError(f"approval {state!r} is not one of {', '.join(STATES)}")
        by = tuple(b for b in str(properties.get("approval_by") or "").split(",") if b)
        return cls(
            state, by, str(properties.get("approval_message") or ""), str(properties.get("approval_requested_at") or ""),
            str(properties.get("approval_deadline") or ""), str(properties.get("approval_decided_at") or ""),
            str(properties.get("approval_via") or ""),
        )  # fmt: skip

    def expired(self, now: datetime | None = None) -> bool:
        deadline = _parse(self.deadline)
        return self.state == PENDING and deadline is not None and (now or _now()) > deadline

    def timed_out(self, now: datetime | None = None, via: str = "") -> Approval:
        return replace(self, state=TIMED_OUT, decided_at=_stamp(now or _now()), via=via or self.via)

    def describe(self) -> str:
        who = f" by {', '.join(self.by)}" if self.by else ""
        when = f" until {self.deadline}" if self.state == PENDING and self.deadline else ""
        return f"{self.state}{who}{when}"


def pending_approval(timeout_hours: float = DEFAULT_TIMEOUT_HOURS, now: datetime | None = None) -> Approval:
    """The approval a version is registered with when the gate is on."""
    if not 0 < timeout_hours <= 24 * 90:
        raise ConfigError(f"--approval-timeout-hours must be above 0 and at most 2160 (90 days), got {timeout_hours}")
    now = now or _now()
    return Approval(PENDING, requested_at=_stamp(now), deadline=_stamp(now + timedelta(hours=timeout_hours)))


def read_approval(url: str, model_name: str, version: str, token: str | None = None) -> tuple[Approval | None, dict]:
    """(the version's approval or None, its custom properties); a ConfigError when the registry
    does not hold the version."""
    from anomaly_mlops.steps.registry import version_properties_of

    properties = version_properties_of(url, model_name, version, token)
    if properties is None:
        raise ConfigError(f"the Model Registry holds no version {version!r} of {model_name!r}")
    return Approval.from_properties(properties), properties


def decide(
    url: str,
    model_name: str,
    version: str,
    *,
    approve: bool,
    by: str,
    message: str = "",
    token: str | None = None,
    now: datetime | None = None,
) -> Approval:
    """``anomaly-mlops approve|reject``: record a person's decision on a pending version."""
    from anomaly_mlops.steps.registry import update_versions

    if not by.strip() or "," in by:
        raise ConfigError(f"--by must name one person (no commas), got {by!r}")
    for flag, value in (("--model-name", model_name), ("--version", version)):
        if not value.strip():  # asked of the registry, an empty name reads as "no such version"
            raise ConfigError(f"{flag} must name the model version to decide on, got {value!r}")
    wanted = APPROVED if approve else REJECTED
    current, _ = read_approval(url, model_name, version, token)
    if current is None:
        raise ConfigError(
            f"{model_name} {version} was not registered awaiting approval (register --require-approval); nothing to decide"
        )
    if current.state == wanted and by.strip() in current.by:
        return current  # the same decision again: a retry
    if current.state != PENDING:
        raise ApprovalError(f"{model_name} {version} is already {current.describe()}; a decision is final")
    if current.expired(now):
        raise ApprovalError(
            f"the approval of {model_name} {version} timed out at {current.deadline}; release it again to ask anew"
        )
    decided = replace(
        current, state=wanted, by=(by.strip(),), message=message, decided_at=_stamp(now or _now()),
        via="anomaly-mlops " + ("approve" if approve else "reject"),
    )  # fmt: skip
    update_versions(url, model_name, {version: (None, decided.properties())}, token, "nothing was changed")
    return decided


def approval_from_task(api, namespace: str, pipeline_run: str, pipeline_task: str = "approve") -> Approval:
    """The decision the manual approval gate recorded for ``pipeline_task`` of ``pipeline_run``:
    approved (by whom), rejected (by whom), timed out (rejected with no one rejecting: the gate
    marks a timeout so, manual-approval-gate v0.9.0 pkg/reconciler/approvaltask/approvaltask.go
    l.218-226), or pending."""
    from kubernetes.client.exceptions import ApiException

    selector = f"{PIPELINE_RUN_LABEL}={pipeline_run},{PIPELINE_TASK_LABEL}={pipeline_task}"
    try:
        found = api.list_namespaced_custom_object(
            APPROVAL_TASK_GROUP, APPROVAL_TASK_VERSION, namespace, APPROVAL_TASK_PLURAL, label_selector=selector
        )
    except ApiException as exc:
        if exc.status == 404:
            raise ConfigError(
                "the API server has no ApprovalTask resource: install OpenShift Pipelines' manual approval gate"
            ) from exc
        raise ConfigError(f"cannot list ApprovalTasks in {namespace} (HTTP {exc.status} {exc.reason})") from exc
    items = found.get("items") or []
    if not items:
        raise ConfigError(
            f"no ApprovalTask for pipeline task {pipeline_task!r} of PipelineRun {pipeline_run} in {namespace}"
        )
    task = items[0]
    status = task.get("status") or {}
    approved, rejected, messages = [], [], []
    for response in status.get("approversResponse") or []:
        group = response.get("type") == "Group"
        members = (response.get("groupMembers") or [response]) if group else [response]
        for member in members:
            (approved if member.get("response") == APPROVED else rejected).append(member["name"])
            if member.get("message"):
                messages.append(f"{member['name']}: {member['message']}")
    state = str(status.get("state") or PENDING)
    via = f"ApprovalTask {namespace}/{task['metadata']['name']}"
    started = str(status.get("startTime") or "")
    if state == APPROVED:
        return Approval(APPROVED, tuple(approved), "; ".join(messages), started, via=via, decided_at=_stamp(_now()))
    if state == REJECTED:
        final = REJECTED if rejected else TIMED_OUT
        return Approval(final, tuple(rejected), "; ".join(messages), started, via=via, decided_at=_stamp(_now()))
    return Approval(PENDING, requested_at=started, via=via)
