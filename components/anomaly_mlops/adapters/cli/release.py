"""``anomaly-mlops publish|download``: immutable released versions on S3 or a mounted volume."""

from __future__ import annotations

from anomaly_mlops.adapters.cli.parsing import SubParsers


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
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("download", help="download a released version and verify its checksums")
    p.add_argument("--uri", required=True, help="the released version, s3://<bucket>/<prefix>/<model>/<version>/")
    p.add_argument("--out", required=True, help="directory to download into (must not exist or be empty)")
    p.set_defaults(func=cmd_download)
