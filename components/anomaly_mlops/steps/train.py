"""The train step: StandardScaler + IsolationForest, threshold from the training scores."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from anomaly_mlops import __version__
from anomaly_mlops.errors import ConfigError, DataError
from anomaly_mlops.model.artifacts import (
    ARTIFACT_FORMAT,
    FOREST_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    MODEL_FILE,
    SAFE_MODEL_FILE,
    write_manifest,
)
from anomaly_mlops.model.chunks import map_chunks, threads
from anomaly_mlops.model.drift import ScoreReference, training_ranges
from anomaly_mlops.model.fastforest import compile_forest
from anomaly_mlops.model.features import (
    DEFAULT_SAMPLE_INTERVAL_S,
    FeatureTransform,
    MetricBasis,
    entity_groups,
    parse_window_columns,
    smooth_by_entity,
    smoothing_rows,
    window_rows,
)
from anomaly_mlops.model.platform import SCHEMA_NAME as SELF_HEALING_SCHEMA
from anomaly_mlops.model.reconstruction import ReconstructionScore
from anomaly_mlops.model.schema import FeatureSchema
from anomaly_mlops.params import TrainParams
from anomaly_mlops.sources.files import Dataset, load_dataset
from anomaly_mlops.sources.self_healing import engine_view

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model_dir: Path
    threshold: float
    train_rows: int
    fit_seconds: float
    manifest_sha256: str
    metadata: dict = field(repr=False)


def library_versions() -> dict[str, str]:
    import joblib
    import numpy
    import sklearn
    import skops

    return {
        "anomaly-mlops": __version__,
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "joblib": joblib.__version__,
        "skops": skops.__version__,
    }


@dataclass
class FittedDetector:
    pipeline: object
    threshold: float
    transform: FeatureTransform
    smoothing_rows: int
    sample_interval_s: float
    window_minutes: int
    smoothing_minutes: int
    fit_rows: int
    calibration_scores: np.ndarray = field(repr=False)
    threshold_detail: dict = field(default_factory=dict)
    raw_metric_trees: int = 0
    training_ranges: dict = field(default_factory=dict, repr=False)  # drift.training_ranges of the fitted rows
    labelled_anomalous_left_out: int | None = None  # None: no labels, or fitted like any row
    after_labelled_left_out_of_fit: int | None = None  # rows whose window holds a labelled one
    reconstruction: ReconstructionScore | None = None  # the second score in the raw scores

    def metadata(self) -> dict:
        return {
            "feature_transform": {
                **self.transform.to_dict(),
                "window_minutes": self.window_minutes,
                "sample_interval_s": self.sample_interval_s,
            },
            "score_smoothing": {"rows": self.smoothing_rows, "minutes": self.smoothing_minutes},
            "reconstruction_score": None if self.reconstruction is None else self.reconstruction.to_dict(),
            "threshold_method": self.threshold_detail,
            # As grown: raw_tree_share asks for a share, a tiny or row-wise forest may give fewer.
            "forest": {
                "trees": len(self.pipeline.named_steps["iforest"].estimators_),
                "raw_metric_trees": self.raw_metric_trees,
            },
            "training_ranges": self.training_ranges,
            "labelled_anomalous_rows_left_out": self.labelled_anomalous_left_out,
            "rows_after_labelled_left_out_of_fit": self.after_labelled_left_out_of_fit,
        }


def calibration_mask(n_rows: int, entities: np.ndarray | None, fraction: float) -> np.ndarray:
    """True for the rows held back for calibration: the last ``fraction`` of each entity's rows."""
    held = np.zeros(n_rows, dtype=bool)
    for rows in entity_groups(entities, n_rows):
        held[rows[len(rows) - int(round(len(rows) * fraction)) :]] = True
    return held


def _isolation_forest(params: TrainParams, n_estimators: int, n_rows: int, seed: int):
    from sklearn.ensemble import IsolationForest

    return IsolationForest(
        n_estimators=n_estimators,
        # scikit-learn takes every row (with a warning) when asked for more
        max_samples=params.max_samples if params.max_samples == "auto" else min(params.max_samples, n_rows),
        max_features=params.max_features,
        contamination="auto",
        random_state=seed,
        n_jobs=params.n_jobs,
    )


