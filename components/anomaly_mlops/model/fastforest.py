"""Exact, fast scoring of a fitted StandardScaler + IsolationForest.

scikit-learn scores through ``joblib.Parallel`` and one ``tree.apply`` per tree, which
costs milliseconds for a single row. Here all trees are flattened into node arrays and
walked by ``_forest_walk`` (C: per row, each tree in turn; the GIL released) or, where the
package was installed without a C compiler, with numpy, one vectorized step per tree level.
Both reproduce scikit-learn's arithmetic: the scaled input is cast to float32 before the
``x <= threshold`` tests (as the trees do), leaf values are the forest's own
``_decision_path_lengths + _average_path_length_per_tree - 1``, and the score is
``2 ** -(depth / (n_trees * c(max_samples)))``. The C walk sums the trees in scikit-learn's
order (bit for bit); numpy's pairwise sum differs at 1e-16. ``tests/test_fastforest.py``
checks parity; anything it cannot compile falls back to scikit-learn.
"""

from __future__ import annotations

import logging

import numpy as np

from anomaly_mlops.model.chunks import map_chunks

try:
    from anomaly_mlops.model import _forest_walk
except ImportError:  # installed without a C compiler: the numpy walk
    _forest_walk = None

log = logging.getLogger(__name__)

# Rows per vectorized pass: bounds the (rows x trees) work arrays (~ 8 MB at 100 trees).
CHUNK_ROWS = 4096


ARRAYS = ("mean", "scale", "feature", "threshold", "left", "right", "leaf_value", "roots")
# A node as the C walk reads it (model/_forest_walk.c node_t): one cache line's share.
NODE = np.dtype([("threshold", "<f8"), ("feature", "<i4"), ("right", "<i4"), ("left", "<i4"), ("pad", "<i4")])
# Deeper than any isolation tree (scikit-learn caps depth at ceil(log2(max_samples)), 20 for
# a million rows): a larger stored depth is a damaged or hostile file, which would spin.
MAX_DEPTH = 64


