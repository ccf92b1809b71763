"""``anomaly-mlops STEP ...``: what containers, Tekton tasks and people run.

Each subcommand parses flags and calls the step function; no step logic lives here.
Errors of the steps print as one line on stderr with a step-specific exit code (EXIT_CODES).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from anomaly_mlops.adapters.cli.parsing import Help, Parser, SubParsers
from anomaly_mlops.errors import AnomalyMLOpsError
from anomaly_mlops.redact import redact

log = logging.getLogger("anomaly_mlops")

DESCRIPTION = "Train, validate, publish, deploy, serve and verify the anomaly detector: one subcommand per step."
EXIT_CODES = {
    0: "done",
    1: "an unexpected error (a bug: the traceback is printed)",
    2: "bad input or configuration (one line on stderr)",
    3: "the release gate failed",
    4: "post-deployment verification failed",
    5: "the Kubernetes API server or KServe refused or failed a deployment",
    6: "the model server could not start serving (port in use, address not available)",
    130: "interrupted",
}


def build_parser() -> argparse.ArgumentParser:
    from anomaly_mlops import __version__
    from anomaly_mlops.adapters.cli import cluster, data, local, model, pipelines, release, serving

    parser = Parser(
        prog="anomaly-mlops",
        description=DESCRIPTION,
        epilog="exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()),
        formatter_class=Help,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="how much to log on stderr"
    )
    parser.add_argument(
        "--result",
        action="append",
        default=[],
        metavar="KEY=PATH",
        help="also write field KEY of the step's JSON result to PATH (Tekton results)",
    )
    sub = SubParsers(parser.add_subparsers(dest="command", required=True, metavar="STEP", parser_class=Parser))
    for family in (data, model, release, serving, cluster, pipelines, local):
        family.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("botocore", "boto3", "s3transfer", "werkzeug", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # urllib3 warns of each retry of an unreachable server; the step's one-line error says it.
    # A handler filter: the kubernetes client resets urllib3's logger level when it is configured.
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: record.levelno >= logging.ERROR or not record.name.startswith("urllib3"))
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
