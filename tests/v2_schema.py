"""Checks JSON bodies against the Open Inference Protocol's REST OpenAPI
(../shared/schemas/open-inference-protocol/rest_predict_v2.yaml): types, required fields,
$ref and anyOf (tensor data nests). Unknown fields are allowed, as OpenAPI allows them."""

from functools import cache

import yaml

from conftest import SHARED_DATA

SPEC = SHARED_DATA.parent / "schemas" / "open-inference-protocol" / "rest_predict_v2.yaml"
_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "object": dict, "array": list}


def available() -> bool:
    return SPEC.is_file()


@cache
def _schemas() -> dict:
    return yaml.safe_load(SPEC.read_text())["components"]["schemas"]


def errors(value, schema_name: str) -> list[str]:
    found: list[str] = []
    _check(value, _schemas()[schema_name], schema_name, found)
    return found


def _check(value, schema: dict, where: str, found: list[str]) -> None:
    if "$ref" in schema:
        return _check(value, _schemas()[schema["$ref"].rsplit("/", 1)[-1]], where, found)
    if "anyOf" in schema:
        if not any(not _try(value, option, where) for option in schema["anyOf"]):
            found.append(f"{where}: {value!r} matches none of {schema['anyOf']}")
        return
    kind = schema.get("type")
    if kind:
        expected = _TYPES[kind]
        wrong_bool = isinstance(value, bool) and kind in ("integer", "number")
        if wrong_bool or not isinstance(value, expected):
            found.append(f"{where}: {value!r} is not of type {kind}")
            return
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                found.append(f"{where}.{name}: required")
        for name, item in value.items():
            if name in schema.get("properties", {}):
                _check(item, schema["properties"][name], f"{where}.{name}", found)
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{where}[{i}]", found)


def _try(value, schema: dict, where: str) -> list[str]:
    found: list[str] = []
    _check(value, schema, where, found)
    return found
