"""The Kubeflow Model Registry REST API (v1alpha3) as far as the `model-registry` client's
registration, lookups and state updates use it, keeping the OpenAPI spec's rules
(../shared/schemas/model-registry/bd07139a/model-registry.yaml, the spec PyPI
`model-registry==0.3.9` was generated from): request bodies validated against the operation's
schema (required fields, types, enums, patterns), unique registered-model names and version
names within a model (409), unknown ids and failed finds 404, errors as the spec's ``Error``
({"code", "message"}); ids are strings of digits, times strings of epoch milliseconds."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

from fake_http import JsonFakeServer

SPEC = (
    Path(__file__).resolve().parents[2] / "shared" / "schemas" / "model-registry" / "bd07139a" / "model-registry.yaml"
)
BASE = "/api/model_registry/v1alpha3"


def available() -> bool:
    return SPEC.is_file()


class SpecValidator:
    """Request bodies against the component schemas the spec's operations name."""

    def __init__(self):
        import jsonschema

        self.spec = yaml.safe_load(SPEC.read_text())
        self.jsonschema = jsonschema

    def errors(self, schema_name: str, body) -> list[str]:
        """OpenAPI's discriminator picks the one schema of a oneOf that the body is checked
        against (JSON Schema alone would find it valid under several)."""
        definition = self.spec["components"]["schemas"][schema_name]
        discriminator = definition.get("discriminator")
        ref = f"#/components/schemas/{schema_name}"
        if discriminator:
            kind = body.get(discriminator["propertyName"]) if isinstance(body, dict) else None
            if kind not in discriminator["mapping"]:
                return [f"{discriminator['propertyName']}: must be one of {sorted(discriminator['mapping'])}"]
            ref = discriminator["mapping"][kind]
        schema = {"$ref": ref, "components": self.spec["components"]}
        validator = self.jsonschema.Draft7Validator(schema)
        return [f"{'.'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}" for e in validator.iter_errors(body)]


class FakeModelRegistry(JsonFakeServer):
    def __init__(self, token: str | None = None):
        self.token = token
        self.validator = SpecValidator()
        self.models: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.artifacts: dict[str, dict] = {}
        self.version_artifacts: dict[str, list[str]] = {}
        self.next_id = 1
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []
        super().__init__()

    # ---------------------------------------------------------------- state

    def _new(self, body: dict) -> dict:
        now = str(int(time.time() * 1000))
        entity = {**body, "id": str(self.next_id), "createTimeSinceEpoch": now, "lastUpdateTimeSinceEpoch": now}
        entity.setdefault("customProperties", {})
        self.next_id += 1
        return entity

    def invalid_json(self) -> tuple[int, dict]:
        return self._error(400, "invalid JSON")

    @staticmethod
    def _error(code: int, message: str) -> tuple[int, dict]:
        names = {400: "Bad Request", 404: "Not Found", 409: "Conflict"}
        return code, {"code": names.get(code, str(code)), "message": message}

    def _invalid(self, schema: str, body) -> tuple[int, dict] | None:
        problems = self.validator.errors(schema, body)
        return self._error(400, f"invalid {schema}: " + "; ".join(problems[:5])) if problems else None

    def handle(self, method: str, target: str, headers, body) -> tuple[int, dict]:
        self.calls.append((method, target))
        if self.token and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"code": "Unauthorized", "message": "unauthorized"}
        with self.lock:
            return self._handle(method, target, body)

    def _handle(self, method: str, target: str, body) -> tuple[int, dict]:
        url = urlparse(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path.removeprefix(BASE)
        if (method, path) == ("GET", "/registered_model"):
            found = [m for m in self.models.values() if m["name"] == query.get("name")]
            return (200, found[0]) if found else self._error(404, f"no registered model named {query.get('name')}")
        if (method, path) == ("GET", "/registered_models"):
            items = list(self.models.values())
            return 200, {"items": items, "size": len(items), "pageSize": 100, "nextPageToken": ""}
        if (method, path) == ("POST", "/registered_models"):
            refused = self._invalid("RegisteredModelCreate", body)
            if refused:
                return refused
            if any(m["name"] == body["name"] for m in self.models.values()):
                return self._error(409, f"a registered model named {body['name']} already exists")
            model = self._new({"state": "LIVE", **body})
            self.models[model["id"]] = model
            return 201, model
        if method == "GET" and path.startswith("/registered_models/") and path.endswith("/versions"):
            model_id = path.split("/")[2]
            if model_id not in self.models:
                return self._error(404, f"no registered model {model_id}")
            items = [v for v in self.versions.values() if v["registeredModelId"] == model_id]
            return 200, {"items": items, "size": len(items), "pageSize": 100, "nextPageToken": ""}
        if method in ("GET", "PATCH") and path.startswith("/registered_models/"):
            return self._get_or_patch(self.models, path.split("/")[2], method, body, "RegisteredModelUpdate")
        if (method, path) == ("GET", "/model_version"):
            found = [
                v
                for v in self.versions.values()
                if v["name"] == query.get("name") and v["registeredModelId"] == query.get("parentResourceId")
            ]
            return (200, found[0]) if found else self._error(404, f"no model version named {query.get('name')}")
        if (method, path) == ("POST", "/model_versions"):
            refused = self._invalid("ModelVersionCreate", body)
            if refused:
                return refused
            if body["registeredModelId"] not in self.models:
                return self._error(404, f"no registered model {body['registeredModelId']}")
            if any(
                v["name"] == body["name"] and v["registeredModelId"] == body["registeredModelId"]
                for v in self.versions.values()
            ):
                return self._error(409, f"a version named {body['name']} already exists for that model")
            version = self._new({"state": "LIVE", **body})
            self.versions[version["id"]] = version
            return 201, version
        if (method, path) == ("GET", "/model_artifact"):
            found = [
                self.artifacts[a]
                for a in self.version_artifacts.get(query.get("parentResourceId", ""), [])
                if self.artifacts[a]["name"] == query.get("name")
            ]
            return (200, found[0]) if found else self._error(404, f"no model artifact named {query.get('name')}")
        if path.startswith("/model_versions/") and path.endswith("/artifacts"):
            version_id = path.split("/")[2]
            if version_id not in self.versions:
                return self._error(404, f"no model version {version_id}")
            if method == "GET":
                items = [self.artifacts[a] for a in self.version_artifacts.get(version_id, [])]
                return 200, {"items": items, "size": len(items), "pageSize": 100, "nextPageToken": ""}
            if method == "POST":
                refused = self._invalid("Artifact", body)
                if refused:
                    return refused
                artifact = self._new({"state": "LIVE", **body})
                self.artifacts[artifact["id"]] = artifact
                self.version_artifacts.setdefault(version_id, []).append(artifact["id"])
                return 201, artifact
        if method in ("GET", "PATCH") and path.startswith("/model_versions/"):
            return self._get_or_patch(self.versions, path.split("/")[2], method, body, "ModelVersionUpdate")
        return self._error(404, f"no route {method} {path}")

    def _get_or_patch(self, table: dict, entity_id: str, method: str, body, schema: str) -> tuple[int, dict]:
        if entity_id not in table:
            return self._error(404, f"no entity {entity_id}")
        if method == "GET":
            return 200, table[entity_id]
        refused = self._invalid(schema, body)
        if refused:
            return refused
        table[entity_id] = {**table[entity_id], **body, "lastUpdateTimeSinceEpoch": str(int(time.time() * 1000))}
        return 200, table[entity_id]
