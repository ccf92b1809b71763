"""The feature schema: the ordered metric names a model was trained on.

It travels with every model (metadata.json) so that the predictor and the
validation steps feed columns in exactly the training order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from anomaly_mlops.errors import DataError

# Node-level operational metrics, one row a minute.
DEFAULT_FEATURES: tuple[str, ...] = (
    "cpu_usage_pct",
    "memory_usage_pct",
    "disk_io_mbps",
    "network_rx_mbps",
    "network_tx_mbps",
    "restart_count",
)
# Named schemas, usable wherever a schema is accepted (--features/--schema, KFP, Tekton).
NAMED_SCHEMAS = ("default", "self-healing-platform")
LABEL_COLUMN = "is_anomaly"
TIMESTAMP_COLUMN = "timestamp"
ANOMALY_KIND_COLUMN = "anomaly_kind"  # synthetic data: the kind of each injected anomaly, kept beside the label
ENTITY_COLUMN = "entity"  # which series a row belongs to (a pod, a node); rows of one entity are in time order

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True)
class FeatureSchema:
    features: tuple[str, ...] = DEFAULT_FEATURES
    name: str | None = None  # set for a named schema, e.g. "self-healing-platform"

    def __post_init__(self) -> None:
        if not self.features:
            raise DataError("the feature schema is empty: name at least one metric")
        bad = [f for f in self.features if not isinstance(f, str) or not _NAME.match(f)]
        if bad:
            raise DataError(f"invalid feature names in schema: {bad!r}")
        seen: set[str] = set()
        dupes = [f for f in self.features if f in seen or seen.add(f)]
        if dupes:
            raise DataError(f"duplicate feature names in schema: {dupes!r}")

    def __len__(self) -> int:
        return len(self.features)

    @property
    def client_built_features(self) -> bool:
        """The client sends finished features (the platform's engine builds its 45 from
        Prometheus), so the model adds no time window of its own by default."""
        return self.name == "self-healing-platform"

    def to_dict(self) -> dict:
        return {"features": list(self.features), **({"name": self.name} if self.name else {})}

    def describe(self) -> str:
        """How an error names what the model expects."""
        listed = ", ".join(self.features) if len(self) <= 12 else ", ".join(self.features[:6]) + ", ..."
        return f"{len(self)} features ({f'schema {self.name}: ' if self.name else ''}{listed})"

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSchema:
        try:
            features = data["features"]
            if not isinstance(features, list):
                raise TypeError
            return cls(tuple(features), data.get("name"))
        except (KeyError, TypeError) as exc:
            raise DataError(f"a feature schema needs a 'features' list, got {data!r}") from exc

    @classmethod
    def named(cls, name: str) -> FeatureSchema:
        if name == "default":
            return cls()
        if name == "self-healing-platform":
            from anomaly_mlops.model.platform import FEATURES, SCHEMA_NAME

            return cls(FEATURES, SCHEMA_NAME)
        raise DataError(f"unknown schema name {name!r}; named schemas: {', '.join(NAMED_SCHEMAS)}")

    @classmethod
    def parse(cls, text: str | None) -> FeatureSchema:
        """From a schema name, a comma-separated list, a JSON file path, or None for the default."""
        if not text:
            return cls()
        if text in NAMED_SCHEMAS:
            return cls.named(text)
        path = Path(text)
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except OSError as exc:
                raise DataError(f"cannot read the schema file {text}: {exc.strerror}") from exc
            except json.JSONDecodeError as exc:
                raise DataError(f"the schema file {text} is not valid JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise DataError(f"the schema file {text} must hold an object with a 'features' list")
            return cls.from_dict(data)
        return cls(tuple(name.strip() for name in text.split(",") if name.strip()))
