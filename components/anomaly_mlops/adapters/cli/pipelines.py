"""``anomaly-mlops compile|submit|schedule``: the KFP pipelines on Data Science Pipelines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anomaly_mlops.adapters.cli.parsing import SubParsers
from anomaly_mlops.errors import AnomalyMLOpsError
from anomaly_mlops.params import (
    read_token,
)


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


def register(sub: SubParsers) -> None:
    import importlib.util

    from anomaly_mlops.params import (
        DEFAULT_IMAGE,
    )

    # Shipped as package data (an editable install maps the package to the repository's pipelines/).
    # Not found where the source tree runs uninstalled (PYTHONPATH=components): then --package is required.
    spec = importlib.util.find_spec("anomaly_mlops.pipelines")  # finds, does not import (no kfp)
    shipped_pipeline = Path(spec.submodule_search_locations[0]) / "compiled" / "training.yaml" if spec else None

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
        p.add_argument("--experiment", default="anomaly-detector", help="the KFP experiment the run belongs to")
        p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="pipeline parameter")

    p = sub.add_parser("submit", help="start a pipeline run on OpenShift AI Data Science Pipelines")
    dsp_flags(p)
    p.add_argument("--run-name", default="anomaly-detector-training", help="the run's display name")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("schedule", help="create or update a recurring run (idempotent)")
    dsp_flags(p)
    p.add_argument("--name", default="anomaly-detector-retraining", help="recurring run name (the identity)")
    p.add_argument("--cron", default="0 0 3 * * *", help="6 fields, seconds first (default: 03:00 daily)")
    p.add_argument("--max-concurrency", type=int, default=1, help="runs of the schedule at once")
    p.add_argument("--disabled", action="store_true", help="create it paused")
    p.set_defaults(func=cmd_schedule)
