"""``anomaly-mlops train|validate|evaluate``: fit the detector, gate a release, measure detection quality."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from anomaly_mlops.adapters.cli.parsing import SubParsers
from anomaly_mlops.params import (
    DEFAULT_FEATURE_WINDOW_MIN,
    DEFAULT_METRIC_BASIS,
    DEFAULT_RECONSTRUCTION_VARIANCE,
    DEFAULT_SCORE_SMOOTHING_MIN,
    DEFAULT_THRESHOLD,
    METRIC_BASES,
    THRESHOLD_METHODS,
)


def _gates_from(args):
    from anomaly_mlops.params import Gates

    return Gates.with_negatives_off(
        min_roc_auc=args.min_roc_auc,
        min_pr_auc=args.min_pr_auc,
        min_f1=args.min_f1,
        max_single_row_p99_ms=args.max_single_row_p99_ms,
        max_auc_drop=args.max_auc_drop,
        max_score_psi=args.max_score_psi,
        max_flagged_rate_ratio=args.max_flagged_rate_ratio,
    )


def _add_gate_flags(parser: argparse.ArgumentParser) -> None:
    from anomaly_mlops.params import Gates

    defaults = Gates()
    group = parser.add_argument_group("release gates (a negative value switches a gate off)")
    group.add_argument(
        "--min-roc-auc", type=float, default=defaults.min_roc_auc, help="lowest ROC-AUC on the labelled holdout"
    )
    group.add_argument(
        "--min-pr-auc",
        type=float,
        default=defaults.min_pr_auc,
        help="lowest PR-AUC (average precision) on the labelled holdout",
    )
    group.add_argument(
        "--min-f1",
        type=float,
        default=defaults.min_f1,
        help="lowest F1 at the model's own threshold (off unless given)",
    )
    group.add_argument(
        "--max-single-row-p99-ms",
        type=float,
        default=defaults.max_single_row_p99_ms,
        help="highest single-row scoring p99, milliseconds",
    )
    group.add_argument(
        "--max-auc-drop",
        type=float,
        default=defaults.max_auc_drop,
        help="with labels: how much lower than the champion's ROC-AUC/PR-AUC is allowed",
    )
    group.add_argument(
        "--max-score-psi",
        type=float,
        default=defaults.max_score_psi,
        help="without labels: largest score-distribution shift (PSI) from the champion",
    )
    group.add_argument(
        "--max-flagged-rate-ratio",
        type=float,
        default=defaults.max_flagged_rate_ratio,
        help="without labels: flagged share of rows at most this multiple of the contamination",
    )


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from anomaly_mlops.params import TrainParams

    d = TrainParams()
    parser.add_argument("--n-estimators", type=int, default=d.n_estimators, help="trees in the forest")
    parser.add_argument(
        "--max-samples",
        type=_max_samples,
        default=d.max_samples,
        help="rows drawn per tree (at most the training rows), or 'auto' (256)",
    )
    parser.add_argument(
        "--contamination",
        type=float,
        default=d.contamination,
        help="expected anomalous share: the flagged-rate gate's reference, and the threshold with --threshold quantile",
    )
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (training is reproducible)")
    parser.add_argument(
        "--feature-window",
        type=_minutes,
        default=d.feature_window,
        metavar="MINUTES",
        help=f"minutes of history behind each row's features; 0: raw metrics (default: "
        f"{DEFAULT_FEATURE_WINDOW_MIN}, or 0 for self-healing-platform, whose client builds features)",
    )
    parser.add_argument(
        "--window-columns",
        type=_window_columns,
        default=d.window_columns,
        metavar="NAMES",
        help="with a feature window: the columns each metric gains, a comma list of delta, deviation "
        f"(from the window's mean), std (default: {d.window_columns})",
    )
    parser.add_argument(
        "--raw-tree-share",
        type=float,
        default=d.raw_tree_share,
        metavar="SHARE",
        help="with a feature window: share of the trees grown on the raw metrics alone, in [0, 1); the rest "
        f"see every column (default: {d.raw_tree_share})",
    )
    parser.add_argument(
        "--metric-basis",
        choices=[*METRIC_BASES, "default"],
        default="default",
        help="principal: the metrics, standardized, on their principal axes over the training rows before the "
        f"window columns are computed (a row that breaks how metrics move together stands out); raw: as they "
        f"come (default: {DEFAULT_METRIC_BASIS}; without a feature window always raw: the upstream sklearn "
        "runtime serves only raw row-wise models)",
    )
    parser.add_argument(
        "--reconstruction-variance",
        type=_variance_share,
        default=DEFAULT_RECONSTRUCTION_VARIANCE,
        metavar="SHARE",
        help="add to the forest's score the reconstruction error of each row's metrics from the principal axes "
        "that explain this share of the training rows' variance, in [0, 1), for example 0.9; 0: the forest's "
        f"score alone (default: {DEFAULT_RECONSTRUCTION_VARIANCE}; the upstream sklearn runtime serves only the "
        "forest)",
    )
    parser.add_argument(
        "--score-smoothing",
        type=_minutes,
        default=d.score_smoothing,
        metavar="MINUTES",
        help=f"average the anomaly scores over this many minutes; 0: none (default: "
        f"{DEFAULT_SCORE_SMOOTHING_MIN}, or 0 for self-healing-platform)",
    )
    parser.add_argument(
        "--threshold",
        choices=[*THRESHOLD_METHODS, "default"],
        default="default",
        help="pot: extreme-value fit of held-back training scores; quantile: flag --contamination of them; "
        f"default: {DEFAULT_THRESHOLD}",
    )
    parser.add_argument(
        "--pot-risk", type=float, default=d.pot_risk, help="pot: chance a held-back normal score exceeds the threshold"
    )
    parser.add_argument(
        "--fit-labelled-anomalies",
        action="store_true",
        help="fit the forest and set the threshold on rows labelled anomalous too (default: with labels in the "
        "training data, those rows are left out of both)",
    )
    parser.add_argument(
        "--fixed-engine",
        action="store_true",
        help="self-healing-platform schema: train on the features as computed, for an engine whose lag queries "
        "work (default: on what the engine sends, lags = value and node defaults in scoped requests)",
    )
    parser.add_argument(
        "--sample-interval",
        type=float,
        default=d.sample_interval_s,
        metavar="SECONDS",
        help="seconds between rows (default: from the timestamps, else 60)",
    )


def duration_s(text: str) -> float:
    """Seconds in '7d', '24h', '90m', '3600s' or a plain number of seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 7d, 24h, 90m or 3600s, got {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"a duration must be above 0, got {text!r}")
    return seconds


