"""Step parameters and their defaults, in a module that imports nothing heavy: the CLI
builds its parser (and --help) from these without loading numpy, pandas, kfp or kserve."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from anomaly_mlops.errors import ConfigError

DEFAULT_IMAGE = "image-registry.openshift-image-registry.svc:5000/anomaly-mlops/anomaly-mlops:0.1.0"
DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_ROWS = 20_000_000
DEFAULT_MAX_INSTANCES = 10_000
DEFAULT_MAX_ENTITIES = 10_000  # series whose history a server keeps (history.py)
MIN_SPLIT_ROWS = 10  # rows each side of the train/holdout split, and in a holdout validate takes
MAX_SEED = 2**32 - 1  # exclusive: seed + 1 must stay below scikit-learn's 2**32
# The lean server's guard against careless and hostile clients (serving/http_guard.py).
DEFAULT_MAX_HEAD_BYTES = 64 * 1024
DEFAULT_HEAD_TIMEOUT_S = 10.0
DEFAULT_MAX_LARGE_REQUESTS = 4  # large requests read, decoded and scored at once
# serve's --history-url from the environment: a URL with a password comes from a secret, not argv.
HISTORY_URL_ENV = "ANOMALY_MLOPS_HISTORY_URL"
# The unlabelled score-shift gate (benchmarks/score_shift.py): two healthy forests score the
# same rows on slightly different scales, and their scores crowd a narrow band, so PSI over
# the champion's deciles reached 2.2 for a healthy retraining (over half above the textbook
# 0.25); broken challengers (metrics scaled, columns swapped, rows shuffled) gave 8.3.
DEFAULT_MAX_SCORE_PSI = 4.0
# What a retraining on live metrics fetches when not told (data --lookback, the pipelines'
# lookback). Backtested as the weekly run (benchmarks/recurring_run.py): on 7 unlabelled days,
# the latest 30% of them validate's, it lost F1 to the static model on three of the five SMD
# machines; each machine left out, the other four chose 14 days for four of them.
RETRAINING_LOOKBACK = "14d"
# Detector defaults, chosen by `anomaly-mlops evaluate --tune` (docs/evidence/quality.md):
# among the candidates that pass the default release gates on the project's synthetic data
# with each of four seeds, the best F1 on NAB averaged over them, reported on SMD machines
# the choice never saw. Each metric with its deviation from the mean and its spread over the
# last 120 minutes; half of the trees grown on the raw metrics alone (with every tree seeing
# every column, the window columns drown the synthetic level shifts the raw metrics show);
# trees of 4096 rows (scikit-learn's "auto" is 256); anomaly scores averaged over the last 10
# minutes; the threshold at the (1 - contamination) quantile of held-back training scores
# (NAB cannot tell it from "pot", the synthetic draws prefer it). NAB cannot judge the metric
# basis (one metric per series): see DEFAULT_METRIC_BASIS.
DEFAULT_FEATURE_WINDOW_MIN = 120
DEFAULT_SCORE_SMOOTHING_MIN = 10
DEFAULT_MAX_SAMPLES = 4096
# What a feature window adds to each metric (model.features computes them).
WINDOW_COLUMNS = ("delta", "deviation", "std")
DEFAULT_WINDOW_COLUMNS = "deviation,std"  # of WINDOW_COLUMNS, spelled as the CLI takes it
DEFAULT_RAW_TREE_SHARE = 0.5
DEFAULT_THRESHOLD = "quantile"
# raw: the rotation's F1 gain on the five shared SMD machines rests on two of them and reversed on
# labelled machines the project never saw (docs/evidence/quality.md)
DEFAULT_METRIC_BASIS = "raw"
# The reconstruction error added to the forest's score (model/reconstruction.py) is off by
# default: on the shared SMD machines it raises mean F1 mostly through one machine, it flags
# more rows on the synthetic draws and on the drifting machine, and the principal basis, the
# same idea inside the trees, reversed on machines the project never saw
# (docs/evidence/quality.md). 0.9 (the share of variance the kept axes explain) is the level measured.
DEFAULT_RECONSTRUCTION_VARIANCE = 0.0
METRIC_BASES = ("raw", "principal")  # features.MetricBasis is "principal"; None there is "raw"
THRESHOLD_METHODS = ("pot", "quantile")


SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def service_account_token() -> str | None:
    """The pod's service-account token (what the KFP components send to in-cluster APIs); None
    outside a pod."""
    from pathlib import Path

    path = Path(SERVICE_ACCOUNT_TOKEN)
    return path.read_text().strip() if path.is_file() else None


def read_token(path: str | None) -> str | None:
    """A bearer token from a file (never logged); None without a path."""
    from pathlib import Path

    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from exc
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def check_seed(seed) -> None:
    """A seed numpy and scikit-learn take, with room for the raw-metric trees' seed + 1."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ConfigError(f"seed must be an integer from 0 to {MAX_SEED - 1}, got {seed!r}")


