"""``anomaly-mlops STEP ...``: what containers, Tekton tasks and people run.

Each subcommand parses flags and calls the step function; no step logic lives here.
Errors of the steps print as one line on stderr with a step-specific exit code
(2 bad input or config, 3 release gate failed, 4 verification failed, 5 deployment failed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from anomaly_mlops.errors import AnomalyMLOpsError
from anomaly_mlops.params import (
    DEFAULT_FEATURE_WINDOW_MIN,
    DEFAULT_MAX_ENTITIES,
    DEFAULT_METRIC_BASIS,
    DEFAULT_SCORE_SMOOTHING_MIN,
    DEFAULT_THRESHOLD,
    METRIC_BASES,
    THRESHOLD_METHODS,
    read_token,
)
from anomaly_mlops.redact import redact

log = logging.getLogger("anomaly_mlops")


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
        f"come (default: {DEFAULT_METRIC_BASIS} with a feature window, raw without one: the upstream sklearn "
        "runtime serves only raw row-wise models)",
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


def _minutes(text: str) -> int | None:
    """Whole minutes, or 'default' for the schema's default."""
    if text == "default":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected whole minutes (0 or more) or 'default', got {text!r}")
    return int(text)


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
        pot_risk=args.pot_risk,
        fit_labelled_anomalies=args.fit_labelled_anomalies,
        fixed_engine=args.fixed_engine,
        sample_interval_s=args.sample_interval,
    )


def cmd_data(args) -> dict:
    from anomaly_mlops.model.schema import FeatureSchema
    from anomaly_mlops.steps.data import prepare_data

    live = None
    if args.source == "prometheus" or (args.source == "synthetic" and args.prometheus_url):
        from anomaly_mlops.sources.prometheus import PrometheusSource

        live = PrometheusSource(
            url=args.prometheus_url,
            queries=args.queries,
            lookback=args.lookback,
            step=args.step,
            end=args.end,
            max_gap_steps=args.max_gap_steps,
            token_file=args.token_file,
            ca_bundle=args.ca_bundle,
            entity_label=args.entity_label,
            alerts=args.alerts,
            incidents=args.incidents,
        )
    result = prepare_data(
        args.out,
        source=args.source,
        schema=FeatureSchema.parse(args.features),
        holdout_fraction=args.holdout_fraction,
        rows=args.rows,
        seed=args.seed,
        anomaly_rate=args.anomaly_rate,
        max_rows=args.max_rows,
        max_bytes=args.max_bytes,
        holdout_source=args.holdout_source,
        prometheus=live,
    )
    summary = {
        "train": str(result.train_path),
        "holdout": str(result.holdout_path),
        "train_rows": result.train_rows,
        "holdout_rows": result.holdout_rows,
        "holdout_anomalies": result.holdout_anomalies,
        "labelled": result.labelled,
    }
    if result.labels is not None:  # what each label source labelled (live data)
        summary["labels"] = [
            {k: v for k, v in s.items() if k in ("source", "intervals", "rows", "alerts_fired")}
            for s in result.labels["sources"]
        ]
    return summary


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


def cmd_publish(args) -> dict:
    from anomaly_mlops.store.releases import publish, publish_to_directory

    if args.to_dir:
        result = publish_to_directory(args.model, args.to_dir, args.model_name, args.version, args.pvc_claim)
    else:
        result = publish(args.model, args.model_name, args.version, root_prefix=args.root_prefix)
    return {
        "uri": result.uri,
        "version": result.version,
        "status": result.status,
        "key_prefix": result.prefix,
        "manifest_sha256": result.manifest_sha256,
    }


def cmd_download(args) -> dict:
    from anomaly_mlops.store.releases import download_model

    return {"model_dir": str(download_model(args.uri, args.out))}


def cmd_serve(args) -> None:
    from anomaly_mlops.serving.serve import serve

    serve(
        args.model_name,
        args.model_dir,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=args.workers,
        max_instances=args.max_instances,
        scoring=args.scoring,
        host=args.host,
        max_body_bytes=args.max_body_bytes,
        max_entities=args.max_entities,
        server=args.server,
    )