def _minutes(text: str) -> int | None:
    """Whole minutes, or 'default' for the schema's default."""
    if text == "default":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected whole minutes (0 or more) or 'default', got {text!r}")
    return int(text)


def _variance_share(text: str) -> float:
    """A share in [0, 1)."""
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 <= share < 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1), got {text!r}")
    return share


def _window_columns(text: str) -> str:
    from anomaly_mlops.params import parse_window_columns

    try:
        return ",".join(parse_window_columns(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _max_samples(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")
    return int(text)


def _train_params(args):
    from anomaly_mlops.params import TrainParams

    return TrainParams(
        n_estimators=args.n_estimators,
        max_samples=args.max_samples,
        contamination=args.contamination,
        seed=args.seed,
        feature_window=args.feature_window,
        window_columns=args.window_columns,
        raw_tree_share=args.raw_tree_share,
        score_smoothing=args.score_smoothing,
        threshold=None if args.threshold == "default" else args.threshold,
        metric_basis=None if args.metric_basis == "default" else args.metric_basis,
        reconstruction_variance=args.reconstruction_variance,
        pot_risk=args.pot_risk,
        fit_labelled_anomalies=args.fit_labelled_anomalies,
        fixed_engine=args.fixed_engine,
        sample_interval_s=args.sample_interval,
    )


def cmd_train(args) -> dict:
    from anomaly_mlops.model.schema import FeatureSchema
    from anomaly_mlops.steps.train import provenance, train

    result = train(
        args.data,
        args.out,
        _train_params(args),
        FeatureSchema.parse(args.features),
        provenance(args.git_commit, args.run_id),
    )
    return {
        "model_dir": str(result.model_dir),
        "threshold": result.threshold,
        "train_rows": result.train_rows,
        "fit_seconds": round(result.fit_seconds, 3),
    }


def cmd_validate(args) -> dict:
    import tempfile

    from anomaly_mlops.errors import GateFailedError
    from anomaly_mlops.steps.champion import resolve_champion
    from anomaly_mlops.steps.validate import LatencyPlan, describe_gate_failure, validate

    plan = LatencyPlan(single_row_repeats=args.latency_repeats)
    with tempfile.TemporaryDirectory(prefix="anomaly-champion-") as cache:
        champion = resolve_champion(args.champion, args.model_name, cache, args.root_prefix)
        result = validate(
            args.model,
            args.holdout,
            args.out,
            _gates_from(args),
            plan,
            champion,
            None if args.champion else "no champion named (--champion)",
            runtime=args.runtime or "",
        )
    summary = {
        "gate_passed": result.passed,
        "report": str(result.report_path),
        "metrics": str(result.metrics_path),
        **{k: result.metrics[k] for k in ("roc_auc", "pr_auc", "f1", "flagged_rate")},
        "rows_outside_training_range": (result.metrics["outside_training_range"] or {}).get("rows_share"),
        "champion": result.metrics["champion"].get("compared", False),
    }
    if not result.passed and args.fail_on_gate:
        print(json.dumps(summary))
        raise GateFailedError(
            "release gate failed: " + "; ".join(describe_gate_failure(g) for g in result.gates if not g["passed"])
        )
    return summary


def _seed_list(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds are comma-separated integers, e.g. 42,7,1,2; got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must differ; got {text!r}")
    return seeds


def cmd_evaluate(args) -> dict:
    from anomaly_mlops.steps.evaluate import evaluate

    result = evaluate(
        args.data_dir,
        tuple(dict.fromkeys(args.dataset or ["smd", "nab"])),
        _train_params(args),
        tune=args.tune,
        tune_on=tuple(args.tune_on or ["nab"]),
        resample_minutes=args.resample,
        tune_seeds=args.tune_seeds,
        retrain_every_s=args.retrain_every,
        train_window_s=args.train_window,
        retrain_on_drift=args.retrain_on_drift,
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return {k: v for k, v in result.items() if k not in ("series", "candidates")}


def register(sub: SubParsers) -> None:

    p = sub.add_parser("train", help="fit StandardScaler + IsolationForest and write a model directory")
    p.add_argument("--data", required=True, help="training .csv/.parquet, local or s3://")
    p.add_argument("--out", required=True, help="model directory to create (must not exist or be empty)")
    p.add_argument(
        "--features",
        "--schema",
        dest="features",
        metavar="SCHEMA",
        help="a named schema (default, self-healing-platform), comma-separated names or a schema .json",
    )
    p.add_argument(
        "--git-commit",
        help="commit the code came from (default: $ANOMALY_MLOPS_GIT_COMMIT, set in "
        "images built from a commit); recorded in metadata.json",
    )
    p.add_argument("--run-id", help="pipeline run id (default: $ANOMALY_MLOPS_RUN_ID); recorded in metadata.json")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("validate", help="accuracy, latency and release gates; metrics.json and report.html")
    p.add_argument("--model", required=True, help="the model directory train wrote")
    p.add_argument("--holdout", required=True, help="labelled holdout (is_anomaly column)")
    p.add_argument("--out", required=True, help="directory for report.html, metrics.json and the plots")
    p.add_argument("--latency-repeats", type=int, default=300, help="single-row scoring calls timed")
    p.add_argument(
        "--no-fail-on-gate",
        dest="fail_on_gate",
        action="store_false",
        help="exit 0 even when a gate fails (the result is in metrics.json)",
    )
    p.add_argument(
        "--champion",
        default="",
        help="compare with: 'latest' (newest released version in S3), 'serving:<ns>/<isvc>', an s3:// "
        "version or a model directory; empty: no comparison",
    )
    p.add_argument("--model-name", default="anomaly-detector", help="for --champion latest")
    p.add_argument("--root-prefix", default="", help="for --champion latest")
    p.add_argument(
        "--runtime",
        choices=["custom", "sklearn"],
        help="the runtime that will serve the release (deploy --runtime): a model it cannot serve is refused "
        "before anything is measured; default: not checked",
    )
    _add_gate_flags(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("evaluate", help="detection quality on labelled real metrics (SMD, NAB)")
    p.add_argument("--data-dir", default="../shared/data", help="folder holding smd/ and nab/")
    # "extend": --dataset smd --dataset nab means both (nargs="+" alone keeps the last one).
    p.add_argument(
        "--dataset", nargs="+", action="extend", choices=["smd", "nab"], help="datasets to evaluate (default: both)"
    )
    p.add_argument(
        "--tune",
        action="store_true",
        help="choose window and its columns, raw-metric trees, smoothing, threshold method and tree size by "
        "leaving series out (docs/evidence/quality.md)",
    )
    p.add_argument(
        "--tune-on",
        nargs="+",
        action="extend",
        choices=["smd", "nab"],
        help="--tune: datasets the default is chosen on (default: nab)",
    )
    p.add_argument(
        "--tune-seeds",
        type=_seed_list,
        help="--tune: average every candidate's figures over these seeds; the gates hold for each seed "
        "(default: 42,7,1,2, as the defaults were chosen; one seed, e.g. 42, runs four times faster)",
    )
    p.add_argument(
        "--resample", type=int, default=0, metavar="MINUTES", help="SMD: average rows into this many minutes"
    )
    p.add_argument(
        "--retrain-every",
        type=duration_s,
        metavar="DURATION",
        help="also backtest the system as it runs: retrain this often (e.g. 7d, 24h, 90m) on --train-window of "
        "past unlabelled rows, the latest 30%% held out for validate's flagged-rate gate, which decides whether the "
        "run's model scores the next period or the serving one goes on",
    )
    p.add_argument(
        "--retrain-on-drift",
        action="store_true",
        help="also backtest the self-healing loop: the runs the shipped new-normal alert starts for the serving "
        "model, fetching what it held (36h) and gated by validate as the drift run is; with or without --retrain-every",
    )
    p.add_argument(
        "--train-window",
        type=duration_s,
        metavar="DURATION",
        help="the recurring run's window, its data step's lookback (with --retrain-every; the pipelines fetch 14d)",
    )
    _add_train_flags(p)
    p.add_argument("--out", help="write per-series results as JSON here")
    p.set_defaults(func=cmd_evaluate)
