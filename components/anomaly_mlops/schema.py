"""The feature schema: the ordered metric names a model was trained on.

It travels with every model (metadata.json) so that the predictor and the
validation steps feed columns in exactly the training order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError

# Node-level operational metrics, one row a minute.
DEFAULT_FEATURES: tuple[str, ...] = (
    "cpu_usage_pct",
    "memory_usage_pct",
    "disk_io_mbps",
    "network_rx_mbps",
    "network_tx_mbps",
    "restart_count",
)
LABEL_COLUMN = "is_anomaly"
TIMESTAMP_COLUMN = "timestamp"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$")


@dataclass(frozen=True)
class FeatureSchema:
    features: tuple[str, ...] = DEFAULT_FEATURES

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

    def to_dict(self) -> dict:
        return {"features": list(self.features)}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureSchema":
        try:
            features = data["features"]
            if not isinstance(features, list):
                raise TypeError
            return cls(tuple(features))
        except (KeyError, TypeError) as exc:
            raise DataError(f"a feature schema needs a 'features' list, got {data!r}") from exc

    @classmethod
    def parse(cls, text: str | None) -> "FeatureSchema":
        """From a comma-separated list, a JSON file path, or None for the default."""
        if not text:
            return cls()
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