def cmd_verify(args) -> dict:
    import tempfile

    from anomaly_mlops.model.artifacts import load_model_dir
    from anomaly_mlops.sources.files import load_dataset
    from anomaly_mlops.steps.verify import VerifyPlan, raise_on_failure, verify
    from anomaly_mlops.store.releases import resolve_model_dir

    with tempfile.TemporaryDirectory(prefix="anomaly-reference-") as cache:
        reference = load_model_dir(resolve_model_dir(args.reference, cache)) if args.reference else None
    schema = reference.schema if reference else None
    rows = load_dataset(args.rows, schema).X
    plan = VerifyPlan(
        requests=args.requests,
        slo_p99_ms=args.slo_p99_ms,
        max_error_rate=args.max_error_rate,
        readiness_timeout_s=args.readiness_timeout,
    )
    result = verify(
        args.url,
        args.model_name,
        rows,
        reference,
        token=read_token(args.token_file),
        ca_bundle=args.ca_bundle,
        plan=plan,
        out_dir=args.out,
    )
    raise_on_failure(result)
    return {
        "passed": result.passed,
        "latency_ms": result.latency_ms,
        "report": str(result.report_path) if result.report_path else None,
    }


def _namespace(args) -> str:
    from anomaly_mlops.steps.deploy import current_namespace

    return current_namespace(args.namespace)


def _isvc_client(args):
    from anomaly_mlops.steps.deploy import InferenceServiceClient, load_custom_objects_api

    return InferenceServiceClient(load_custom_objects_api(args.kubeconfig, args.context))


def cmd_deploy(args) -> dict:
    from dataclasses import asdict

    from anomaly_mlops.model.artifacts import check_runtime_serves
    from anomaly_mlops.steps.deploy import PROFILES, DeploySpec, deploy

    profile = PROFILES[args.profile] if args.profile else {}
    runtime = args.runtime or profile.get("runtime", "custom")
    if args.model_dir:
        check_runtime_serves(runtime, args.model_dir)
    spec = DeploySpec(
        name=args.name or profile.get("name", "anomaly-detector"),
        namespace=args.namespace or profile.get("namespace") or _namespace(args),
        runtime=runtime,
        serving_runtime=args.serving_runtime,
        storage_key=args.storage_key,
        storage_path=args.storage_path,
        storage_uri=args.storage_uri,
        model_version=args.model_version,
        deployment_mode=args.mode or profile.get("deployment_mode", "RawDeployment"),
        take_over=args.take_over,
        canary_traffic_percent=None if args.canary_percent < 0 else args.canary_percent,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        scale_target=args.scale_target,
        scale_metric=args.scale_metric,
        cpu_request=args.cpu_request,
        memory_request=args.memory_request,
        cpu_limit=args.cpu_limit,
        memory_limit=args.memory_limit,
        logger_url=args.logger_url,
    )
    return asdict(deploy(spec, _isvc_client(args), timeout_s=args.timeout))


def cmd_promote(args) -> dict:
    _isvc_client(args).promote(args.name, _namespace(args))
    return {"promoted": args.name}


def cmd_rollback(args) -> dict:
    return {"rolled_back": args.name, "action": _isvc_client(args).rollback(args.name, _namespace(args))}


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
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return {k: v for k, v in result.items() if k not in ("series", "candidates")}


def _pipeline_options(args):
    from anomaly_mlops.pipelines.definitions import PipelineOptions

    selector = None
    if args.gpu_node_selector:
        key, _, value = args.gpu_node_selector.partition("=")
        selector = (key, value)
    return PipelineOptions(
        image=args.image,
        validate_image=args.validate_image or None,
        gpu=not args.no_gpu,
        gpu_node_selector=selector,
        gpu_toleration_key=args.gpu_toleration_key or None,
        data_connection=args.data_connection,
        backend=args.backend,
        final_status=args.final_status,
    )


def cmd_compile(args) -> dict:
    from anomaly_mlops.pipelines.compile import compile_all, stale_files, write_pac_copies

    options = _pipeline_options(args)
    if args.check:
        problems = stale_files(options)
        if problems:
            raise AnomalyMLOpsError("compiled files are stale; run 'anomaly-mlops compile':\n" + "\n".join(problems))
        return {"stale": []}
    return {"written": [str(p) for p in [*compile_all(options), *write_pac_copies()]]}


def _dsp_client(args):
    from anomaly_mlops.adapters.submit import make_client

    return make_client(args.host, read_token(args.token_file), args.namespace, args.ca_bundle)


