"""Metrics that moved out of the range the forest was fitted on.

A row whose metric lies beyond every fitted row's value is isolated as quickly as the most
extreme of them, in every tree that splits on that metric; when many rows do so at once
(a level that moved since the training rows), the forest flags them all. On SMD's
machine-1-6, 84% of the normal test rows hold such a metric and the default flags 84% of
the rows (docs/evidence/quality.md). train records each metric's range over the fitted
rows; validate and evaluate say which metrics left it, so an over-flagging release is
explained by the data rather than guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TOP_METRICS = 5  # metrics named in logs and reports


def training_ranges(X: np.ndarray) -> dict:
    """Each metric's [min, max] over the fitted rows, in schema order (metadata.json)."""
    X = np.asarray(X, dtype=np.float64)
    return {"min": X.min(axis=0).tolist(), "max": X.max(axis=0).tolist()}


class RangeCheck:
    """Which metrics of which rows lie outside their training range. A metric constant in
    training is never outside: no tree splits on it, so its moves never change a score."""

    def __init__(self, ranges: dict):
        lo = np.asarray(ranges["min"], dtype=np.float64)
        hi = np.asarray(ranges["max"], dtype=np.float64)
        if lo.ndim != 1 or hi.shape != lo.shape:
            raise ValueError("training ranges need one min and one max per metric")
        self.varied = hi > lo
        # a constant metric gets an unbounded range: never outside
        self.lo = np.where(self.varied, lo, -np.inf)
        self.hi = np.where(self.varied, hi, np.inf)
        self._bounds = list(zip(self.lo.tolist(), self.hi.tolist()))

    @classmethod
    def of_model(cls, metadata: dict) -> RangeCheck | None:
        """The model's check; None for a model trained before ranges were recorded."""
        ranges = metadata.get("training_ranges")
        return cls(ranges) if ranges else None

    def inside_row(self, row: list[float]) -> bool:
        """Whether every metric of one row lies inside its range (``outside`` has no True)."""
        return len(row) == len(self._bounds) and all(lo <= x <= hi for x, (lo, hi) in zip(row, self._bounds))

    def outside(self, X: np.ndarray) -> np.ndarray:
        """rows x metrics, True where the metric lies outside its training range."""
        if X.shape[1] != self.lo.size:
            raise ValueError(f"training ranges cover {self.lo.size} metrics, the rows have {X.shape[1]}")
        return (X < self.lo) | (X > self.hi)


def outside_training_range(X: np.ndarray, ranges: dict, names) -> dict:
    """The share of rows of ``X`` with at least one metric outside its training range, and
    per metric the share of rows where it is (largest first, metrics that never left it
    omitted; metrics constant in training listed apart)."""
    X = np.asarray(X, dtype=np.float64)
    check = RangeCheck(ranges)
    varied = check.varied
    outside = check.outside(X)
    shares = outside.mean(axis=0) if len(X) else np.zeros(X.shape[1])
    order = [int(i) for i in np.argsort(-shares, kind="stable") if shares[i] > 0]
    return {
        "rows_share": round(float(outside.any(axis=1).mean()) if len(X) else 0.0, 5),
        "metrics": {str(names[i]): round(float(shares[i]), 5) for i in order},
        "constant_in_training": [str(n) for n, v in zip(names, varied) if not v],
    }


def describe_outside(found: dict, top: int = TOP_METRICS) -> str:
    """'84.1% of rows (by metric: disk_io 78.0%, cpu 27.0%)' for logs and reports."""
    named = ", ".join(f"{name} {100 * share:.1f}%" for name, share in list(found["metrics"].items())[:top])
    more = len(found["metrics"]) - top
    return f"{100 * found['rows_share']:.1f}% of rows" + (
        f" (by metric: {named}{f', and {more} more' if more > 0 else ''})" if named else ""
    )


# Served scores against the scores the threshold was calibrated on: the bins are the
# calibration scores' deciles, so each holds a tenth of them (fewer bins where scores tie).
SCORE_BINS = 10
# An empty bin's share, so that a PSI stays finite (as a 1-in-10,000 row).
PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class ScoreReference:
    """What the released model's calibration scores look like (metadata.json
    ``score_reference``): the inner edges of their deciles, each bin's share of them, and the
    share above the threshold. Served scores counted in the same bins give the PSI of the
    served traffic against training, and the flagged share against the calibrated one."""

    edges: tuple[float, ...]  # inner edges, ascending: len(shares) - 1 of them
    shares: tuple[float, ...]
    flagged_share: float
    _edge_array: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_edge_array", np.asarray(self.edges, dtype=np.float64))

    @classmethod
    def of_scores(cls, scores: np.ndarray, threshold: float, bins: int = SCORE_BINS) -> ScoreReference:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.size == 0 or not np.isfinite(scores).all():
            raise ValueError("a score reference needs finite calibration scores")
        # the deciles' inner edges, ties merged (as steps/champion.psi bins)
        edges = np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1)))[1:-1]
        counts = np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(edges) + 1)
        return cls(
            tuple(float(e) for e in edges),
            tuple(float(c) for c in counts / scores.size),
            float(np.mean(scores > threshold)),
        )

    def bin_of(self, scores: np.ndarray) -> np.ndarray:
        """Each score's bin: 0 below the first edge; bin i holds edges[i-1] <= s < edges[i]."""
        return np.searchsorted(self._edge_array, scores, side="right")

    def counts(self, scores: np.ndarray) -> np.ndarray:
        return np.bincount(self.bin_of(scores), minlength=len(self.shares))

    def psi(self, counts: np.ndarray) -> float:
        """Population stability index of served rows (counts per bin) against the reference."""
        counts = np.asarray(counts, dtype=np.float64)
        if counts.sum() == 0:
            return 0.0
        actual = np.maximum(counts / counts.sum(), PSI_FLOOR)
        expected = np.maximum(np.asarray(self.shares), PSI_FLOOR)
        return float(np.sum((actual - expected) * np.log(actual / expected)))

    def to_dict(self) -> dict:
        return {"bin_edges": list(self.edges), "bin_shares": list(self.shares), "flagged_share": self.flagged_share}

    @classmethod
    def of_model(cls, metadata: dict) -> ScoreReference | None:
        """The model's reference; None for a model trained before it was recorded."""
        data = metadata.get("score_reference")
        if not data:
            return None
        try:
            reference = cls(
                tuple(float(e) for e in data["bin_edges"]),
                tuple(float(s) for s in data["bin_shares"]),
                float(data["flagged_share"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"score_reference needs bin_edges, bin_shares and flagged_share: {exc}") from exc
        edges = np.asarray(reference.edges)
        if (
            len(reference.shares) != len(edges) + 1
            or not np.isfinite(edges).all()
            or np.any(np.diff(edges) <= 0)
            or not 0.0 <= reference.flagged_share <= 1.0
        ):
            raise ValueError("score_reference: bin_edges must be finite and ascending, one fewer than bin_shares")
        return reference
