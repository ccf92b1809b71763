"""Validate objects against the openAPIV3Schema of a real CustomResourceDefinition in
../shared/schemas, as the API server's structural schema validation does: types, required
fields, enums, patterns, bounds, int-or-string, maps (additionalProperties) and unknown
fields refused (../shared/schemas/README.md), each error with its field path."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas"
CRDS = {
    ("serving.kserve.io", "InferenceService"): "kserve/odh-v2.25/inferenceservices.yaml",
    ("serving.kserve.io", "ServingRuntime"): "kserve/odh-v2.25/servingruntimes.yaml",
    ("tekton.dev", "Task"): "tekton-pipeline/task.yaml",
    ("tekton.dev", "Pipeline"): "tekton-pipeline/pipeline.yaml",
    ("tekton.dev", "PipelineRun"): "tekton-pipeline/pipelinerun.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): "prometheus-operator/v0.93.0/prometheusrules.yaml",
}


def available() -> bool:
    return SCHEMAS.is_dir()


@functools.cache
def schema_for(api_version: str, kind: str) -> dict:
    group, _, version = api_version.rpartition("/")
    crd = yaml.safe_load((SCHEMAS / CRDS[(group, kind)]).read_text())
    for served in crd["spec"]["versions"]:
        if served["name"] == version and served.get("served", True):
            return served["schema"]["openAPIV3Schema"]
    raise KeyError(f"{kind} {api_version} is not served by {CRDS[(group, kind)]}")


def errors(obj: dict) -> list[str]:
    """Every problem with ``obj``, as '<path>: <what>'; [] when it would be accepted."""
    schema = schema_for(obj.get("apiVersion", ""), obj.get("kind", ""))
    found: list[str] = []
    # ObjectMeta is checked by the server itself; status only on writes to the status subresource.
    skipped = ("metadata", "status")
    body = {k: v for k, v in obj.items() if k not in skipped}
    _check(
        body,
        {**schema, "properties": {k: v for k, v in schema.get("properties", {}).items() if k not in skipped}},
        "",
        found,
    )
    return found


def _check(value, schema: dict, path: str, found: list[str]) -> None:
    where = path or "<root>"
    if value is None:
        if not schema.get("nullable"):
            found.append(f"{where}: Invalid value: null")
        return
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            found.append(f"{where}: Invalid value: {value!r}: must be an integer or a string")
        elif isinstance(value, str) and "pattern" in _pattern_holder(schema):
            _match(value, _pattern_holder(schema)["pattern"], where, found)
        return
    kind = schema.get("type")
    if kind == "object" or (kind is None and "properties" in schema):
        if not isinstance(value, dict):
            found.append(f"{where}: Invalid value: {type(value).__name__}: must be of type object")
            return
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                found.append(f"{_join(path, name)}: Required value")
        extra = schema.get("additionalProperties")
        open_ended = schema.get("x-kubernetes-preserve-unknown-fields") or (not properties and extra is None)
        for name, item in value.items():
            if name in properties:
                _check(item, properties[name], _join(path, name), found)
            elif isinstance(extra, dict):
                _check(item, extra, _join(path, name), found)
            elif not open_ended and extra is not True:
                found.append(f"{_join(path, name)}: unknown field")
        return
    if kind == "array":
        if not isinstance(value, list):
            found.append(f"{where}: Invalid value: {type(value).__name__}: must be of type array")
            return
        for index, item in enumerate(value):
            _check(item, schema.get("items", {}), f"{where}[{index}]", found)
        return
    if kind == "string":
        if not isinstance(value, str):
            found.append(f"{where}: Invalid value: {value!r}: must be of type string")
            return
        if "enum" in schema and value not in schema["enum"]:
            found.append(f'{where}: Unsupported value: "{value}": supported values: {schema["enum"]}')
        if "pattern" in schema:
            _match(value, schema["pattern"], where, found)
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append(f"{where}: Too long: may not be longer than {schema['maxLength']}")
        return
    if kind in ("integer", "number"):
        allowed = int if kind == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed):
            found.append(f"{where}: Invalid value: {value!r}: must be of type {kind}")
            return
        if "minimum" in schema and value < schema["minimum"]:
            found.append(f"{where}: Invalid value: {value}: should be greater than or equal to {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            found.append(f"{where}: Invalid value: {value}: should be less than or equal to {schema['maximum']}")
        return
    if kind == "boolean" and not isinstance(value, bool):
        found.append(f"{where}: Invalid value: {value!r}: must be of type boolean")


def _pattern_holder(schema: dict) -> dict:
    if "pattern" in schema:
        return schema
    for option in schema.get("anyOf", []):
        if "pattern" in option:
            return option
    return {}


def _match(value: str, pattern: str, where: str, found: list[str]) -> None:
    if not re.search(pattern, value):
        found.append(f"{where}: Invalid value: \"{value}\": {where} in body should match '{pattern}'")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