def _dsp_call(args, call):
    """kfp.Client prints links on stdout; keep stdout for our JSON result."""
    import contextlib

    from anomaly_mlops.adapters.submit import api_error

    try:
        with contextlib.redirect_stdout(sys.stderr):
            return call(_dsp_client(args))
    except AnomalyMLOpsError:
        raise
    except Exception as exc:
        raise api_error(exc, args.host) from exc


def cmd_submit(args) -> dict:
    from anomaly_mlops.adapters.submit import check_arguments, parse_params, submit_run

    params = parse_params(args.param)
    check_arguments(args.package, params)  # before any connection
    run_id = _dsp_call(
        args, lambda client: submit_run(client, args.package, params, args.run_name, args.experiment, args.namespace)
    )
    return {"run_id": run_id}


def cmd_schedule(args) -> dict:
    from dataclasses import asdict

    from anomaly_mlops.adapters.submit import check_arguments, check_cron, parse_params, schedule

    params = parse_params(args.param)
    check_cron(args.cron)  # cheap checks first: nothing is contacted when these fail
    check_arguments(args.package, params)
    return asdict(
        _dsp_call(
            args,
            lambda client: schedule(
                client,
                args.package,
                args.name,
                args.cron,
                params,
                args.experiment,
                args.namespace,
                args.max_concurrency,
                not args.disabled,
            ),
        )
    )


def cmd_run(args) -> dict:
    from anomaly_mlops.adapters.local_run import LocalRunConfig, run_local

    if not args.local:
        raise AnomalyMLOpsError("only --local runs are done by this command; on a cluster submit the KFP pipeline")
    config = LocalRunConfig(workdir=Path(args.workdir), rows=args.rows, seed=args.seed, gates=_gates_from(args))
    return run_local(config)