@dataclass
class TrainParams:
    n_estimators: int = 100
    max_samples: int | str = DEFAULT_MAX_SAMPLES  # rows drawn per tree (at most the training rows), or "auto"
    max_features: float = 1.0
    # Expected share of anomalous rows: the validate step's flagged-rate gate compares with
    # it, and threshold="quantile" flags this share of the calibration rows.
    contamination: float = 0.02
    seed: int = 42
    n_jobs: int | None = None
    # Minutes of history behind each row's features (0: raw metrics) and of score smoothing
    # (0: none). None: the schema's default (DEFAULT_*_MIN; 0 for a schema whose features
    # the client builds, such as self-healing-platform).
    feature_window: int | None = None
    score_smoothing: int | None = None
    # With a feature window: the window columns each metric gains (WINDOW_COLUMNS),
    # and the share of trees grown on the raw metrics alone (the rest see every column), so
    # that the window columns, three times as many, do not drown the raw metrics' signal.
    window_columns: str = DEFAULT_WINDOW_COLUMNS
    raw_tree_share: float = DEFAULT_RAW_TREE_SHARE
    # "principal": the metrics, standardized, turned onto their principal axes over the
    # fitted rows before the window columns are computed (features.MetricBasis); "raw": as
    # they come. None: DEFAULT_METRIC_BASIS with a feature window; "raw" without one, so that
    # a row-wise model (the self-healing-platform schema's default) stays one the upstream
    # sklearn runtime can serve, whatever the default.
    metric_basis: str | None = None
    # With two metrics or more: the reconstruction error from the principal axes that explain
    # this share of the fitted rows' variance is added to the forest's score
    # (model/reconstruction.py); 0 leaves the forest's score alone. The upstream sklearn
    # runtime cannot serve such a model: its pipeline has no second score.
    reconstruction_variance: float = DEFAULT_RECONSTRUCTION_VARIANCE
    # The threshold comes from scores of the last calibration_fraction of the training rows
    # (per entity, by time), which the forest does not see: "pot" fits a generalized Pareto
    # tail and puts the threshold where a calibration score exceeds it with probability
    # pot_risk; "quantile" takes the (1 - contamination) quantile.
    threshold: str | None = None  # None: DEFAULT_THRESHOLD
    pot_risk: float = 0.001
    calibration_fraction: float = 0.2
    # Rows the training data labels anomalous (alert history, incidents, the synthetic
    # generator's labels) are left out of the fit and of the calibration rows, so that the
    # forest does not learn known incidents as normal and the threshold is a quantile of
    # normal scores; True fits them like any other row (as the first releases did).
    fit_labelled_anomalies: bool = False
    # Seconds between rows; None: from the data's timestamps, or 60 without them.
    sample_interval_s: float | None = None
    # The self-healing-platform schema: train on what the platform's engine really sends (its
    # lag fallback, and node defaults in scoped requests: self_healing.engine_view); True
    # trains on the features as computed, for an engine whose lag queries work.
    fixed_engine: bool = False

    @property
    def threshold_method(self) -> str:
        """The threshold method, DEFAULT_THRESHOLD filled in: "quantile" for every schema
        (chosen by --tune for the default one; for the platform's finished features it keeps
        the incidents of tests/test_self_healing.py flagged)."""
        return self.threshold or DEFAULT_THRESHOLD

    def windows_for(self, client_built_features: bool) -> tuple[int, int]:
        """(feature window, score smoothing) in minutes, the schema's defaults filled in."""
        default_window, default_smoothing = (
            (0, 0) if client_built_features else (DEFAULT_FEATURE_WINDOW_MIN, DEFAULT_SCORE_SMOOTHING_MIN)
        )
        return (
            default_window if self.feature_window is None else self.feature_window,
            default_smoothing if self.score_smoothing is None else self.score_smoothing,
        )

    def basis_for(self, window_minutes: int) -> str:
        """The metric basis for a model with this feature window, the default filled in."""
        if self.metric_basis is not None:
            return self.metric_basis
        return DEFAULT_METRIC_BASIS if window_minutes else "raw"

    @classmethod
    def from_pipeline(
        cls, *, n_estimators: int, max_samples: str, contamination: float, seed: int, feature_window: int,
        window_columns: str, raw_tree_share: float, metric_basis: str, reconstruction_variance: float,
        score_smoothing: int, threshold: str, fit_labelled_anomalies: bool, fixed_engine: bool,
    ) -> TrainParams:  # fmt: skip
        """The parameters from the training pipeline's run parameters, whose types KFP fixes:
        -1 for a default window or smoothing, '' for a default basis or threshold, max_samples
        a row count or 'auto' in a string."""
        try:
            samples = max_samples if max_samples == "auto" else int(max_samples)
        except (TypeError, ValueError):
            raise ConfigError(f"max_samples must be 'auto' or a positive row count, got {max_samples!r}") from None
        return cls(
            n_estimators=n_estimators,
            contamination=contamination,
            seed=seed,
            max_samples=samples,
            feature_window=None if feature_window < 0 else feature_window,
            window_columns=window_columns,
            raw_tree_share=raw_tree_share,
            metric_basis=metric_basis or None,
            reconstruction_variance=reconstruction_variance,
            score_smoothing=None if score_smoothing < 0 else score_smoothing,
            threshold=threshold or None,
            fit_labelled_anomalies=fit_labelled_anomalies,
            fixed_engine=fixed_engine,
        )

    def check(self) -> None:
        check_seed(self.seed)
        if self.n_estimators < 1:
            raise ConfigError(f"n_estimators must be >= 1, got {self.n_estimators}")
        if not 0.0 < self.contamination < 0.5:
            raise ConfigError(f"contamination must be in (0, 0.5), got {self.contamination}")
        if not 0.0 < self.max_features <= 1.0:
            raise ConfigError(f"max_features must be in (0, 1], got {self.max_features}")
        for name in ("feature_window", "score_smoothing"):
            minutes = getattr(self, name)
            if minutes is not None and (isinstance(minutes, bool) or minutes < 0):
                raise ConfigError(f"{name} is in minutes and must be >= 0, got {minutes}")
        try:
            parse_window_columns(self.window_columns)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if isinstance(self.raw_tree_share, bool) or not 0.0 <= self.raw_tree_share < 1.0:
            raise ConfigError(f"raw_tree_share must be in [0, 1), got {self.raw_tree_share!r}")
        if self.metric_basis is not None and self.metric_basis not in METRIC_BASES:
            raise ConfigError(f"metric_basis must be one of {METRIC_BASES}, got {self.metric_basis!r}")
        variance = self.reconstruction_variance
        if isinstance(variance, bool) or not isinstance(variance, int | float) or not 0.0 <= variance < 1.0:
            raise ConfigError(
                f"reconstruction_variance must be in [0, 1) (0: the forest's score alone), got {variance!r}"
            )
        if self.threshold is not None and self.threshold not in THRESHOLD_METHODS:
            raise ConfigError(f"threshold must be one of {THRESHOLD_METHODS}, got {self.threshold!r}")
        if not isinstance(self.fit_labelled_anomalies, bool):
            raise ConfigError(f"fit_labelled_anomalies must be true or false, got {self.fit_labelled_anomalies!r}")
        if not 0.0 < self.pot_risk < 0.1:
            raise ConfigError(f"pot_risk must be in (0, 0.1), got {self.pot_risk}")
        if not 0.05 <= self.calibration_fraction <= 0.5:
            raise ConfigError(f"calibration_fraction must be in [0.05, 0.5], got {self.calibration_fraction}")
        if self.sample_interval_s is not None and not self.sample_interval_s > 0:
            raise ConfigError(f"sample_interval_s must be > 0, got {self.sample_interval_s}")
        if isinstance(self.max_samples, str) and self.max_samples != "auto":
            raise ConfigError(f"max_samples must be 'auto' or an integer, got {self.max_samples!r}")
        if isinstance(self.max_samples, bool) or (not isinstance(self.max_samples, str) and self.max_samples < 1):
            raise ConfigError(f"max_samples must be 'auto' or a positive row count, got {self.max_samples!r}")