def raw_tree_count(params: TrainParams, n_columns: int, raw_columns: int | None) -> int:
    """Trees grown on the first ``raw_columns`` columns alone (0 when every column is raw);
    at least one tree sees every column."""
    if not raw_columns or raw_columns >= n_columns:
        return 0
    return min(int(round(params.n_estimators * params.raw_tree_share)), params.n_estimators - 1)


def _grown_on(forest) -> list[np.ndarray]:
    """The columns each tree of ``forest`` was grown on. A tree that saw every column is
    scored on all of them whatever estimators_features_ holds, so say so explicitly."""
    if forest._max_features == forest.n_features_in_:
        return [np.arange(forest.n_features_in_)] * len(forest.estimators_)
    return list(forest.estimators_features_)


def _add_raw_trees(forest, raw_forest, raw_columns: int):
    """``forest`` (fitted on every column) joined by the trees of ``raw_forest`` (fitted on
    the first ``raw_columns``): one IsolationForest whose score averages path lengths over
    all trees, as scikit-learn scores any forest. Each tree keeps the columns it was grown
    on in estimators_features_, and scoring subsets X by them once _max_features differs
    from the column count."""
    forest.estimators_features_ = [*_grown_on(forest), *_grown_on(raw_forest)]
    forest.estimators_ = [*forest.estimators_, *raw_forest.estimators_]
    forest._seeds = np.concatenate([forest._seeds, raw_forest._seeds])
    forest._decision_path_lengths = (*forest._decision_path_lengths, *raw_forest._decision_path_lengths)
    forest._average_path_length_per_tree = (
        *forest._average_path_length_per_tree,
        *raw_forest._average_path_length_per_tree,
    )
    forest.n_estimators = len(forest.estimators_)
    forest._max_features = min(len(f) for f in forest.estimators_features_)  # below the column count
    return forest