class _Help(argparse.HelpFormatter):
    """Every flag's default in --help, with or without a help text."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.default not in (None, argparse.SUPPRESS, False, [], "")
            and "%(default)" not in text
            and action.option_strings
            and action.nargs != 0
        ):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    import importlib.util

    from anomaly_mlops.params import (
        DEFAULT_IMAGE,
        DEFAULT_MAX_BYTES,
        DEFAULT_MAX_INSTANCES,
        DEFAULT_MAX_ROWS,
        VerifyPlan,
    )

    # Shipped as package data (an editable install maps the package to the repository's pipelines/).
    # Not found where the source tree runs uninstalled (PYTHONPATH=components): then --package is required.
    spec = importlib.util.find_spec("anomaly_mlops.pipelines")  # finds, does not import (no kfp)
    shipped_pipeline = Path(spec.submodule_search_locations[0]) / "compiled" / "training.yaml" if spec else None

    from anomaly_mlops import __version__

    parser = argparse.ArgumentParser(prog="anomaly-mlops", description=__doc__.split("\n")[0], formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--result",
        action="append",
        default=[],
        metavar="KEY=PATH",
        help="also write field KEY of the step's JSON result to PATH (Tekton results)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="STEP")

    class _Sub:  # every step's parser shows its defaults
        @staticmethod
        def add_parser(name, **kwargs):
            return subparsers.add_parser(name, formatter_class=_Help, **kwargs)

    sub = _Sub()

    p = sub.add_parser("data", help="read or generate metrics, check the schema, split into train/holdout Parquet")
    p.add_argument(
        "--source", default="synthetic", help="'synthetic', a .csv/.csv.gz/.parquet path, or s3://bucket/key"
    )
    p.add_argument("--out", required=True, help="output directory (train.parquet, holdout.parquet, schema.json)")
    p.add_argument(
        "--features",
        "--schema",
        dest="features",
        metavar="SCHEMA",
        help="a named schema (default, self-healing-platform), comma-separated feature names, "
        "or a schema .json (default: node metrics)",
    )
    p.add_argument("--holdout-fraction", type=float, default=0.3, help="latest share of the rows held out")
    p.add_argument("--rows", type=int, default=20_160, help="synthetic rows (one a minute)")
    p.add_argument("--seed", type=int, default=42, help="synthetic data seed")
    p.add_argument("--anomaly-rate", type=float, default=0.03, help="share of synthetic rows made anomalous")
    p.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="refuse larger data sets")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="refuse larger data files")
    p.add_argument("--holdout-source", help="labelled holdout file; then all of --source trains")
    g = p.add_argument_group("--source prometheus (the default source when --prometheus-url is given)")
    g.add_argument("--prometheus-url", help="e.g. https://thanos-querier.openshift-monitoring.svc:9091")
    g.add_argument(
        "--queries",
        help="YAML/JSON file: feature name -> PromQL (default: the schema's built-in "
        "queries; self-healing-platform: the engine's own PromQL, one entity per pod)",
    )
    g.add_argument("--lookback", default="7d", help="window ending now (or at --end), e.g. 6h, 7d")
    g.add_argument("--step", default="60s", help="resolution, e.g. 60s")
    g.add_argument("--end", type=float, help="window end as a Unix time (default: now)")
    g.add_argument("--max-gap-steps", type=int, default=0, help="fill gaps up to this many steps, refuse longer")
    g.add_argument(
        "--token-file",
        help="bearer token for Prometheus/Thanos (never logged); in a pod: "
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
    )
    g.add_argument(
        "--ca-bundle",
        help="CA bundle for HTTPS (in-cluster Thanos Querier: the service CA, "
        "/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt)",
    )
    g.add_argument(
        "--entity-label",
        help="label that tells the series of one query apart (default: pod, instance or node, whichever does)",
    )
    g.add_argument("--alerts", help="alertname regex: rows inside their firing intervals (ALERTS) are anomalous")
    g.add_argument("--incidents", help="CSV/Parquet of incident windows (start, end[, entity]), local or s3://")
    p.set_defaults(func=cmd_data)

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
    p.add_argument("--model", required=True)
    p.add_argument("--holdout", required=True, help="labelled holdout (is_anomaly column)")
    p.add_argument("--out", required=True)
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

    p = sub.add_parser("publish", help="upload a model directory to an immutable S3 version (AWS_* env)")
    p.add_argument("--model", required=True)
    p.add_argument("--model-name", required=True)
    p.add_argument("--version", help="default: v<training time>-<manifest digest>")
    p.add_argument("--root-prefix", default="", help="key prefix before <model>/<version>/")
    p.add_argument("--to-dir", help="publish into this mounted volume (a PVC) instead of S3: <dir>/<model>/<version>/")
    p.add_argument(
        "--pvc-claim",
        help="with --to-dir: the claim mounted there; the result's uri is then "
        "pvc://<claim>/<model>/<version>/ for deploy --storage-uri",
    )
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("download", help="download a released version and verify its checksums")
    p.add_argument("--uri", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("serve", help="serve a model over KServe's V1 and Open Inference (V2) REST protocols")
    p.add_argument(
        "--server",
        choices=["lean", "kserve"],
        default="lean",
        help="lean: one small ASGI app on uvicorn (fastest); kserve: the KServe model server (also gRPC)",
    )
    p.add_argument("--model-name", default="anomaly-detector")
    p.add_argument("--model-dir", default="/mnt/models", help="local directory or s3:// version prefix")
    p.add_argument("--host", default="0.0.0.0", help="address to bind; 127.0.0.1 for this machine only")
    p.add_argument("--http-port", type=int, default=8080, help="REST port (V1 and V2)")
    p.add_argument("--grpc-port", type=int, help="also serve gRPC on this port")
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--max-instances", type=int, default=DEFAULT_MAX_INSTANCES, help="rows per request")
    p.add_argument(
        "--max-body-bytes",
        type=int,
        help="refuse larger request bodies with 413 before parsing (default: room for --max-instances rows)",
    )
    p.add_argument(
        "--scoring",
        choices=["fast", "sklearn"],
        default="fast",
        help="fast: flattened forest for small batches (exact); sklearn: always scikit-learn",
    )
    p.add_argument(
        "--max-entities",
        type=int,
        default=DEFAULT_MAX_ENTITIES,
        help="windowed models: entities whose recent rows are kept (least recently seen dropped first)",
    )
    p.set_defaults(func=cmd_serve)

    d = VerifyPlan()
    p = sub.add_parser("verify", help="post-deployment checks against a served model")
    p.add_argument("--url", required=True, help="base URL of the predictor, e.g. https://<isvc host>")
    p.add_argument("--model-name", default="anomaly-detector")
    p.add_argument("--rows", required=True, help=".csv/.parquet with feature columns to send")
    p.add_argument("--reference", help="model directory or s3:// version for parity with offline scores")
    p.add_argument("--token-file", help="file holding a bearer token (never logged)")
    p.add_argument("--ca-bundle", help="CA bundle for TLS verification")
    p.add_argument("--requests", type=int, default=d.requests, help="single-row requests for the latency SLO")
    p.add_argument("--slo-p99-ms", type=float, default=d.slo_p99_ms, help="highest served p99, milliseconds")
    p.add_argument("--max-error-rate", type=float, default=d.max_error_rate, help="highest share of failed requests")
    p.add_argument(
        "--readiness-timeout",
        type=float,
        default=d.readiness_timeout_s,
        help="seconds to wait for the model to be ready",
    )
    p.add_argument("--out", help="directory for verify.json")
    p.set_defaults(func=cmd_verify)

    def kube_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default="anomaly-detector", help="InferenceService name (at most 36 characters)")
        p.add_argument("--namespace", help="default: the pod's namespace")
        p.add_argument("--kubeconfig", help="default: in-cluster config, else $KUBECONFIG or ~/.kube/config")
        p.add_argument("--context")

    from anomaly_mlops.steps.deploy import CUSTOM_RUNTIME, PROFILES, DeploySpec

    d = DeploySpec(name="x", namespace="x")
    p = sub.add_parser("deploy", help="create or update the KServe InferenceService and wait until Ready")
    kube_flags(p)
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help="where a known platform serves the model: self-healing-platform = RawDeployment "
        "'anomaly-detector' in 'self-healing-platform' (flags given explicitly win)",
    )
    p.add_argument(
        "--take-over",
        action="store_true",
        help="update an InferenceService that ArgoCD/Helm manages, removing its tracking marks "
        "(take it out of that tool first, or it reverts us)",
    )
    p.add_argument("--runtime", choices=["custom", "sklearn"], help="default: custom")
    p.add_argument(
        "--model-dir",
        help="the model being deployed (its metadata.json): --runtime sklearn is refused for a model "
        "that needs history (feature window or score smoothing)",
    )
    p.add_argument("--serving-runtime", default=CUSTOM_RUNTIME, help="ServingRuntime name for --runtime custom")
    p.add_argument("--storage-key", help="data connection secret name, e.g. aws-connection-models")
    p.add_argument("--storage-path", help="key prefix in that bucket, e.g. anomaly-detector/v1/")
    p.add_argument(
        "--storage-uri",
        help="alternative to --storage-key/--storage-path: s3://bucket/prefix/ or pvc://<claim>/<path>/",
    )
    p.add_argument("--model-version")
    p.add_argument(
        "--mode",
        choices=["RawDeployment", "Standard", "Serverless", "Knative"],
        help="default: RawDeployment (or the profile's); Standard and Knative are KServe 0.17+'s names for "
        "RawDeployment and Serverless",
    )
    p.add_argument(
        "--canary-percent",
        type=int,
        default=d.canary_traffic_percent,
        help="traffic share of a new model on a live Serverless service; negative: all at once",
    )
    p.add_argument("--min-replicas", type=int, default=d.min_replicas, help="0 allows scale to zero (Serverless)")
    p.add_argument("--max-replicas", type=int, default=d.max_replicas, help="autoscaling ceiling")
    p.add_argument("--scale-target", type=int, help="autoscaling target of --scale-metric")
    p.add_argument(
        "--scale-metric",
        choices=["concurrency", "rps", "cpu", "memory"],
        help="Serverless: concurrency or rps; RawDeployment: cpu or memory (KServe's rule)",
    )
    p.add_argument("--cpu-request", default=d.cpu_request, help="predictor CPU request")
    p.add_argument("--memory-request", default=d.memory_request, help="predictor memory request")
    p.add_argument("--cpu-limit", default=d.cpu_limit, help="predictor CPU limit")
    p.add_argument("--memory-limit", default=d.memory_limit, help="predictor memory limit")
    p.add_argument("--logger-url", help="send request/response events to this URL (KServe logger)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for Ready")
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser("promote", help="send all traffic to the latest revision (after verify passed)")
    kube_flags(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "rollback", help="Serverless: pin the previous revision; RawDeployment: restore the previous path"
    )
    kube_flags(p)
    p.set_defaults(func=cmd_rollback)

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
        "leaving series out (README)",
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
    _add_train_flags(p)
    p.add_argument("--out", help="write per-series results as JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "compile",
        help="compile the KFP pipelines and component specs, and copy the Tekton pipeline "
        "into .tekton/ for Pipelines-as-Code (committed YAML)",
    )
    p.add_argument("--image", default=DEFAULT_IMAGE, help="image every component runs")
    p.add_argument(
        "--validate-image",
        default="",
        help="image for validate alone: the Containerfile's validate-gpu target (with torch) measures the GPU "
        "scoring path; empty: --image",
    )
    p.add_argument("--no-gpu", action="store_true", help="validate without GPU request, node selector, toleration")
    p.add_argument("--gpu-node-selector", default="nvidia.com/gpu.present=true", help="KEY=VALUE, or '' for none")
    p.add_argument(
        "--gpu-toleration-key",
        default="nvidia.com/gpu",
        help="taint key to tolerate, or '' for none (KFP 2.0.5 backends, DSP 2.0-2.6, know no tolerations)",
    )
    p.add_argument(
        "--data-connection",
        default="aws-connection-models",
        help="the data connection secret the S3 steps mount (a constant in the IR: the oldest "
        "supported backends cannot take a secret name from a run parameter)",
    )
    p.add_argument(
        "--backend",
        default="2.0.5",
        choices=["2.0.5", "2.2.0", "2.4.0", "2.5.0", "2.14"],
        help="the oldest KFP backend the files must run on (2.0.5: DSP 2.0-2.6 ... 2.5.0: OpenShift AI 2.x; "
        "2.14: OpenShift AI 3.x); a feature it refuses is a compile error",
    )
    p.add_argument(
        "--final-status",
        action="store_true",
        help="training.yaml's exit handler reads the run's final status (needs --backend 2.14; "
        "training-final-status.yaml always does)",
    )
    p.add_argument("--check", action="store_true", help="fail if the committed files differ from a fresh compile")
    p.set_defaults(func=cmd_compile)

    def dsp_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", required=True, help="Data Science Pipelines API route, https://ds-pipeline-...")
        p.add_argument("--token-file", help="file holding a bearer token (oc whoami -t); never logged")
        p.add_argument("--namespace", help="the data science project")
        p.add_argument("--ca-bundle", help="CA bundle for the route's certificate")
        p.add_argument(
            "--package",
            default=str(shipped_pipeline) if shipped_pipeline else None,
            required=shipped_pipeline is None,
            help="compiled pipeline YAML; the default is the training pipeline shipped in the package",
        )
        p.add_argument("--experiment", default="anomaly-detector")
        p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")

    p = sub.add_parser("submit", help="start a pipeline run on OpenShift AI Data Science Pipelines")
    dsp_flags(p)
    p.add_argument("--run-name", default="anomaly-detector-training")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("schedule", help="create or update a recurring run (idempotent)")
    dsp_flags(p)
    p.add_argument("--name", default="anomaly-detector-retraining", help="recurring run name (the identity)")
    p.add_argument("--cron", default="0 0 3 * * *", help="6 fields, seconds first (default: 03:00 daily)")
    p.add_argument("--max-concurrency", type=int, default=1)
    p.add_argument("--disabled", action="store_true", help="create it paused")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("run", help="the whole retraining flow")
    p.add_argument("--local", action="store_true", help="on embedded S3 and a local model server")
    p.add_argument("--workdir", default="runs/local")
    p.add_argument("--rows", type=int, default=20_160)
    p.add_argument("--seed", type=int, default=42)
    _add_gate_flags(p)
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        _check_result_paths(args.result)
        result = args.func(args)
    except AnomalyMLOpsError as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a path the user named: unreadable, read-only, a file where a folder goes
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if result is not None:
        print(json.dumps(result, indent=2))
        try:
            _write_results(result, args.result)
        except AnomalyMLOpsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    return 0


def _check_result_paths(requests: list[str]) -> None:
    """Before the step runs: each --result is KEY=PATH with an existing, writable folder."""
    import os

    for request in requests:
        key, sep, path = request.partition("=")
        if not (sep and key and path):
            raise AnomalyMLOpsError(f"--result {request!r}: expected KEY=PATH")
        folder = Path(path).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise AnomalyMLOpsError(f"--result {request!r}: the folder {folder} does not exist or is not writable")


def _write_results(result: dict, requests: list[str]) -> None:
    for request in requests:
        key, sep, path = request.partition("=")
        if not sep or key not in result:
            raise AnomalyMLOpsError(f"--result {request!r}: the result has no field {key!r} (fields: {sorted(result)})")
        value = result[key]
        text = value if isinstance(value, str) else json.dumps(value)
        try:
            Path(path).write_text(text)
        except OSError as exc:
            raise AnomalyMLOpsError(f"--result {request!r}: cannot write {path}: {exc.strerror}") from exc


if __name__ == "__main__":
    sys.exit(main())
