"""The model directory contract.

    model.skops       sklearn Pipeline(StandardScaler, IsolationForest) in skops format:
                      what this project loads, with an explicit list of trusted types,
                      so loading never runs code from the file
    model.joblib      the same pipeline pickled, only for the upstream KServe sklearn
                      runtime (which loads exactly one .joblib); never unpickled here.
                      The forest's offset_ is set so that ``predict`` flags exactly the
                      rows whose anomaly score exceeds the chosen threshold
    forest.npz        the same forest flattened into numpy arrays, with probe rows and their
                      scikit-learn scores; the lean server loads it (allow_pickle=False)
                      and checks the probe scores before it is ready
    metadata.json     feature schema, library versions, data sha256, params, threshold
    MANIFEST.sha256   ``<sha256>  <file>`` per file, sorted; written last

A directory without MANIFEST.sha256 is incomplete. Nothing is loaded before every file
listed matches its digest and no unlisted file is present, and a loaded model is not
returned before it has scored probe rows (fast scorer and scikit-learn agreeing).
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from anomaly_mlops.errors import ArtifactError, ConfigError
from anomaly_mlops.model.drift import ScoreReference
from anomaly_mlops.model.fastforest import ARRAYS as FOREST_NODE_ARRAYS
from anomaly_mlops.model.features import FeatureTransform, smooth_by_entity
from anomaly_mlops.model.platform import is_engine_scoped_row
from anomaly_mlops.model.reconstruction import ReconstructionScore
from anomaly_mlops.model.schema import FeatureSchema

MODEL_FILE = "model.joblib"
SAFE_MODEL_FILE = "model.skops"
# The one type in a fitted StandardScaler + IsolationForest that skops does not trust by
# default; everything else it loads is a plain scikit-learn/numpy type.
SKOPS_TRUSTED_TYPES = ("sklearn.tree._tree.Tree",)
METADATA_FILE = "metadata.json"
# The forest flattened into numpy arrays (fastforest.py) with probe rows and their
# scikit-learn scores: what the lean server loads, without scikit-learn.
FOREST_FILE = "forest.npz"
MANIFEST_FILE = "MANIFEST.sha256"
ARTIFACT_FORMAT = 2  # 2: model.skops added; format 1 (pickle only) is not loaded
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64})  ([A-Za-z0-9_.-]+)$")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(model_dir: Path) -> str:
    """Hash every file but the manifest; return the manifest's own sha256."""
    entries = sorted((p.name, sha256_file(p)) for p in model_dir.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    text = "".join(f"{digest}  {name}\n" for name, digest in entries)
    tmp = model_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(text)
    tmp.replace(model_dir / MANIFEST_FILE)
    return hashlib.sha256(text.encode()).hexdigest()


def parse_manifest(text: str, where: str = "manifest") -> dict[str, str]:
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        match = _MANIFEST_LINE.match(line)
        if not match:
            raise ArtifactError(f"{where} line {number} is malformed: {line[:80]!r}")
        entries[match.group(2)] = match.group(1)
    for required in (SAFE_MODEL_FILE, MODEL_FILE, METADATA_FILE):
        if required not in entries:
            raise ArtifactError(f"{where} does not list {required}")
    return entries


def verify_model_dir(model_dir: str | Path) -> dict[str, str]:
    """Check every file against the manifest; raise ArtifactError naming the culprit."""
    model_dir = Path(model_dir)
    manifest = model_dir / MANIFEST_FILE
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory not found: {model_dir}")
    if not manifest.is_file():
        raise ArtifactError(f"{model_dir} has no {MANIFEST_FILE}: the model is incomplete and is not loaded")
    entries = parse_manifest(manifest.read_text(), str(manifest))
    present = {p.name for p in model_dir.iterdir() if p.is_file() and p.name != MANIFEST_FILE}
    extra = present - set(entries)
    if extra:
        raise ArtifactError(f"{model_dir} holds files not in its manifest: {sorted(extra)}")
    for name, expected in entries.items():
        path = model_dir / name
        if not path.is_file():
            raise ArtifactError(f"{model_dir} is missing {name}, listed in its manifest")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"checksum mismatch for {path}: manifest says {expected[:12]}…, file is {actual[:12]}…; "
                "refusing to load a file that was changed after training"
            )
    return entries


