"""A second anomaly score beside the forest's: the reconstruction error of a row's metrics
from the principal axes of the fitted rows (PCA), added to the forest's score.

Isolation trees cut one column at a time, so a row that breaks how the metrics move
together (CPU up, requests flat) while each metric stays within its usual range is isolated
late; its distance from the subspace the fitted rows span is large. The error is the squared
distance of the standardized metrics from the axes that explain ``variance`` of their
variance. It is computed on the first columns of the features (the metrics, or their
components under the principal basis), row by row: no history, the same at training and
serving.

The sum is ``forest + weight * (error - offset)``: ``offset`` is the median error of the
held-back training rows and ``weight`` scales the error's spread there (median to
SPREAD_QUANTILE) to the forest score's, so that neither score drowns the other and the sum
stays on the forest's scale. The smoothing and the threshold then work on the sum as they
work on the forest's score alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from anomaly_mlops.model.features import row_products

SPREAD_QUANTILE = 0.98


@dataclass(frozen=True)
class ReconstructionScore:
    center: np.ndarray  # (metrics,) mean of the fitted rows
    scale: np.ndarray  # (metrics,) their standard deviation (1 where a column is constant)
    axes: np.ndarray  # (metrics, kept) principal axes of the standardized rows, largest first
    variance: float  # the share of variance the kept axes were chosen to explain
    offset: float = 0.0
    weight: float = 1.0
    # error(M) = |(M - center) / scale @ (I - axes axes')|^2, as |M @ _project - _shift|^2; the
    # score folds the weight into both (sqrt(weight) each): fewer numpy calls per served tick
    _project: np.ndarray = field(init=False, repr=False, compare=False)
    _shift: np.ndarray = field(init=False, repr=False, compare=False)
    _weighted: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        residual = np.eye(len(self.center)) - self.axes @ self.axes.T
        project = residual / self.scale[:, None]
        object.__setattr__(self, "_project", project)
        object.__setattr__(self, "_shift", self.center @ project)
        root = np.sqrt(self.weight)
        object.__setattr__(self, "_weighted", (project * root, self.center @ project * root, self.weight * self.offset))

    @classmethod
    def fit(cls, M: np.ndarray, variance: float, standardized: bool = False) -> ReconstructionScore | None:
        """The axes of the fitted rows ``M`` (rows x metrics) that explain ``variance`` of
        their standardized variance; None where there is nothing to reconstruct (one column,
        variance 0, or every axis needed). ``standardized``: the columns are already the
        standardized metrics on their principal axes (features.MetricBasis), whose spreads
        are what ranks the axes, so they are centred and not scaled again."""
        if variance <= 0 or M.ndim != 2 or M.shape[1] < 2 or len(M) < 2:
            return None
        center, scale = M.mean(axis=0), np.ones(M.shape[1]) if standardized else M.std(axis=0)
        scale[~(scale > 0)] = 1.0
        values, vectors = np.linalg.eigh(np.cov(((M - center) / scale).T))
        order = np.argsort(values)[::-1]
        values, vectors = np.clip(values[order], 0, None), vectors[:, order]
        if not values.sum() > 0:
            return None
        kept = int(np.searchsorted(np.cumsum(values) / values.sum(), variance) + 1)
        if kept >= M.shape[1]:
            return None
        return cls(center, scale, np.ascontiguousarray(vectors[:, :kept]), float(variance))

    def errors(self, M: np.ndarray) -> np.ndarray:
        """Squared reconstruction error of each row of ``M`` (rows x metrics)."""
        residual = row_products(M, self._project) - self._shift
        return np.einsum("ij,ij->i", residual, residual)

    def calibrated(self, forest_held: np.ndarray, errors_held: np.ndarray) -> ReconstructionScore | None:
        """This score with its offset and weight from the held-back rows' forest scores and
        errors; None where the errors do not spread there (nothing to weigh)."""
        spread = float(np.quantile(errors_held, SPREAD_QUANTILE) - np.median(errors_held))
        forest_spread = float(np.quantile(forest_held, SPREAD_QUANTILE) - np.median(forest_held))
        if not (spread > 0 and forest_spread > 0 and np.isfinite(spread) and np.isfinite(forest_spread)):
            return None
        return ReconstructionScore(
            self.center, self.scale, self.axes, self.variance, float(np.median(errors_held)), forest_spread / spread
        )

    def scores(self, M: np.ndarray) -> np.ndarray:
        """What rows ``M`` add to the forest's scores: weight * (error - offset), to rounding."""
        project, shift, offset = self._weighted
        residual = row_products(M, project)
        residual -= shift
        return np.einsum("ij,ij->i", residual, residual) - offset

    def to_dict(self) -> dict:
        return {
            "variance": self.variance,
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "axes": self.axes.tolist(),
            "offset": self.offset,
            "weight": self.weight,
        }

    @classmethod
    def from_dict(cls, data: dict, n_metrics: int) -> ReconstructionScore:
        """Raises ValueError for anything but finite arrays of matching shapes, scales and a
        weight above 0."""
        center = np.asarray(data["center"], dtype=np.float64)
        scale = np.asarray(data["scale"], dtype=np.float64)
        axes = np.asarray(data["axes"], dtype=np.float64)
        offset, weight, variance = (float(data[k]) for k in ("offset", "weight", "variance"))
        if center.shape != (n_metrics,) or scale.shape != (n_metrics,):
            raise ValueError(f"reconstruction center and scale must have {n_metrics} values (the schema's metrics)")
        if axes.ndim != 2 or axes.shape[0] != n_metrics or not 1 <= axes.shape[1] < n_metrics:
            raise ValueError(f"reconstruction axes must be {n_metrics} x k with 1 <= k < {n_metrics}")
        arrays = np.concatenate([center, scale, axes.ravel(), [offset, weight, variance]])
        if not np.all(np.isfinite(arrays)) or not np.all(scale > 0) or not weight > 0 or not 0 < variance < 1:
            raise ValueError(
                "reconstruction values must be finite, its scales and weight above 0, its variance in (0, 1)"
            )
        return cls(center, scale, axes, variance, offset, weight)
