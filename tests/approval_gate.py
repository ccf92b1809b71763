"""OpenShift Pipelines' manual approval gate, as its controller creates and updates an
ApprovalTask (openshift-pipelines/manual-approval-gate v0.9.0; the CRD is
../shared/schemas/manual-approval-gate/v0.9.0/approvaltasks.yaml):

- ``validate_params``: ValidateCustomRunParameters (pkg/reconciler/approvaltask/utils.go
  l.96-129): approvers required, each a non-empty string, ``group:NAME`` without spaces;
  ``numberOfApprovalsRequired`` a positive integer.
- ``create``: createApprovalTask (utils.go l.340-443): approvers come from the array value
  only (a string value passes validation as JSON yet creates no approvers), the CustomRun's
  labels are copied, the state starts ``pending``.
- ``respond``: updateApprovalState (utils.go l.540-650): any rejection rejects; enough
  distinct approving users approve.
- ``time_out``: a timeout marks the task rejected with no one rejecting (approvaltask.go
  l.218-226).
"""

from __future__ import annotations

import json


def validate_params(params: dict) -> list[str]:
    errors = []
    approvers = params.get("approvers")
    if approvers is None:
        return ["no valid approvers found - at least one approver is required"]
    if isinstance(approvers, str):
        try:
            approvers = json.loads(approvers)
        except ValueError as exc:
            return [f"failed to parse JSON '{approvers}' - {exc}"]
    count = 0
    for i, approver in enumerate(approvers):
        if not isinstance(approver, str) or not approver.strip():
            errors.append(f"approvers[{i}]: approver name cannot be empty")
        elif " :" in approver or ": " in approver:
            errors.append(f"approvers[{i}]: invalid group format '{approver}'")
        elif approver.startswith("group:") and (not approver[6:].strip() or " " in approver[6:] or ":" in approver[6:]):
            errors.append(f"approvers[{i}]: invalid group format '{approver}'")
        else:
            count += 1
    required = params.get("numberOfApprovalsRequired")
    if required is not None:
        try:
            if int(required) <= 0:
                errors.append("numberOfApprovalsRequired: must be greater than 0")
        except (TypeError, ValueError):
            errors.append(f"numberOfApprovalsRequired: '{required}' is not a valid integer")
    if not count and not errors:
        errors.append("no valid approvers found - at least one approver is required")
    return errors


def create(name: str, namespace: str, params: dict, labels: dict, start: str = "2026-12-07T06:00:00Z") -> dict:
    """The ApprovalTask the controller creates for a CustomRun with ``params`` and ``labels``."""
    assert not validate_params(params), validate_params(params)
    approvers, seen = [], set()
    names = params["approvers"] if isinstance(params["approvers"], list) else []  # ArrayVal only
    for entry in names:
        kind, _, group = entry.partition("group:")
        approver = {"name": group or entry, "input": "pending", "type": "Group" if group else "User"}
        if approver["name"] not in seen:
            approvers.append(approver)
            seen.add(approver["name"])
    required = int(params.get("numberOfApprovalsRequired", "1"))
    return {
        "apiVersion": "openshift-pipelines.org/v1alpha1",
        "kind": "ApprovalTask",
        "metadata": {"name": name, "namespace": namespace, "labels": {**labels, "tekton.dev/customRun": name}},
        "spec": {
            "approvers": approvers,
            "numberOfApprovalsRequired": required,
            "description": params.get("description", ""),
        },  # fmt: skip
        "status": {
            "state": "pending",
            "approvers": [a["name"] for a in approvers],
            "approversResponse": [],
            "approvalsRequired": required,
            "approvalsReceived": 0,
            "startTime": start,
        },  # fmt: skip
    }


def respond(task: dict, user: str, decision: str, message: str = "", group: str | None = None) -> dict:
    """``tkn-approvaltask approve|reject`` by ``user`` (as a member of ``group``), then the
    controller's status update."""
    assert decision in ("approve", "reject")
    approvers = task["spec"]["approvers"]
    if group:
        entry = next(a for a in approvers if a["name"] == group and a["type"] == "Group")
        members = entry.setdefault("users", [])
        members[:] = [m for m in members if m["name"] != user] + [{"name": user, "input": decision, "message": message}]
        entry["input"] = "reject" if any(m["input"] == "reject" for m in members) else "approve"
    else:
        entry = next(a for a in approvers if a["name"] == user and a["type"] == "User")
        entry.update(input=decision, message=message)
    responses, approving = [], set()
    for approver in approvers:
        if approver["input"] not in ("approve", "reject"):
            continue
        answer = {"approve": "approved", "reject": "rejected"}
        if approver["type"] == "User":
            responses.append({"name": approver["name"], "type": "User", "response": answer[approver["input"]],
                              "message": approver.get("message", "")})  # fmt: skip
            if approver["input"] == "approve":
                approving.add(approver["name"])
        else:
            members = [{"name": m["name"], "response": answer[m["input"]], "message": m.get("message", "")}
                       for m in approver.get("users", [])]  # fmt: skip
            responses.append({"name": approver["name"], "type": "Group", "response": answer[approver["input"]],
                              "groupMembers": members})  # fmt: skip
            approving |= {m["name"] for m in approver.get("users", []) if m["input"] == "approve"}
    status = task["status"]
    status["approversResponse"] = responses
    status["approvalsReceived"] = len(approving)
    if any(a["input"] == "reject" for a in approvers):
        status["state"] = "rejected"
    elif len(approving) >= task["spec"]["numberOfApprovalsRequired"]:
        status["state"] = "approved"
    return task


def time_out(task: dict) -> dict:
    task["status"]["state"] = "rejected"
    return task
