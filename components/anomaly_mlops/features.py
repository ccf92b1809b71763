"""Causal time-series features, the same code for training, validation, evaluation and
serving.

With ``window`` w > 0, each metric x becomes four columns: x, its change from the previous
row, its deviation from the mean of the last w rows, and the standard deviation of the
last w rows (0 while only one row is known). Row t uses rows <= t only, so a model sees at
serving time exactly what it saw in training when the request carries the preceding rows
(oldest first). With w = 0 the metrics pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_ROWS = 8192  # bounds the (rows x metrics x window) view


@dataclass(frozen=True)
class FeatureTransform:
    window: int = 0

    def __post_init__(self):
        if self.window < 0 or self.window == 1:
            raise ValueError(f"feature window must be 0 (raw metrics) or at least 2, got {self.window}")

    def names(self, features: tuple[str, ...]) -> list[str]:
        if not self.window:
            return list(features)
        return [
            *features,
            *(f"{f}:delta" for f in features),
            *(f"{f}:dev_mean{self.window}" for f in features),
            *(f"{f}:std{self.window}" for f in features),
        ]

    def apply(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if not self.window:
            return X
        w = self.window
        delta = np.diff(X, axis=0, prepend=X[:1])
        mean, std = np.empty_like(X), np.empty_like(X)
        padded = np.vstack([np.full((w - 1, X.shape[1]), np.nan), X])
        for start in range(0, len(X), CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, len(X))
            windows = np.lib.stride_tricks.sliding_window_view(padded[start : stop + w - 1], w, axis=0)
            count = np.sum(~np.isnan(windows), axis=2)
            mean[start:stop] = np.nanmean(windows, axis=2)
            centered = np.where(np.isnan(windows), 0.0, windows - mean[start:stop, :, None])
            var = np.sum(centered**2, axis=2) / np.maximum(count - 1, 1)
            std[start:stop] = np.where(count > 1, np.sqrt(var), 0.0)
        return np.hstack([X, delta, X - mean, std])

    def to_dict(self) -> dict:
        return {"kind": "causal-rolling" if self.window else "raw", "window": self.window}

    @classmethod
    def from_dict(cls, data: dict | None) -> FeatureTransform:
        return cls(int((data or {}).get("window", 0)))
