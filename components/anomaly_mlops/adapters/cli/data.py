"""``anomaly-mlops data``: read or generate metrics, check them, split them into train and holdout."""

from __future__ import annotations

from anomaly_mlops.adapters.cli.parsing import SubParsers
from anomaly_mlops.params import RETRAINING_LOOKBACK


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


def register(sub: SubParsers) -> None:

    from anomaly_mlops.params import (
        DEFAULT_MAX_BYTES,
        DEFAULT_MAX_ROWS,
    )

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
    g.add_argument("--lookback", default=RETRAINING_LOOKBACK, help="window ending now (or at --end), e.g. 36h, 14d")
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