def fit_forest(F: np.ndarray, params: TrainParams, raw_columns: int | None = None, overwrite: bool = False):
    """StandardScaler + IsolationForest on ``F``; with ``raw_columns`` (the metrics ahead of
    their window columns) and params.raw_tree_share > 0, that share of the trees is grown on
    the raw metrics alone. ``overwrite``: F is the caller's own copy, scaled in place (a
    second matrix of its size was a third of train's peak memory)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(F)
    Z = scaler.transform(F, copy=not overwrite)  # the fitted scaler keeps copy=True for serving
    n_raw = raw_tree_count(params, F.shape[1], raw_columns)
    forest = _isolation_forest(params, params.n_estimators - n_raw, len(F), params.seed)
    if not n_raw:
        return Pipeline([("scaler", scaler), ("iforest", forest.fit(Z))])
    raw_forest = _isolation_forest(params, n_raw, len(F), params.seed + 1)
    fits = [lambda: forest.fit(Z), lambda: raw_forest.fit(Z[:, :raw_columns])]
    # The two forests on two threads where a step allows them (scikit-learn grows trees without
    # the GIL); each has its own seed, so the trees are the same either way.
    map_chunks(lambda fit: fit(), fits)
    return Pipeline([("scaler", scaler), ("iforest", _add_raw_trees(forest, raw_forest, raw_columns))])


def detector_transform(params: TrainParams, window_minutes: int, sample_interval_s: float) -> FeatureTransform:
    return FeatureTransform(window_rows(window_minutes, sample_interval_s), parse_window_columns(params.window_columns))


def pot_threshold(scores: np.ndarray, risk: float, initial_quantile: float = 0.98) -> float | None:
    """Peaks over threshold: fit a generalized Pareto distribution to the excesses over the
    ``initial_quantile`` and return the score exceeded with probability ``risk``; None
    when the tail is too thin to fit (fewer than 20 excesses)."""
    from scipy.stats import genpareto

    base = float(np.quantile(scores, initial_quantile))
    excess = scores[scores > base] - base
    if excess.size < 20 or np.ptp(excess) == 0:
        return None
    shape, _, scale = genpareto.fit(excess, floc=0)
    ratio = risk * scores.size / excess.size
    level = base - scale * np.log(ratio) if abs(shape) < 1e-9 else base + scale / shape * (ratio ** (-shape) - 1)
    return float(level) if np.isfinite(level) and level >= base else None


POT_FALLBACK = "quantile (pot fallback: thin tail)"


def threshold_from(calibration: np.ndarray, params: TrainParams, method: str) -> tuple[float, dict]:
    """The threshold from held-back scores alone (no label ever sets it), and how it was set.
    ``method``: "pot" or "quantile" (TrainParams.threshold_method)."""
    detail = {"method": method, "calibration_rows": int(calibration.size)}
    threshold = None
    if method == "pot":
        threshold = pot_threshold(calibration, params.pot_risk)
        detail["pot_risk"] = params.pot_risk
        if threshold is None:
            detail["method"] = POT_FALLBACK
    if threshold is None:
        threshold = float(np.quantile(calibration, 1.0 - params.contamination))
        detail["contamination"] = params.contamination
    detail["calibration_flagged_share"] = round(float(np.mean(calibration > threshold)), 6)
    return threshold, detail


class FittedScores(NamedTuple):
    """What fit_scores gives: the forest, the features, every row's raw score, and masks over
    the training rows (``held``: the calibration rows; ``fitted``: the rows the forest was
    fitted on); ``reconstruction`` is the second score in ``raw``, when there is one."""

    pipeline: object
    transform: FeatureTransform
    raw: np.ndarray
    held: np.ndarray
    fitted: np.ndarray
    reconstruction: ReconstructionScore | None


def fit_scores(
    X: np.ndarray,
    params: TrainParams,
    window_minutes: int,
    sample_interval_s: float,
    *,
    entities: np.ndarray | None = None,
    train_rows: int | None = None,
    labelled_anomalous: np.ndarray | None = None,
    fit_only: np.ndarray | None = None,
    smoothing: int | None = None,
) -> FittedScores:
    """The forest and its raw scores: features of ``X`` over time (per entity), a forest
    fitted on the earlier rows of each entity among the first ``train_rows`` rows (all by
    default; evaluate scores a test part that continues the series), the metric basis
    (params.metric_basis) and the reconstruction error's axes (params.reconstruction_variance)
    fitted on the same rows, and the raw score of every row: -score_samples, plus the
    reconstruction error weighed on the calibration rows (model/reconstruction.py).
    Rows marked in ``labelled_anomalous`` (over the first ``train_rows``) are
    left out as ``training_masks`` says; they still serve as history for their neighbours'
    features. ``held`` and ``fitted`` are masks over the first ``train_rows``: ``held`` the
    calibration rows (held back, not labelled anomalous), ``fitted`` the rows the forest was
    fitted on. Rows marked in ``fit_only`` are never held back.
    With ``smoothing`` (the rows calibrate will smooth over), of the first ``train_rows`` only the
    calibration part and the ``smoothing - 1`` rows before it are scored (the rest are 0 and
    unused): scoring every training row cost twice the fit itself."""
    transform = detector_transform(params, window_minutes, sample_interval_s)
    n = len(X) if train_rows is None else train_rows
    fitted, held = training_masks(n, None if entities is None else entities[:n], params, labelled_anomalous, transform)
    if fit_only is not None:
        held &= ~fit_only[:n]
    if params.basis_for(window_minutes) == "principal":
        transform = replace(transform, basis=MetricBasis.fit(X[:n][fitted]))
    needed = np.ones(len(X), dtype=bool)  # the rows to score
    if smoothing is not None:
        calibration = calibration_mask(n, None if entities is None else entities[:n], params.calibration_fraction)
        needed[:n] = calibration
        for shift in range(1, smoothing):  # the rows each calibration row's smoothing reaches back to
            needed[: n - shift] |= calibration[shift:]
    m = X.shape[1]
    with threads():  # window columns and scores on every core; the figures are the same on one
        F = transform.apply_by_entity(X, entities)
        # The fitted rows and the rows to score, each a copy; the whole matrix goes before the fit.
        fit_rows, score_rows = F[:n][fitted], (F if needed.all() else F[needed])
        del F
        # before the fit scales fit_rows in place: the metrics (or their components) as served
        reconstruction = ReconstructionScore.fit(
            fit_rows[:, :m], params.reconstruction_variance, standardized=transform.basis is not None
        )
        pipeline = fit_forest(fit_rows, params, raw_columns=m, overwrite=True)
        del fit_rows
        raw = np.zeros(len(X))
        # the flattened forest the servers score with (scikit-learn's scores to 1e-16)
        forest = compile_forest(pipeline)
        raw[needed] = forest.anomaly_scores(score_rows) if forest is not None else -pipeline.score_samples(score_rows)
    if reconstruction is not None:  # weighed on the held-back rows (each one of the scored rows)
        held_rows = score_rows[(np.cumsum(needed) - 1)[:n][held], :m]
        reconstruction = reconstruction.calibrated(raw[:n][held], reconstruction.errors(held_rows))
        if reconstruction is not None:  # as the servers add it (LoadedModel.raw_scores)
            raw[needed] += reconstruction.scores(score_rows[:, :m])
    return FittedScores(pipeline, transform, raw, held, fitted, reconstruction)


def training_masks(
    n_rows: int,
    entities: np.ndarray | None,
    params: TrainParams,
    labelled_anomalous: np.ndarray | None,
    transform: FeatureTransform,
) -> tuple[np.ndarray, np.ndarray]:
    """(fitted, held): the rows the forest is fitted on and the held-back rows that set the
    threshold. Rows labelled anomalous are in neither. Nor is, in the fit, a row whose
    feature window holds one (its deviation and spread describe the incident, not normal
    behaviour); such rows stay among the held-back ones, because served rows after an
    incident look the same and the threshold should expect them."""
    held = calibration_mask(n_rows, entities, params.calibration_fraction)
    fitted = ~held
    if labelled_anomalous is not None:
        fitted &= ~rows_whose_window_holds(labelled_anomalous, entities, max(transform.window, 1))
        held &= ~labelled_anomalous
        _check_enough_normal_rows(int(fitted.sum()), int(held.sum()), params, transform.window)
    return fitted, held


def rows_whose_window_holds(marked: np.ndarray, entities: np.ndarray | None, window: int) -> np.ndarray:
    """Rows whose window (the row and the ``window - 1`` rows of its entity before it) holds a marked row."""
    marked = np.asarray(marked, dtype=bool)
    if window <= 1:
        return marked.copy()
    out = np.zeros_like(marked)
    for group in entity_groups(entities, len(marked)):
        seen = np.concatenate([[0], np.cumsum(marked[group])])
        end = np.arange(1, len(group) + 1)
        out[group] = seen[end] - seen[np.maximum(end - window, 0)] > 0
    return out


MIN_NORMAL_ROWS = 16


def _check_enough_normal_rows(fitted: int, calibration: int, params: TrainParams, window: int) -> None:
    way_out = "train on a longer lookback, or pass --fit-labelled-anomalies to fit them like any other row"
    if fitted < MIN_NORMAL_ROWS:
        after = f" nor within the {window}-row feature window after such a row" if window > 1 else ""
        raise DataError(
            f"only {fitted} of the rows the forest would be fitted on (the first {1 - params.calibration_fraction:.0%} "
            f"of each series) are {'neither ' if after else 'not '}labelled anomalous{after}; it needs at least "
            f"{MIN_NORMAL_ROWS}: {way_out}"
        )
    if calibration < MIN_NORMAL_ROWS:
        raise DataError(
            f"only {calibration} of the held-back rows that set the threshold (the last "
            f"{params.calibration_fraction:.0%} of each series) are not labelled anomalous; the threshold needs at "
            f"least {MIN_NORMAL_ROWS}: {way_out}"
        )


def calibrate(
    raw: np.ndarray, held: np.ndarray, params: TrainParams, smoothing: int, entities: np.ndarray | None = None
) -> tuple[np.ndarray, float, dict]:
    """Anomaly scores (``raw`` smoothed over ``smoothing`` rows per entity) and the threshold
    from the held-back ones: (scores, threshold, how it was set)."""
    scores = smooth_by_entity(raw, entities, smoothing)
    threshold, detail = threshold_from(scores[: len(held)][held], params, params.threshold_method)
    return scores, threshold, detail


def engine_scoped_offset(dataset: Dataset, copies: np.ndarray, fitted: FittedDetector, params: TrainParams):
    """For the self-healing-platform schema trained on engine_view: what a scoped request's
    score (node metrics at the engine's defaults) gains so that one threshold serves both kinds
    of row. The copies' node block is one dense point, so they score lower than the rows they
    copy; the offset is the threshold minus the same threshold method on the copies' own
    held-back rows. None for a model that is not row-wise (served rows are then not the
    features the offset is applied to)."""
    if fitted.transform.window or fitted.transform.basis is not None or fitted.reconstruction is not None:
        log.warning("no scoped-request threshold for a model with a feature window, a metric basis or a second score")
        return None
    held = calibration_mask(dataset.n_rows, dataset.entities, params.calibration_fraction) & copies
    if dataset.y is not None and not params.fit_labelled_anomalies:
        held &= dataset.y != 1
    scores = -fitted.pipeline.score_samples(dataset.X[held])
    scoped_threshold, _ = threshold_from(scores, params, params.threshold_method)
    offset = float(fitted.threshold - scoped_threshold)
    log.info(
        "scoped requests (node metrics at the engine's defaults): threshold %.5f, offset %+.5f",
        scoped_threshold,
        offset,
    )
    return offset


def check_series_cover_the_window(entities: np.ndarray | None, n_rows: int, window: int, minutes: int) -> None:
    """A forest that never saw a complete window would judge every served row, once its
    history is complete, by features unlike any it was fitted on: refuse data where no series
    is longer than the window, and warn about the series that are not."""
    if not window:
        return
    lengths = [len(group) for group in entity_groups(entities, n_rows)]
    short = sum(length <= window for length in lengths)
    if short == len(lengths):
        raise DataError(
            f"the training data's longest series has {max(lengths)} rows, no more than the {window}-row feature "
            f"window ({minutes} min): no row has a complete window. Train on a longer lookback, or pass a shorter "
            "--feature-window (0: the raw metrics alone)"
        )
    if short:
        log.warning(
            "%d of %d series have no more rows than the %d-row feature window: all of their rows are fitted "
            "with partial windows",
            short,
            len(lengths),
            window,
        )


def fit_detector(
    X: np.ndarray,
    params: TrainParams,
    *,
    entities: np.ndarray | None = None,
    sample_interval_s: float | None = None,
    client_built_features: bool = False,
    labels: np.ndarray | None = None,
    fit_only: np.ndarray | None = None,
) -> FittedDetector:
    """Features over time, a forest fitted on the earlier rows of each entity, and the
    threshold from the smoothed scores of the later ones; rows ``labels`` marks anomalous
    take part in neither unless params.fit_labelled_anomalies; rows ``fit_only`` marks are
    fitted, never held back for the threshold (they would stand for served rows they are not)."""
    window_minutes, smoothing_minutes = params.windows_for(client_built_features)
    interval = params.sample_interval_s or sample_interval_s or DEFAULT_SAMPLE_INTERVAL_S
    k = smoothing_rows(smoothing_minutes, interval)
    check_series_cover_the_window(entities, len(X), window_rows(window_minutes, interval), window_minutes)
    left_out = None if labels is None or params.fit_labelled_anomalies else np.asarray(labels) == 1
    pipeline, transform, raw, held, fitted, reconstruction = fit_scores(
        X, params, window_minutes, interval, entities=entities, labelled_anomalous=left_out, fit_only=fit_only,
        smoothing=k,
    )  # fmt: skip
    scores, threshold, detail = calibrate(raw, held, params, k, entities)
    if detail["method"] == POT_FALLBACK:
        log.warning("too few calibration rows for a peaks-over-threshold fit; using the quantile threshold")
    # predict() flags score_samples < offset_, i.e. anomaly score > -offset_ (unsmoothed).
    pipeline.named_steps["iforest"].offset_ = -threshold
    return FittedDetector(
        pipeline=pipeline,
        threshold=threshold,
        transform=transform,
        reconstruction=reconstruction,
        smoothing_rows=k,
        sample_interval_s=interval,
        window_minutes=window_minutes,
        smoothing_minutes=smoothing_minutes,
        fit_rows=int(fitted.sum()),
        calibration_scores=scores[held],
        threshold_detail=detail,
        raw_metric_trees=raw_tree_count(params, transform.width(X.shape[1]), X.shape[1]),
        training_ranges=training_ranges(X[fitted]),
        labelled_anomalous_left_out=None if left_out is None else int(left_out.sum()),
        # neither fitted nor calibrated on, nor labelled: the rows after an incident in the fitted part
        after_labelled_left_out_of_fit=None if left_out is None else int((~fitted & ~held & ~left_out).sum()),
    )


def write_forest_arrays(pipeline, path: Path, seed: int = 0, probes: int = 64) -> None:
    """forest.npz: the flattened forest and probe rows (training mean and spread, random
    draws around it) with scikit-learn's scores, which the loader must reproduce."""
    from anomaly_mlops.model.fastforest import CompiledForest

    forest = CompiledForest(pipeline)
    rng = np.random.default_rng(seed)
    spread = forest.scale
    probe = np.vstack(
        [
            forest.mean + np.outer(np.linspace(-3, 3, 7), spread),
            forest.mean + spread * rng.normal(0, 1.5, size=(probes - 7, len(spread))),
        ]
    )
    with open(path, "wb") as handle:
        np.savez(handle, **forest.to_arrays(), probe=probe, probe_scores=-pipeline.score_samples(probe))


def _prepare_output(out: Path) -> Path:
    """Refuse a used or unwritable output before any work; return the staging directory
    beside it (a crash never leaves a half model at ``out``)."""
    if out.is_symlink() or out.exists() and (not out.is_dir() or any(out.iterdir())):
        kind = "is not empty" if out.is_dir() else "exists and is not a directory"
        raise ConfigError(f"model output {out} {kind}; choose a new directory")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the model output beside {out}: {exc.strerror}") from exc
    return staging


def provenance(git_commit: str | None = None, run_id: str | None = None) -> dict:
    """Which code and which run made a model: the commit (given, or the image's
    ANOMALY_MLOPS_GIT_COMMIT, set when the image is built from a commit) and the run id."""
    return {
        "git_commit": git_commit or os.environ.get("ANOMALY_MLOPS_GIT_COMMIT") or None,
        "run_id": run_id or os.environ.get("ANOMALY_MLOPS_RUN_ID") or None,
    }


def train(
    data: Dataset | str,
    out_dir: str | os.PathLike,
    params: TrainParams | None = None,
    schema: FeatureSchema | None = None,
    origin: dict | None = None,
) -> TrainResult:
    """Fit and write a complete model directory (manifest last) at ``out_dir``.
    ``origin`` (see ``provenance``) is recorded in metadata.json."""
    import joblib
    import skops.io as skops_io

    params = params or TrainParams()
    params.check()
    out = Path(out_dir)
    staging = _prepare_output(out)
    try:
        dataset = data if isinstance(data, Dataset) else load_dataset(data, schema)
        engine_features = fit_only = None
        if dataset.schema.name == SELF_HEALING_SCHEMA:
            engine_features = "as computed" if params.fixed_engine else "engine fallbacks"
            if not params.fixed_engine:
                dataset, fit_only = engine_view(dataset)
                log.info(
                    "training on what the platform's engine sends: lags = value, diff = pct_change = 0, and each "
                    "row again with the engine's node defaults (scoped requests); --fixed-engine trains on the "
                    "features as computed"
                )
        if dataset.n_rows < 16:
            raise DataError(f"training needs at least 16 rows, {dataset.source} has {dataset.n_rows}")
        constant = [n for n, s in zip(dataset.schema.features, dataset.X.std(axis=0)) if s == 0]
        if constant:
            log.warning("features constant in training data (they carry no signal): %s", constant)

        started = time.perf_counter()
        fitted = fit_detector(
            dataset.X,
            params,
            entities=dataset.entities,
            sample_interval_s=dataset.sample_interval_s,
            client_built_features=dataset.schema.client_built_features,
            labels=dataset.y,
            fit_only=fit_only,
        )
        if fitted.labelled_anomalous_left_out:
            log.info(
                "left %d rows labelled anomalous (%.2f%%) out of the fit and the calibration, and the %d rows "
                "whose feature window holds one out of the fit (--fit-labelled-anomalies keeps them)",
                fitted.labelled_anomalous_left_out,
                100 * fitted.labelled_anomalous_left_out / dataset.n_rows,
                fitted.after_labelled_left_out_of_fit,
            )
        pipeline, threshold = fitted.pipeline, fitted.threshold
        scoped_offset = None if fit_only is None else engine_scoped_offset(dataset, fit_only, fitted, params)
        fit_seconds = time.perf_counter() - started
        log.info(
            "fitted %d trees on %d rows x %d features (window %d min = %d rows, scores smoothed over %d rows) "
            "in %.2fs; threshold %.5f (%s on %d held-back rows, %.2f%% of them above)",
            params.n_estimators,
            fitted.fit_rows,
            len(fitted.transform.names(dataset.schema.features)),
            fitted.window_minutes,
            fitted.transform.window,
            fitted.smoothing_rows,
            fit_seconds,
            threshold,
            fitted.threshold_detail["method"],
            fitted.calibration_scores.size,
            100 * fitted.threshold_detail["calibration_flagged_share"],
        )

        joblib.dump(pipeline, staging / MODEL_FILE)
        skops_io.dump(pipeline, staging / SAFE_MODEL_FILE)
        write_forest_arrays(pipeline, staging / FOREST_FILE, seed=params.seed)
        metadata = {
            "artifact_format": ARTIFACT_FORMAT,
            "model_type": "StandardScaler+IsolationForest",
            "schema": dataset.schema.to_dict(),
            "threshold": threshold,
            **fitted.metadata(),
            "score_definition": "anomaly_score = moving mean over score_smoothing.rows of "
            "-pipeline.score_samples(feature_transform(x)) + reconstruction_score.weight * "
            "(|(m - center) / scale, off the kept axes|^2 - reconstruction_score.offset), m the first "
            "len(schema) columns of feature_transform(x), the second term 0 when reconstruction_score is null; "
            "per entity, oldest first; anomalous when anomaly_score > threshold",
            "params": asdict(params),
            **({"engine_features": engine_features} if engine_features else {}),
            **({"engine_scoped_offset": scoped_offset} if scoped_offset is not None else {}),
            "data": {"source": dataset.source, "sha256": dataset.sha256, "rows": dataset.n_rows},
            "library_versions": library_versions(),
            # what served traffic is compared with (served-score bins and flagged share on /metrics)
            "score_reference": ScoreReference.of_scores(fitted.calibration_scores, threshold).to_dict(),
            "calibration_score_quantiles": {
                q: float(np.quantile(fitted.calibration_scores, float(q))) for q in ("0.5", "0.9", "0.99")
            },
            "fit_seconds": round(fit_seconds, 3),
            "provenance": origin or provenance(),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        manifest_sha = write_manifest(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    staging.rename(out)
    log.info("model written to %s (%s %s…)", out, MANIFEST_FILE, manifest_sha[:12])
    return TrainResult(out, threshold, dataset.n_rows, fit_seconds, manifest_sha, metadata)
