"""``anomaly-mlops serve|verify|alert-rules``: serve a model; check a served one; the drift alerts on it."""

from __future__ import annotations

import os

from anomaly_mlops.adapters.cli.parsing import SubParsers
from anomaly_mlops.params import (
    DEFAULT_HEAD_TIMEOUT_S,
    DEFAULT_MAX_ENTITIES,
    DEFAULT_MAX_HEAD_BYTES,
    DEFAULT_MAX_LARGE_REQUESTS,
    HISTORY_URL_ENV,
    read_token,
)


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
        max_head_bytes=args.max_header_bytes,
        head_timeout_s=args.request_head_timeout,
        max_large_requests=args.max_large_requests,
        history_url=args.history_url,
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


def cmd_alert_rules(args) -> dict | None:
    import sys

    import yaml

    from anomaly_mlops.params import DriftAlertParams
    from anomaly_mlops.serving.alert_rules import prometheus_rule, rule_groups

    params = DriftAlertParams(
        window=args.window,
        hold=args.hold,
        retrain_after=args.retrain_after,
        flagged_ratio=args.flagged_ratio,
        max_psi=args.max_psi,
        min_rows=args.min_rows,
        name=args.name,
    )
    document = rule_groups(params) if args.rule_file else prometheus_rule(params, args.namespace)
    text = yaml.safe_dump(document, sort_keys=False, width=120)
    if args.out is None:
        sys.stdout.write(text)
        return None
    args.out.write_text(text)
    return {"written": str(args.out)}


def register(sub: SubParsers) -> None:

    from anomaly_mlops.params import (
        DEFAULT_MAX_INSTANCES,
        VerifyPlan,
    )

    p = sub.add_parser("serve", help="serve a model over KServe's V1 and Open Inference (V2) REST protocols")
    p.add_argument(
        "--server",
        choices=["lean", "kserve"],
        default="lean",
        help="lean: one small ASGI app on uvicorn (fastest); kserve: the KServe model server (also gRPC)",
    )
    p.add_argument("--model-name", default="anomaly-detector", help="the name clients use in /v1/models/<name>")
    p.add_argument("--model-dir", default="/mnt/models", help="local directory or s3:// version prefix")
    p.add_argument("--host", default="0.0.0.0", help="address to bind; 127.0.0.1 for this machine only")
    p.add_argument("--http-port", type=int, default=8080, help="REST port (V1 and V2)")
    p.add_argument("--grpc-port", type=int, help="also serve gRPC on this port")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="lean server: processes sharing the port (a windowed model needs --history-url for more than one)",
    )
    p.add_argument(
        "--history-url",
        default=os.environ.get(HISTORY_URL_ENV) or None,
        help=f"redis://HOST:PORT/DB (Redis/Valkey): entity history shared by every replica and worker process "
        f"(default: ${HISTORY_URL_ENV}, else kept in process: one replica, one process)",
    )
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
    p.add_argument(
        "--max-header-bytes",
        type=int,
        default=DEFAULT_MAX_HEAD_BYTES,
        help="lean server: a request line and headers larger than this are answered 431 and the connection closed",
    )
    p.add_argument(
        "--request-head-timeout",
        type=float,
        default=DEFAULT_HEAD_TIMEOUT_S,
        help="lean server: seconds a request's line and headers may take (a silent or trickling client gets 408)",
    )
    p.add_argument(
        "--max-large-requests",
        type=int,
        default=DEFAULT_MAX_LARGE_REQUESTS,
        help="lean server: large requests (over 512 rows' worth of body) read and scored at once; more get 503 "
        "with Retry-After",
    )
    p.set_defaults(func=cmd_serve)

    d = VerifyPlan()
    p = sub.add_parser("verify", help="post-deployment checks against a served model")
    p.add_argument("--url", required=True, help="base URL of the predictor, e.g. https://<isvc host>")
    p.add_argument("--model-name", default="anomaly-detector", help="the served model's name")
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

    from pathlib import Path

    from anomaly_mlops.params import DriftAlertParams

    rules = DriftAlertParams()
    p = sub.add_parser(
        "alert-rules",
        help="the drift alerts on the served models' /metrics, as a PrometheusRule (or a Prometheus rule file)",
    )
    p.add_argument("--window", default=rules.window, help="the sliding window the shares and the PSI are taken over")
    p.add_argument("--for", dest="hold", default=rules.hold, help="how long a condition holds before its alert fires")
    p.add_argument(
        "--retrain-after",
        default=rules.retrain_after,
        help="how long the flagging condition holds before the alert that starts the retraining fires (a new "
        "normal, not an incident); the drift trigger's fetch is as long (manifests/tekton/triggers/drift-template.yaml)",
    )
    p.add_argument(
        "--flagged-ratio",
        type=float,
        default=rules.flagged_ratio,
        help="alert when the flagged share is above this many times the share the model was calibrated to flag",
    )
    p.add_argument(
        "--max-psi",
        type=float,
        default=rules.max_psi,
        help="also alert when the served scores' PSI against the calibration scores is above this (default: no "
        "PSI alert; the PSI is recorded)",
    )
    p.add_argument(
        "--min-rows", type=int, default=rules.min_rows, help="rows a window needs before either alert can fire"
    )
    p.add_argument("--name", default=rules.name, help="the PrometheusRule's name (and the rule group's)")
    p.add_argument("--namespace", help="the PrometheusRule's namespace (default: none; kustomize or kubectl sets it)")
    p.add_argument(
        "--rule-file", action="store_true", help="write a plain Prometheus rule file instead of a PrometheusRule"
    )
    p.add_argument("--out", type=Path, help="write here instead of stdout")
    p.set_defaults(func=cmd_alert_rules)