# Labels as scikit-learn's IsolationForest.predict and the upstream KServe sklearn runtime
# return them, and as the Self-Healing Platform's coordination engine reads them.
ANOMALY, NORMAL = -1, 1

# The flattened forest walked in C is faster than scikit-learn at every batch size; walked
# with numpy (installed without a C compiler), up to this many rows, above which scikit-learn's
# tree walk is (benchmarks/scoring.py measures them).
FAST_SCORING_MAX_ROWS = 512


@dataclass
class PendingScores:
    """Rows on their way through the forest: their ``features`` (``transform`` of the last
    ``last`` of ``rows``, the rows before being their history; all rows when ``last`` is
    None) go through ``raw_scores`` (alone or stacked with other requests' rows, see
    ``features_of``), then ``finish(raw)`` gives (predictions, scores, history_complete or None).
    With ``prepare`` (history in a shared store), ``await prepare()`` first fetches the
    history and sets ``rows``, ``last`` and what ``finish`` does."""

    rows: np.ndarray
    finish: Callable[[np.ndarray], tuple]
    transform: FeatureTransform = FeatureTransform()
    last: int | None = None
    computed: np.ndarray | None = field(default=None, repr=False)
    prepare: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)

    @property
    def n_rows(self) -> int:
        return len(self.rows) if self.last is None else self.last

    @property
    def features(self) -> np.ndarray:
        if self.computed is None:
            self.computed = self.transform.apply(self.rows, self.last)
        return self.computed

    async def ready(self) -> PendingScores:
        """These scores with their history fetched (at once for history kept in process)."""
        if self.prepare is not None:
            prepare, self.prepare = self.prepare, None
            await prepare()
        return self

    def score_alone(self, model: LoadedModel) -> tuple:
        """Walk the forest for these rows only and finish."""
        return self.finish(model.raw_scores(self.features))


def features_of(pending: list[PendingScores]) -> np.ndarray:
    """The features of several requests' rows, stacked in request order. Requests of the
    same shape (one row after a full window of history, the serving norm) have their window
    statistics computed in one pass (``FeatureTransform.apply_stacked`` or ``apply_each``),
    with the very figures each would get alone."""
    if len(pending) == 1:
        return pending[0].features
    transform, last = pending[0].transform, pending[0].last
    if (
        last is not None
        and transform.stacks_in_c
        and all(one.transform is transform and one.last == last and one.computed is None for one in pending)
    ):  # the serving norm: one C call for the tick
        return transform.apply_stacked([one.rows for one in pending], last)
    alike: dict[tuple, list[PendingScores]] = {}
    for one in pending:
        if one.computed is None and one.transform.window:
            alike.setdefault((one.transform, one.rows.shape, one.n_rows), []).append(one)
    for (transform, _, last), group in alike.items():
        if len(group) > 1:
            for one, features in zip(group, transform.apply_each([one.rows for one in group], last)):
                one.computed = features
    return np.vstack([one.features for one in pending])