class CompiledForest:
    @classmethod
    def from_arrays(cls, arrays: dict) -> CompiledForest:
        """Rebuild from ``to_arrays()`` output (forest.npz): no scikit-learn needed."""
        forest = cls.__new__(cls)
        for name in ARRAYS:
            setattr(forest, name, np.asarray(arrays[name]))
        forest.feature, forest.left, forest.right, forest.roots = (
            np.ascontiguousarray(forest.feature, dtype=np.intp),
            np.ascontiguousarray(forest.left, dtype=np.intp),
            np.ascontiguousarray(forest.right, dtype=np.intp),
            np.ascontiguousarray(forest.roots, dtype=np.intp),
        )
        forest.threshold = np.ascontiguousarray(forest.threshold, dtype=np.float64)
        forest.leaf_value = np.ascontiguousarray(forest.leaf_value, dtype=np.float64)
        forest.depth = int(arrays["depth"])
        forest.denominator = float(arrays["denominator"])
        n_nodes = len(forest.threshold)
        if not 0 <= forest.depth <= min(MAX_DEPTH, max(n_nodes, 1)):
            raise ValueError(f"depth {forest.depth} outside 0-{min(MAX_DEPTH, max(n_nodes, 1))}")
        if not (np.isfinite(forest.denominator) and forest.denominator > 0):
            raise ValueError(f"denominator {forest.denominator} is not a positive number")
        if not all(len(getattr(forest, a)) == n_nodes for a in ("feature", "left", "right", "leaf_value")):
            raise ValueError("node arrays of different lengths")
        if n_nodes and (
            forest.left.min() < 0
            or forest.left.max() >= n_nodes
            or forest.right.min() < 0
            or forest.right.max() >= n_nodes
        ):
            raise ValueError("child indices outside the node arrays")
        if forest.roots.size and (forest.roots.min() < 0 or forest.roots.max() >= n_nodes):
            raise ValueError("root indices outside the node arrays")
        if n_nodes and (forest.feature.min() < 0 or forest.feature.max() >= len(forest.mean)):
            raise ValueError("feature indices outside the inputs")
        forest._link_children()
        return forest

    def to_arrays(self) -> dict:
        return {
            **{name: getattr(self, name) for name in ARRAYS},
            "depth": np.asarray(self.depth),
            "denominator": np.asarray(self.denominator),
        }

    def __init__(self, pipeline):
        from sklearn.ensemble._iforest import _average_path_length

        scaler = pipeline.named_steps["scaler"]
        forest = pipeline.named_steps["iforest"]
        n_features = forest.n_features_in_
        self.mean = scaler.mean_ if scaler.with_mean else np.zeros(n_features)
        self.scale = scaler.scale_ if scaler.with_std else np.ones(n_features)
        features, thresholds, lefts, rights, values, roots = [], [], [], [], [], []
        offset, depth = 0, 0
        for index, (tree, subset) in enumerate(zip(forest.estimators_, forest.estimators_features_)):
            t = tree.tree_
            leaf = t.children_left == -1
            roots.append(offset)
            # Leaves point at themselves and always go "left", so extra steps are no-ops.
            features.append(np.where(leaf, 0, np.asarray(subset)[np.maximum(t.feature, 0)]))
            thresholds.append(np.where(leaf, np.inf, t.threshold))
            lefts.append(np.where(leaf, np.arange(t.node_count), t.children_left) + offset)
            rights.append(np.where(leaf, np.arange(t.node_count), t.children_right) + offset)
            values.append(forest._decision_path_lengths[index] + forest._average_path_length_per_tree[index] - 1.0)
            offset += t.node_count
            depth = max(depth, t.max_depth)
        self.feature = np.concatenate(features).astype(np.intp)
        self.threshold = np.concatenate(thresholds).astype(np.float64)
        self.left = np.concatenate(lefts).astype(np.intp)
        self.right = np.concatenate(rights).astype(np.intp)
        self.leaf_value = np.concatenate(values).astype(np.float64)
        self.roots = np.asarray(roots, dtype=np.intp)
        self.depth = depth
        self.denominator = len(forest.estimators_) * float(_average_path_length([forest._max_samples])[0])
        self._link_children()

    def _link_children(self) -> None:
        # [right, left] per node: the next node is one flat take at 2 * node + go_left.
        self._children = np.column_stack([self.right, self.left]).ravel()
        self._nodes = None
        if _forest_walk is not None and len(self.threshold) < 2**31 and len(self.mean) < 2**31:
            self._nodes = np.zeros(len(self.threshold), dtype=NODE)
            for name in ("threshold", "feature", "right", "left"):
                self._nodes[name] = getattr(self, name)

    @property
    def walks_in_c(self) -> bool:
        return self._nodes is not None

    def anomaly_scores(self, X: np.ndarray) -> np.ndarray:
        """Equal to ``-pipeline.score_samples(X)`` (higher is more anomalous)."""
        X = np.asarray(X, dtype=np.float64)
        if len(X) <= CHUNK_ROWS:
            return self._scores(X)
        return np.concatenate(map_chunks(lambda i: self._scores(X[i : i + CHUNK_ROWS]), range(0, len(X), CHUNK_ROWS)))

    def _scores(self, X: np.ndarray) -> np.ndarray:
        if self.denominator == 0:  # a forest fitted on one sample: sklearn answers 1
            return np.ones(len(X))
        depths = self._depths_c(X) if self._nodes is not None else self._depths_numpy(X)
        return 2.0 ** (-depths / self.denominator)

    def _depths_c(self, X: np.ndarray) -> np.ndarray:
        scaled = np.ascontiguousarray((X - self.mean) / self.scale, dtype=np.float32)
        depths = np.empty(len(X))
        _forest_walk.walk(scaled, self._nodes, self.roots, self.leaf_value, len(X), len(self.mean), self.depth, depths)
        return depths

    def _depths_numpy(self, X: np.ndarray) -> np.ndarray:
        scaled = ((X - self.mean) / self.scale).astype(np.float32).ravel()
        n_inputs = len(self.mean)
        # One flat (rows x trees) walk: take() on flat arrays beats 2-D fancy indexing.
        nodes = np.tile(self.roots, len(X))
        if len(X) == 1:  # the serving hot path: no row offsets to add
            for _ in range(self.depth):
                go_left = scaled.take(self.feature.take(nodes)) <= self.threshold.take(nodes)
                nodes = self._children.take(2 * nodes + go_left)
        else:
            row_base = np.repeat(np.arange(len(X), dtype=np.intp) * n_inputs, len(self.roots))
            for _ in range(self.depth):
                go_left = scaled.take(row_base + self.feature.take(nodes)) <= self.threshold.take(nodes)
                nodes = self._children.take(2 * nodes + go_left)
        return self.leaf_value.take(nodes).reshape(len(X), len(self.roots)).sum(axis=1)


def compile_forest(pipeline) -> CompiledForest | None:
    """A CompiledForest, or None (with a warning) when the pipeline is not one we know."""
    try:
        return CompiledForest(pipeline)
    except (AttributeError, KeyError, TypeError, IndexError) as exc:
        log.warning("fast scoring unavailable (%s: %s); using scikit-learn", type(exc).__name__, exc)
        return None
