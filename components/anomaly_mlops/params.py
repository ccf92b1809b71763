"""Step parameters and their defaults, in a module that imports nothing heavy: the CLI
builds its parser (and --help) from these without loading numpy, pandas, kfp or kserve."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

DEFAULT_IMAGE = "image-registry.openshift-image-registry.svc:5000/anomaly-mlops/anomaly-mlops:0.1.0"
DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_ROWS = 20_000_000
DEFAULT_MAX_INSTANCES = 10_000


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


@dataclass
class TrainParams:
    n_estimators: int = 100
    max_samples: int | str = "auto"
    max_features: float = 1.0
    # Expected share of anomalous rows; the threshold is the (1 - contamination)
    # quantile of the training scores, so no test label ever sets it.
    contamination: float = 0.02
    seed: int = 42
    n_jobs: int | None = None
    # 0: raw metrics. w >= 2: causal time-series features over the last w rows (features.py);
    # requests must then carry the preceding rows, oldest first.
    feature_window: int = 0

    def check(self) -> None:
        if self.n_estimators < 1:
            raise ConfigError(f"n_estimators must be >= 1, got {self.n_estimators}")
        if not 0.0 < self.contamination < 0.5:
            raise ConfigError(f"contamination must be in (0, 0.5), got {self.contamination}")
        if not 0.0 < self.max_features <= 1.0:
            raise ConfigError(f"max_features must be in (0, 1], got {self.max_features}")
        from .features import FeatureTransform

        try:
            FeatureTransform(self.feature_window)  # the one place that knows valid windows
        except ValueError as exc:
            raise ConfigError(f"feature_window: {exc}") from exc
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
    max_score_psi: float | None = 0.25  # without labels: score distribution shift (PSI) from the champion's
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
