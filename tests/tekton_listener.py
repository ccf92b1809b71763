"""A Tekton Triggers EventListener, as far as our drift trigger uses it, with Tekton's rules
(tektoncd/triggers v0.37.0, 72d276a2):

- the CEL interceptor evaluates the filter on ``body``, ``header`` and ``requestURL``; an
  evaluation error or any result but true stops the event
  (pkg/interceptors/cel/cel.go l.160-170); overlays become ``extensions.<key>``;
- Tekton's CEL functions we use: ``header.canonical(name)``, ``compareSecret(key, secret)``
  (a constant-time comparison with the Secret's key in the listener's namespace, l.247-278
  of pkg/interceptors/cel/triggers.go) and ``translate(regexp, replacement)`` (Go's
  ReplaceAllString, l.371); CEL itself is cel-python's (the CEL spec Tekton's cel-go implements);
- bindings resolve ``$(body.…)``/``$(extensions.…)`` paths; a path that finds nothing takes
  the template param's default if it has one, else fails the event
  (pkg/template/event.go l.127-138);
- ``$(tt.params.…)`` is replaced in the resource templates, which are created as they come:
  a name that exists is refused, as the API server refuses it (pkg/resources/create.go l.108).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TRIGGERS = ROOT / "manifests" / "tekton" / "triggers"


class Refused(Exception):
    """The event started nothing; the message says where it stopped."""


def _documents(*names: str) -> dict[tuple[str, str], dict]:
    found = {}
    for name in names:
        for doc in yaml.safe_load_all((TRIGGERS / name).read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def _cel_program(expression: str, secrets: dict[tuple[str, str], str]):
    import celpy
    from celpy import celtypes

    def canonical(headers, name):
        wanted = str(name).lower()
        for key, value in headers.items():
            if str(key).lower() == wanted:
                return celtypes.StringType(value)
        return celtypes.StringType("")

    def compare_secret(value, key, secret_name):
        import hmac

        stored = secrets.get((str(secret_name), str(key)))
        if stored is None:
            raise ValueError(f"failed to find secret {secret_name}/{key} in compareSecret")
        return celtypes.BoolType(hmac.compare_digest(stored.encode(), str(value).encode()))

    def translate(text, pattern, replacement):
        return celtypes.StringType(re.sub(str(pattern), str(replacement), str(text)))

    env = celpy.Environment()
    return env.program(
        env.compile(expression),
        functions={"canonical": canonical, "compareSecret": compare_secret, "translate": translate},
    )


def _lookup(event: dict, path: str):
    node = event
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node if isinstance(node, str) else json.dumps(node)


@dataclass
class DriftListener:
    """The drift EventListener of manifests/tekton/triggers, receiving Alertmanager's posts."""

    secrets: dict[tuple[str, str], str]
    created: dict[str, dict] = field(default_factory=dict)  # PipelineRuns by name
    refusals: list[str] = field(default_factory=list)
    template_override: dict | None = None  # a changed TriggerTemplate, for rule tests

    def __post_init__(self):
        self.objects = _documents("drift-eventlistener.yaml", "drift-bindings.yaml", "drift-template.yaml")
        (listener,) = [d for (kind, _), d in self.objects.items() if kind == "EventListener"]
        (self.trigger,) = listener["spec"]["triggers"]

    def receive(self, body: dict, headers: dict) -> dict:
        """The PipelineRun this event creates; Refused when it starts nothing."""
        try:
            run = self._process(body, headers)
        except Refused as exc:
            self.refusals.append(str(exc))
            raise
        if run["metadata"]["name"] in self.created:
            message = f'pipelineruns.tekton.dev "{run["metadata"]["name"]}" already exists'
            self.refusals.append(message)
            raise Refused(message)
        self.created[run["metadata"]["name"]] = run
        return run

    def _process(self, body: dict, headers: dict) -> dict:
        import celpy

        (interceptor,) = self.trigger["interceptors"]
        assert interceptor["ref"]["name"] == "cel"
        params = {p["name"]: p["value"] for p in interceptor["params"]}
        activation = {"body": celpy.json_to_cel(body), "header": celpy.json_to_cel(headers)}
        try:
            passed = _cel_program(params["filter"], self.secrets).evaluate(activation)
        except Exception as exc:  # noqa: BLE001 - an evaluation error stops the event
            raise Refused(f"error evaluating cel expression: {exc}") from exc
        if passed is not True and not (isinstance(passed, celpy.celtypes.BoolType) and bool(passed)):
            raise Refused("expression did not return true")
        extensions = {}
        for overlay in params.get("overlays", []):
            try:
                extensions[overlay["key"]] = str(_cel_program(overlay["expression"], self.secrets).evaluate(activation))
            except Exception as exc:  # noqa: BLE001
                raise Refused(f"error evaluating overlay {overlay['key']}: {exc}") from exc
        template = self.template_override or self.objects[("TriggerTemplate", self.trigger["template"]["ref"])]
        defaults = {p["name"]: p["default"] for p in template["spec"]["params"] if "default" in p}
        event = {"body": body, "header": headers, "extensions": extensions}
        values = {}
        for binding in self.trigger["bindings"]:
            for param in self.objects[("TriggerBinding", binding["ref"])]["spec"]["params"]:
                text = param["value"]
                for path in re.findall(r"\$\(([^)]+)\)", text):
                    try:
                        found = _lookup(event, path)
                    except KeyError:
                        if param["name"] not in defaults:
                            raise Refused(
                                f"failed to replace JSONPath value for param {param['name']}: {text}"
                            ) from None
                        found = defaults[param["name"]]
                    text = text.replace(f"$({path})", found)
                values[param["name"]] = text
        for spec in template["spec"]["params"]:
            if spec["name"] not in values:
                if "default" not in spec:
                    raise Refused(f"no value for the template param {spec['name']}")
                values[spec["name"]] = spec["default"]
        (resource,) = template["spec"]["resourcetemplates"]
        rendered = json.dumps(resource)
        for name, value in values.items():
            rendered = rendered.replace(f"$(tt.params.{name})", value.replace('"', '\\"'))
        return json.loads(rendered)


def alertmanager_message(
    labels: dict | None = None,
    *,
    status: str = "firing",
    alertnames=("AnomalyDetectorFlaggingAboveCalibration", "AnomalyDetectorNewNormal"),
    starts_at: str = "2026-12-07T04:00:00.123Z",
) -> dict:
    """An Alertmanager v4 webhook message for one group (alertmanager v0.34.0
    notify/webhook/webhook.go Message; template/template.go Data and Alert)."""
    group = {"namespace": "models", "model": "anomaly-detector", "version": "v20261207-0342-ab12cd34"}
    if labels is not None:
        group = labels
    alerts = [
        {
            "status": status,
            "labels": {**group, "alertname": name, "severity": "warning", "component": "anomaly-detector"},
            "annotations": {"summary": "drift"},
            "startsAt": starts_at,
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "fingerprint": f"{abs(hash(name)):016x}"[:16],
        }
        for name in alertnames
    ]
    return {
        "version": "4",
        "groupKey": '{}/{component="anomaly-detector"}:' + json.dumps(group, sort_keys=True),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "anomaly-mlops-retraining",
        "groupLabels": group,
        "commonLabels": {**group, "component": "anomaly-detector"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    }