@dataclass
class LoadedModel:
    pipeline: object
    metadata: dict
    schema: FeatureSchema
    threshold: float
    model_dir: Path
    fast: object | None = None  # fastforest.CompiledForest
    transform: FeatureTransform = FeatureTransform()
    smoothing: int = 1  # rows of score smoothing (1: none)
    reconstruction: ReconstructionScore | None = None  # the second score, added to the forest's

    @cached_property
    def manifest_digest(self) -> str:
        """sha256 of the manifest: what the loaded files are, whatever the version is called."""
        return hashlib.sha256((Path(self.model_dir) / MANIFEST_FILE).read_bytes()).hexdigest()

    @property
    def history_rows(self) -> int:
        """Earlier rows of the same entity a row's score depends on; with fewer it is
        computed from what there is, and marked incomplete."""
        return max(self.transform.window - 1, 0) + self.smoothing - 1

    @cached_property
    def engine_scoped_offset(self) -> float:
        """What a row-wise self-healing-platform model adds to the score of a scoped request's
        row (node metrics at the engine's defaults): train.engine_scoped_offset."""
        return float(self.metadata.get("engine_scoped_offset") or 0.0)

    def forest_scores(self, features: np.ndarray) -> np.ndarray:
        """The forest's anomaly scores of transformed rows: the negated sklearn ``score_samples``."""
        fast = self.fast
        if fast is not None and (fast.walks_in_c or len(features) <= FAST_SCORING_MAX_ROWS or self.pipeline is None):
            return fast.anomaly_scores(features)
        return -self.pipeline.score_samples(features)

    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        """Anomaly scores of transformed rows before smoothing: the forest's, plus the
        reconstruction error of their metrics where the model has one (a scoped request's rows
        shifted by ``engine_scoped_offset``)."""
        scores = self.forest_scores(features)
        if self.reconstruction is not None:
            scores += self.reconstruction.scores(features[:, : len(self.schema)])
        if self.engine_scoped_offset:
            scores = scores + self.engine_scoped_offset * is_engine_scoped_row(features)
        return scores

    def anomaly_scores(self, X: np.ndarray, entities: np.ndarray | None = None) -> np.ndarray:
        """Higher is more anomalous. Rows are metrics in schema order; the rows of each
        entity (all rows without ``entities``) are one series, oldest first."""
        raw = self.raw_scores(self.transform.apply_by_entity(X, entities))
        return smooth_by_entity(raw, entities, self.smoothing)

    def label(self, scores: np.ndarray) -> np.ndarray:
        """ANOMALY (-1) where the score exceeds the threshold, else NORMAL (1)."""
        if len(scores) == 1:  # the serving norm, without numpy's per-call cost
            return np.array([ANOMALY if scores[0] > self.threshold else NORMAL], dtype=np.int8)
        return np.where(scores > self.threshold, ANOMALY, NORMAL).astype(np.int8)

    def score(self, X: np.ndarray, entities: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One pass through the forest: (predictions, anomaly scores)."""
        scores = self.anomaly_scores(X, entities)
        return self.label(scores), scores


def _read_metadata(
    model_dir: Path,
) -> tuple[dict, FeatureSchema, FeatureTransform, int, float, ReconstructionScore | None]:
    """Verify the directory against its manifest; (metadata, schema, transform, smoothing rows,
    threshold, reconstruction score or None)."""
    verify_model_dir(model_dir)
    try:
        metadata = json.loads((model_dir / METADATA_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{model_dir / METADATA_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(metadata, dict):
        raise ArtifactError(f"{model_dir / METADATA_FILE} must hold a JSON object")
    if metadata.get("artifact_format") != ARTIFACT_FORMAT:
        raise ArtifactError(
            f"{model_dir} has artifact_format {metadata.get('artifact_format')!r}; this code reads {ARTIFACT_FORMAT} "
            "(format 1 models have no model.skops: retrain)"
        )
    try:
        schema = FeatureSchema.from_dict(metadata["schema"])
        transform = FeatureTransform.from_dict(metadata.get("feature_transform"))
        smoothing = int((metadata.get("score_smoothing") or {}).get("rows", 1))
        threshold = float(metadata["threshold"])
        if smoothing < 1:
            raise ValueError(f"score_smoothing.rows must be >= 1, got {smoothing}")
        offset = metadata.get("engine_scoped_offset")
        if offset is not None and not (isinstance(offset, int | float) and np.isfinite(offset) and len(schema) == 45):
            raise ValueError(f"engine_scoped_offset must be a finite number on the 45-feature schema, got {offset!r}")
        ScoreReference.of_model(metadata)  # ValueError for a malformed one
        if transform.basis is not None and len(transform.basis.center) != len(schema):
            raise ValueError(
                f"its metric basis is over {len(transform.basis.center)} metrics, the schema has {len(schema)}"
            )
        second = metadata.get("reconstruction_score")
        reconstruction = None if second is None else ReconstructionScore.from_dict(second, len(schema))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"{model_dir / METADATA_FILE} lacks a usable schema, feature_transform, reconstruction_score or "
            f"threshold: {exc}"
        ) from exc
    return metadata, schema, transform, smoothing, threshold, reconstruction


# forest.npz: what it holds, and how large a member may be once decompressed (a 4096-row
# tree has at most 8,191 nodes; 10,000 such trees' node arrays stay far below this).
FOREST_MEMBERS = frozenset({*FOREST_NODE_ARRAYS, "depth", "denominator", "probe", "probe_scores"})
MAX_FOREST_MEMBER_BYTES = 512 * 1024 * 1024


def read_forest_arrays(path: Path) -> dict:
    """forest.npz's arrays, read only after its members are checked: exactly the expected
    names, each at most MAX_FOREST_MEMBER_BYTES decompressed (nothing else is decompressed).
    Raises ValueError naming the problem."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
    unknown, missing = set(members) - FOREST_MEMBERS, FOREST_MEMBERS - set(members)
    if unknown or missing:
        raise ValueError(f"members {sorted(unknown)} not expected, {sorted(missing)} missing")
    large = [
        f"{name} ({info.file_size:,} bytes)"
        for name, info in members.items()
        if info.file_size > MAX_FOREST_MEMBER_BYTES
    ]
    if large:
        raise ValueError(f"members larger than {MAX_FOREST_MEMBER_BYTES:,} bytes: {', '.join(large)}")
    with np.load(path, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in FOREST_MEMBERS}


def load_serving_model(model_dir: str | Path) -> LoadedModel:
    """What the lean server loads: the flattened forest from forest.npz (numpy arrays, no
    pickle, no scikit-learn or skops import: a fast cold start), checked against the
    scikit-learn scores of probe rows recorded at training. Without forest.npz (older
    models), load_model_dir."""
    from anomaly_mlops.model.fastforest import CompiledForest

    model_dir = Path(model_dir)
    if not (model_dir / FOREST_FILE).is_file():
        return load_model_dir(model_dir)
    metadata, schema, transform, smoothing, threshold, reconstruction = _read_metadata(model_dir)
    try:
        stored = read_forest_arrays(model_dir / FOREST_FILE)
        forest = CompiledForest.from_arrays(stored)
        probe, expected = stored["probe"], stored["probe_scores"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{model_dir / FOREST_FILE} is not a usable forest: {type(exc).__name__}: {exc}") from exc
    inputs = len(transform.names(schema.features))
    if len(forest.mean) != inputs or probe.ndim != 2 or probe.shape[1] != inputs:
        raise ArtifactError(
            f"{model_dir / FOREST_FILE} holds a forest over {len(forest.mean)} inputs but the metadata (schema and "
            f"feature transform) describes {inputs}; the artifacts do not belong together"
        )
    gap = float(np.max(np.abs(forest.anomaly_scores(probe) - expected))) if len(probe) else np.inf
    if not gap <= 1e-9:
        raise ArtifactError(
            f"{model_dir}: the flattened forest disagrees with scikit-learn's recorded probe scores "
            f"(max difference {gap:.3g}); refusing to serve"
        )
    return LoadedModel(
        pipeline=None,
        metadata=metadata,
        schema=schema,
        threshold=threshold,
        model_dir=model_dir,
        fast=forest,
        transform=transform,
        smoothing=smoothing,
        reconstruction=reconstruction,
    )


def load_model_dir(model_dir: str | Path) -> LoadedModel:
    """Verify, load without unpickling, and check that the model can score.

    Refuses artifacts from another scikit-learn version, objects of another type, a
    feature count that disagrees with the schema, and a fast scorer that disagrees with
    scikit-learn on probe rows: each with one ArtifactError naming the problem."""
    import sklearn

    model_dir = Path(model_dir)
    metadata, schema, transform, smoothing, threshold, reconstruction = _read_metadata(model_dir)
    trained_with = metadata.get("library_versions", {}).get("scikit-learn")
    if trained_with != sklearn.__version__:
        raise ArtifactError(
            f"{model_dir} was trained with scikit-learn {trained_with}, this process has {sklearn.__version__}; "
            "serve with the image built from the same requirements.lock"
        )
    pipeline = _load_skops(model_dir / SAFE_MODEL_FILE)
    _check_pipeline(pipeline, len(transform.names(schema.features)), model_dir)
    from anomaly_mlops.model.fastforest import compile_forest

    model = LoadedModel(
        pipeline=pipeline,
        metadata=metadata,
        schema=schema,
        threshold=threshold,
        model_dir=model_dir,
        fast=compile_forest(pipeline),
        transform=transform,
        smoothing=smoothing,
        reconstruction=reconstruction,
    )
    _check_scores(model)
    return model


def _load_skops(path: Path):
    import skops.io as sio

    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # skops raises assorted errors for a file that is not its format
        raise ArtifactError(f"{path} is not a readable skops file: {type(exc).__name__}: {exc}") from exc
    unexpected = sorted(set(untrusted) - set(SKOPS_TRUSTED_TYPES))
    if unexpected:
        raise ArtifactError(f"{path} holds types this project does not load: {unexpected}")
    try:
        return sio.load(path, trusted=list(SKOPS_TRUSTED_TYPES))
    except Exception as exc:
        raise ArtifactError(f"{path} could not be loaded: {type(exc).__name__}: {exc}") from exc


def _check_pipeline(pipeline, n_inputs: int, model_dir: Path) -> None:
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = getattr(pipeline, "named_steps", {})
    if not (
        isinstance(pipeline, Pipeline)
        and isinstance(steps.get("scaler"), StandardScaler)
        and isinstance(steps.get("iforest"), IsolationForest)
    ):
        raise ArtifactError(
            f"{model_dir / SAFE_MODEL_FILE} holds a {type(pipeline).__name__}, not the expected "
            "Pipeline(scaler=StandardScaler, iforest=IsolationForest)"
        )
    fitted = getattr(pipeline, "n_features_in_", None)
    if fitted != n_inputs:
        raise ArtifactError(
            f"{model_dir} was fitted on {fitted} inputs but its metadata (schema and feature "
            f"transform) describes {n_inputs}; the artifacts do not belong together"
        )


def _check_scores(model: LoadedModel) -> None:
    """Score probe rows around the training mean with both scorers; they must agree."""
    n_metrics = len(model.schema)
    if model.transform.basis is not None:  # the scaler's first columns are components, not metrics
        center, spread = model.transform.basis.center, model.transform.basis.scale
    else:
        scaler = model.pipeline.named_steps["scaler"]
        center, spread = scaler.mean_[:n_metrics], scaler.scale_[:n_metrics]
    probe = center + np.outer(np.linspace(-3, 3, 7), spread)
    try:
        inputs = model.transform.apply(probe)
        exact = -model.pipeline.score_samples(inputs)
        fast = model.fast.anomaly_scores(inputs) if model.fast is not None else exact
    except Exception as exc:
        raise ArtifactError(f"{model.model_dir} cannot score a probe row: {type(exc).__name__}: {exc}") from exc
    if not (np.all(np.isfinite(exact)) and np.allclose(fast, exact, rtol=0, atol=1e-9)):
        raise ArtifactError(
            f"{model.model_dir}: the fast scorer disagrees with scikit-learn on probe rows "
            f"(max difference {np.max(np.abs(fast - exact)):.3g}); refusing to serve"
        )


def _serving_needs(model_dir: str | Path) -> tuple[FeatureTransform, int, float, bool]:
    """(transform, smoothing rows, engine scoped offset, whether it has a reconstruction score)
    from the model's metadata.json only (nothing unpickled): what a server must do beyond
    scoring each row alone with the forest."""
    path = Path(model_dir) / METADATA_FILE
    try:
        metadata = json.loads(path.read_text())
        transform = FeatureTransform.from_dict(metadata.get("feature_transform"))
        smoothing = int((metadata.get("score_smoothing") or {}).get("rows") or 1)
        scoped_offset = float(metadata.get("engine_scoped_offset") or 0.0)
        second = metadata.get("reconstruction_score") is not None
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ConfigError(f"cannot read the model's {METADATA_FILE} at {path}: {exc}") from exc
    return transform, smoothing, scoped_offset, second


def check_runtime_serves(runtime: str, model_dir: str | Path) -> None:
    """Refuse before anything is applied what the upstream sklearn runtime would serve
    wrongly: it scores each row alone on the columns a client sends, so a model with a
    feature window (expecting more columns), the principal metric basis (trees cut rotated
    metrics), score smoothing (labels from a moving mean) or a reconstruction score (not in
    the pipeline) needs our runtime. Reads the model's metadata.json only (nothing unpickled)."""
    if runtime != "sklearn":
        return
    transform, smoothing, scoped_offset, second = _serving_needs(model_dir)
    needs = [
        f"a {transform.window}-row feature window" if transform.window else "",
        "metrics on their principal axes" if transform.basis is not None else "",
        f"{smoothing}-row score smoothing" if smoothing > 1 else "",
        "a reconstruction error added to the forest's score" if second else "",
        "its own threshold for the platform engine's scoped requests" if scoped_offset else "",
    ]
    if any(needs):
        raise ConfigError(
            f"--runtime sklearn scores each row alone on the metrics as sent, but this model uses "
            f"{', '.join(n for n in needs if n)}: deploy it with --runtime custom (our runtime keeps each "
            "entity's history and applies the model's features), or train a row-wise model for the sklearn "
            "runtime (--feature-window 0 --score-smoothing 0 --metric-basis raw --reconstruction-variance 0"
            + (", and --fixed-engine: the upstream runtime has one threshold" if scoped_offset else "")
            + ")"
        )


def check_replicas(max_replicas: int, model_dir: str | Path, shared_history: bool = False) -> None:
    """A model whose scores depend on an entity's earlier rows is served from history a
    server keeps in its own memory, unless the replicas share a store (``shared_history``:
    serve --history-url). Behind several replicas each would hold part of an entity's rows
    and answer wrongly (Knative and KServe's raw Service route without affinity): without a
    shared store such a model runs as one replica."""
    transform, smoothing, _, _ = _serving_needs(model_dir)
    if max_replicas > 1 and not shared_history and (transform.window or smoothing > 1):
        uses = [
            f"a {transform.window}-row feature window" if transform.window else "",
            f"{smoothing}-row score smoothing" if smoothing > 1 else "",
        ]
        raise ConfigError(
            f"this model scores each row with its entity's earlier rows ({', '.join(u for u in uses if u)}), "
            f"which a server keeps in its own memory: behind {max_replicas} replicas each would see part of an "
            "entity's rows and answer wrongly. Deploy it with --max-replicas 1, give the replicas a shared "
            "history store (--history-secret: a Secret whose key 'url' is redis://...), or train a row-wise "
            "model (--feature-window 0 --score-smoothing 0)"
        )