@dataclass
class Gates:
    """Release thresholds; None switches a gate off."""

    min_roc_auc: float | None = 0.80
    min_pr_auc: float | None = 0.30
    min_f1: float | None = None
    max_single_row_p99_ms: float | None = 100.0
    max_batch_row_p99_us: float | None = None  # p99 batch latency divided by batch size
    # Against the champion (the released version), on the same rows:
    max_auc_drop: float | None = 0.02  # with labels: ROC-AUC and PR-AUC may be at most this much lower
    max_score_psi: float | None = DEFAULT_MAX_SCORE_PSI  # without labels: score shift (PSI) from the champion's
    # Without labels: the share of rows flagged may be at most this multiple of the contamination.
    max_flagged_rate_ratio: float | None = 3.0

    @classmethod
    def with_negatives_off(cls, **thresholds: float | None) -> Gates:
        """Gates from flag or pipeline-parameter values, where a negative switches a gate off."""
        return cls(**{k: None if v is not None and v < 0 else v for k, v in thresholds.items()})


@dataclass
class LatencyPlan:
    single_row_repeats: int = 300
    batch_sizes: tuple[int, ...] = (100, 1000)
    batch_repeats: int = 20
    warmup: int = 10


@dataclass
class VerifyPlan:
    requests: int = 200
    slo_p99_ms: float = 100.0
    max_error_rate: float = 0.0
    parity_tolerance: float = 1e-6
    readiness_timeout_s: float = 120.0
    request_timeout_s: float = 10.0
    parity_rows: int = 64

    def check(self) -> None:
        """Settings that would make a check pass whatever the server does (no requests, a NaN
        SLO, an error rate of 1) or wait for ever are refused."""
        for name in ("requests", "parity_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"verify {name} must be a whole number >= 1, got {value!r}")
        for name in ("slo_p99_ms", "readiness_timeout_s", "request_timeout_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"verify {name} must be a finite number above 0, got {getattr(self, name)!r}")
        if not 0 <= self.max_error_rate < 1:
            raise ConfigError(f"verify max_error_rate must be in [0, 1), got {self.max_error_rate!r}")
        if not 0 <= self.parity_tolerance < math.inf:
            raise ConfigError(f"verify parity_tolerance must be a finite number >= 0, got {self.parity_tolerance!r}")


def parse_window_columns(text) -> tuple[str, ...]:
    """Window columns from "delta,deviation,std" (any order, any non-empty subset) or a
    sequence of names; returned in WINDOW_COLUMNS order."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else [str(n) for n in text]
    unknown = [n for n in names if n not in WINDOW_COLUMNS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"window columns must be a non-empty list of distinct names from {', '.join(WINDOW_COLUMNS)}; got {text!r}"
        )
    return tuple(c for c in WINDOW_COLUMNS if c in names)


_PROMETHEUS_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")  # Prometheus' duration syntax
_DURATION_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def prometheus_seconds(duration: str) -> float:
    """Seconds in a Prometheus duration (checked by _PROMETHEUS_DURATION), e.g. 1h30m."""
    return sum(int(n) * _DURATION_UNITS_S[unit] for n, unit in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", duration))


@dataclass(frozen=True)
class DriftAlertParams:
    """The drift alerts' settings (serving/alert_rules.py, `anomaly-mlops alert-rules`)."""

    # Chosen on the shared labelled machines (benchmarks/alert_thresholds.py, docs/reference/monitoring.md):
    # a fifth of all rows flagged for six hours; the score PSI is recorded, its alert is opt-in.
    window: str = "6h"
    hold: str = "30m"
    # The retraining trigger: the same condition held this long is a new normal, not an incident
    # (incidents end within a day), and the drift run fetches this much of the latest rows (the
    # drift template's lookback), every fitted one after the move and a whole day of them (with
    # the holdout's 30% beside); backtested in docs/evidence/quality.md (benchmarks/drift_loop.py).
    retrain_after: str = "36h"
    flagged_ratio: float = 10.0
    max_psi: float | None = None
    min_rows: int = 500
    name: str = "anomaly-detector-drift"
    severity: str = "warning"

    def check(self) -> None:
        for flag, value in (("--window", self.window), ("--for", self.hold), ("--retrain-after", self.retrain_after)):
            if not _PROMETHEUS_DURATION.match(value):
                raise ConfigError(f"{flag} must be a Prometheus duration such as 30m or 1h, got {value!r}")
        for flag, value in (("--window", self.window), ("--retrain-after", self.retrain_after)):
            if not prometheus_seconds(value) > 0:  # a range of 0 is a PromQL parse error; a 0 fetch has no rows
                raise ConfigError(f"{flag} must be longer than 0, got {value!r}")
        if prometheus_seconds(self.retrain_after) < prometheus_seconds(self.hold):
            raise ConfigError(
                f"--retrain-after ({self.retrain_after}) must be at least --for ({self.hold}): the retraining "
                "alert is the flagging alert's condition held longer"
            )
        if not 1 < self.flagged_ratio < math.inf:
            raise ConfigError(
                f"--flagged-ratio must be a finite number above 1 (times the calibrated share), got {self.flagged_ratio}"
            )
        if self.max_psi is not None and not 0 < self.max_psi < math.inf:
            raise ConfigError(f"--max-psi must be a finite number above 0, got {self.max_psi}")
        if self.min_rows < 1:
            raise ConfigError(f"--min-rows must be at least 1, got {self.min_rows}")
        if not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", self.name) or len(self.name) > 253:
            raise ConfigError(f"--name must be a Kubernetes object name (lower case, digits, '-'), got {self.name!r}")

    def recorded(self, what: str) -> str:
        """The name of a recording rule over this window."""
        return f"anomaly_detector:{what}:{self.window}"


# steps/trustyai.py: the drift metrics scheduled and the training rows uploaded as the reference.
TRUSTYAI_DRIFT_METRICS = "meanshift,kstest"
TRUSTYAI_REFERENCE_ROWS = 1000
