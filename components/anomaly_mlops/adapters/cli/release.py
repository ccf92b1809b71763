"""``anomaly-mlops publish|download|register``: immutable released versions on S3 or a mounted
volume, and their entries in the Model Registry."""

from __future__ import annotations

from pathlib import Path

from anomaly_mlops.adapters.cli.parsing import SubParsers
from anomaly_mlops.errors import ConfigError


def cmd_publish(args) -> dict:
    from anomaly_mlops.store.releases import publish, publish_to_directory

    if args.model_card and args.to_dir:
        raise ConfigError("--model-card writes beside the version in S3: not with --to-dir")
    if args.to_dir:
        result = publish_to_directory(args.model, args.to_dir, args.model_name, args.version, args.pvc_claim)
    else:
        result = publish(args.model, args.model_name, args.version, root_prefix=args.root_prefix)
    out = {
        "uri": result.uri,
        "version": result.version,
        "status": result.status,
        "key_prefix": result.prefix,
        "manifest_sha256": result.manifest_sha256,
    }
    if args.model_card:
        from anomaly_mlops.steps.model_card import publish_release_card

        validation = _read_validation(args.validation)
        out["model_card"] = publish_release_card(
            args.model, args.model_name, result.version, validation, args.approval, root_prefix=args.root_prefix
        )
    return out


def cmd_download(args) -> dict:
    from anomaly_mlops.store.releases import download_model

    return {"model_dir": str(download_model(args.uri, args.out))}


def cmd_register(args) -> dict:
    import tempfile
    from dataclasses import asdict

    from anomaly_mlops.params import read_token
    from anomaly_mlops.steps.approval import pending_approval
    from anomaly_mlops.steps.registry import Lineage, register_version
    from anomaly_mlops.store.releases import resolve_model_dir

    validation = _read_validation(args.validation)
    with tempfile.TemporaryDirectory(prefix="anomaly-register-") as cache:
        registration = register_version(
            args.registry_url,
            resolve_model_dir(args.model_dir, cache),
            args.model_name,
            args.version,
            args.uri,
            storage_key=args.storage_key,
            validation=validation,
            lineage=Lineage(args.source_kind, args.run_id, args.run_name, args.namespace, args.git_commit),
            token=read_token(args.token_file),
            model_card=args.model_card_uri,
            approval=pending_approval(args.approval_timeout_hours) if args.require_approval else None,
        )
    return asdict(registration)


def cmd_model_card(args) -> dict:
    import tempfile

    from anomaly_mlops.steps.model_card import build_card, publish_card
    from anomaly_mlops.store.releases import resolve_model_dir

    validation = _read_validation(args.validation)
    with tempfile.TemporaryDirectory(prefix="anomaly-card-") as cache:
        card = build_card(resolve_model_dir(args.model_dir, cache), args.version, validation, args.approval)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model-card.md").write_text(card.markdown)
    (out / "model-card.html").write_text(card.html)
    result = {"markdown": str(out / "model-card.md"), "html": str(out / "model-card.html")}
    if args.upload:
        result["uri"] = publish_card(card, args.model_name, args.version, root_prefix=args.root_prefix)
    return result


def _read_validation(path: str | None) -> dict | None:
    """validate's metrics.json, for --validation."""
    import json

    if not path:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--validation {path}: not a readable metrics.json ({exc})") from exc


def register(sub: SubParsers) -> None:

    p = sub.add_parser("publish", help="upload a model directory to an immutable S3 version (AWS_* env)")
    p.add_argument("--model", required=True, help="the model directory to release (checksums verified)")
    p.add_argument("--model-name", required=True, help="the released model's name: <model-name>/<version>/")
    p.add_argument("--version", help="default: v<training time>-<manifest digest>")
    p.add_argument("--root-prefix", default="", help="key prefix before <model>/<version>/")
    p.add_argument("--to-dir", help="publish into this mounted volume (a PVC) instead of S3: <dir>/<model>/<version>/")
    p.add_argument(
        "--pvc-claim",
        help="with --to-dir: the claim mounted there; the result's uri is then "
        "pvc://<claim>/<model>/<version>/ for deploy --storage-uri",
    )
    p.add_argument("--model-card", action="store_true", help="also write the version's model card beside it")
    p.add_argument("--validation", help="with --model-card: validate's metrics.json (the metrics and gates on it)")
    p.add_argument(
        "--approval", default="not required", help="with --model-card: not required, or pending (the approval gate's)"
    )
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("download", help="download a released version and verify its checksums")
    p.add_argument("--uri", required=True, help="the released version, s3://<bucket>/<prefix>/<model>/<version>/")
    p.add_argument("--out", required=True, help="directory to download into (must not exist or be empty)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("register", help="optional: a released version in the Kubeflow Model Registry (idempotent)")
    p.add_argument("--registry-url", required=True, help="the registry's REST endpoint, e.g. https://HOST:443")
    p.add_argument("--model-dir", required=True, help="the released version: local directory or s3:// prefix")
    p.add_argument("--model-name", required=True, help="the registered model (publish's --model-name)")
    p.add_argument("--version", required=True, help="the released version's name")
    p.add_argument("--uri", required=True, help="the released version's s3:// prefix (publish's uri)")
    p.add_argument("--storage-key", default="aws-connection-models", help="the data connection KServe reads it with")
    p.add_argument("--validation", help="validate's metrics.json: its metrics go on the version")
    p.add_argument("--source-kind", default="local", help="what made it: kfp, tekton or local")
    p.add_argument("--run-id", default="", help="the pipeline run's id")
    p.add_argument("--run-name", default="", help="the pipeline run's name")
    p.add_argument("--namespace", default="", help="where the run ran")
    p.add_argument("--git-commit", default="", help="the commit the code came from (default: the model's provenance)")
    p.add_argument("--token-file", help="bearer token for the registry (never logged)")
    p.add_argument("--model-card-uri", help="the version's model card (model-card --upload's uri), linked from it")
    p.add_argument(
        "--require-approval",
        action="store_true",
        help="register it awaiting approval: promote refuses it until `anomaly-mlops approve` (or the gate) approves",
    )
    p.add_argument(
        "--approval-timeout-hours",
        type=float,
        default=24.0,
        help="after this, an undecided approval counts as rejected",
    )
    p.set_defaults(func=cmd_register)

    p = sub.add_parser(
        "model-card", help="a released version's model card, Markdown and HTML (optionally beside it in S3)"
    )
    p.add_argument("--model-dir", required=True, help="the released version: local directory or s3:// prefix")
    p.add_argument("--version", required=True, help="the released version's name")
    p.add_argument("--validation", help="validate's metrics.json: the metrics and gates on the card")
    p.add_argument(
        "--approval", default="not required", help="not required, pending, approved or rejected (the approval gate's)"
    )
    p.add_argument("--out", required=True, help="folder for model-card.md and model-card.html")
    p.add_argument("--upload", action="store_true", help="also write it to <model>/.cards/<version>/ in the bucket")
    p.add_argument("--model-name", default="anomaly-detector", help="with --upload: the released model's name")
    p.add_argument("--root-prefix", default="", help="with --upload: the key prefix before <model>/")
    p.set_defaults(func=cmd_model_card)
