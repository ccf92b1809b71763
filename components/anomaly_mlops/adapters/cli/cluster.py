"""``anomaly-mlops deploy|promote|rollback|approve|reject``: the KServe InferenceService and the
approval gate."""

from __future__ import annotations

import argparse

from anomaly_mlops.adapters.cli.parsing import SubParsers
from anomaly_mlops.errors import ConfigError


def _namespace(args) -> str:
    from anomaly_mlops.steps.deploy import current_namespace

    return current_namespace(args.namespace)


def _isvc_client(args):
    from anomaly_mlops.steps.deploy import InferenceServiceClient, load_custom_objects_api

    return InferenceServiceClient(load_custom_objects_api(args.kubeconfig, args.context))


def cmd_deploy(args) -> dict:
    from dataclasses import asdict

    from anomaly_mlops.model.artifacts import check_replicas, check_runtime_serves
    from anomaly_mlops.steps.deploy import PROFILES, DeploySpec, canary_percent, deploy

    profile = PROFILES[args.profile] if args.profile else {}
    runtime = args.runtime or profile.get("runtime", "custom")
    labels = {}
    if args.from_registry:
        from anomaly_mlops.params import read_token
        from anomaly_mlops.steps.registry import resolve_registered

        if not (args.registry_url and args.registry_name):
            raise ConfigError("--from-registry needs --registry-url and --registry-name (the Model Registry's name)")
        if args.storage_path or args.storage_uri:
            raise ConfigError("--from-registry takes the storage from the registry: drop --storage-path/--storage-uri")
        found = resolve_registered(args.registry_url, args.from_registry, read_token(args.registry_token_file))
        labels = found.labels(args.registry_name)
        args.model_version = args.model_version or found.version
        if found.storage_key and found.storage_path:
            args.storage_key, args.storage_path = found.storage_key, found.storage_path
        else:
            args.storage_uri = found.uri
    if args.model_dir:
        check_runtime_serves(runtime, args.model_dir)
        check_replicas(args.max_replicas, args.model_dir, shared_history=bool(args.history_secret))
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
        canary_traffic_percent=canary_percent(args.canary_percent),
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        history_secret=args.history_secret,
        scale_target=args.scale_target,
        scale_metric=args.scale_metric,
        cpu_request=args.cpu_request,
        memory_request=args.memory_request,
        cpu_limit=args.cpu_limit,
        memory_limit=args.memory_limit,
        logger_url=args.logger_url,
        labels=labels,
    )
    spec.check()  # before the API server is contacted
    return asdict(deploy(spec, _isvc_client(args), timeout_s=args.timeout))


def cmd_promote(args) -> dict:
    from anomaly_mlops.steps import rollout

    client, namespace, registry = _isvc_client(args), _namespace(args), _registry_target(args)
    if args.when_approved:
        if registry is None:
            raise ConfigError("--when-approved reads the approval from the Model Registry: give --registry-url")
        return rollout.release_when_approved(client, args.name, namespace, registry)
    return rollout.promote(client, args.name, namespace, registry, _approval_task(args))


def cmd_rollback(args) -> dict:
    from anomaly_mlops.steps import rollout

    approval = _approval_task(args)
    return rollout.rollback(_isvc_client(args), args.name, _namespace(args), _registry_target(args), approval)


def _registry_target(args):
    if not args.registry_url:
        return None
    from anomaly_mlops.params import read_token
    from anomaly_mlops.steps.rollout import RegistryTarget

    cards = None
    if args.update_model_card:
        from anomaly_mlops.store.s3 import S3Settings

        cards = S3Settings.from_env()
    token = read_token(args.registry_token_file)
    return RegistryTarget(args.registry_url, args.registry_model_name or args.name, token, cards)


def _approval_task(args):
    """The manual approval gate's decision for this PipelineRun (Tekton), or None."""
    if not args.approval_task_of:
        return None
    from anomaly_mlops.steps.approval import approval_from_task
    from anomaly_mlops.steps.deploy import load_custom_objects_api

    api = load_custom_objects_api(args.kubeconfig, args.context)
    where = _namespace_of(args.approval_namespace)  # the PipelineRun's: by default this pod's own
    return approval_from_task(api, where, args.approval_task_of, args.approval_pipeline_task)


def _namespace_of(explicit: str | None) -> str:
    from anomaly_mlops.steps.deploy import current_namespace

    return current_namespace(explicit)


def cmd_decide(args) -> dict:
    from dataclasses import asdict

    from anomaly_mlops.params import read_token
    from anomaly_mlops.steps.approval import decide

    decided = decide(
        args.registry_url, args.model_name, args.version, approve=args.decision == "approve",
        by=args.by, message=args.message, token=read_token(args.token_file),
    )  # fmt: skip
    return {"model": args.model_name, "version": args.version, **asdict(decided)}


def cmd_trustyai_register(args) -> dict:
    import tempfile
    from dataclasses import asdict

    from anomaly_mlops.model.artifacts import load_model_dir
    from anomaly_mlops.params import read_token
    from anomaly_mlops.sources.files import load_dataset
    from anomaly_mlops.steps.trustyai import register_with_trustyai
    from anomaly_mlops.store.releases import resolve_model_dir, served_version

    with tempfile.TemporaryDirectory(prefix="anomaly-trustyai-") as cache:
        local = resolve_model_dir(args.model_dir, cache)
        model = load_model_dir(local)
        rows = load_dataset(args.data, model.schema).X
        registration = register_with_trustyai(
            model,
            rows,
            args.url,
            args.model_id,
            args.version or served_version(args.model_dir, local),
            metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
            rows=args.rows,
            batch_size=args.batch_size,
            token=read_token(args.token_file),
            ca_bundle=args.ca_bundle,
        )
    return asdict(registration)


def register(sub: SubParsers) -> None:

    def kube_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", default="anomaly-detector", help="InferenceService name (at most 36 characters)")
        p.add_argument("--namespace", help="default: the pod's namespace")
        p.add_argument("--kubeconfig", help="default: in-cluster config, else $KUBECONFIG or ~/.kube/config")
        p.add_argument("--context", help="kubeconfig context (default: the current one)")

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
        help="the model being deployed (its metadata.json): --runtime sklearn, and --max-replicas above 1, "
        "are refused for a model that needs history (feature window or score smoothing)",
    )
    p.add_argument("--serving-runtime", default=CUSTOM_RUNTIME, help="ServingRuntime name for --runtime custom")
    p.add_argument("--storage-key", help="data connection secret name, e.g. aws-connection-models")
    p.add_argument("--storage-path", help="key prefix in that bucket, e.g. anomaly-detector/v1/")
    p.add_argument(
        "--storage-uri",
        help="alternative to --storage-key/--storage-path: s3://bucket/prefix/ or pvc://<claim>/<path>/",
    )
    p.add_argument("--model-version", help="recorded in the anomaly-mlops.io/model-version annotation")
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
    p.add_argument(
        "--max-replicas",
        type=int,
        default=d.max_replicas,
        help="autoscaling ceiling; above 1 for a windowed model only with --history-secret (else each replica "
        "would keep part of an entity's rows)",
    )
    p.add_argument(
        "--history-secret",
        help="a Secret whose key 'url' is redis://... : the replicas keep entity history there "
        "(manifests/history-store), so a windowed model may scale out",
    )
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
    p.add_argument(
        "--from-registry",
        metavar="NAME[:VERSION]",
        help="deploy a version from the Model Registry (default: its newest LIVE one), labelled with its ids",
    )
    p.add_argument("--registry-url", help="the Model Registry's REST endpoint, for --from-registry")
    p.add_argument("--registry-name", help="the Model Registry's name (the label OpenShift AI reads)")
    p.add_argument("--registry-token-file", help="bearer token for the registry (never logged)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for Ready")
    p.set_defaults(func=cmd_deploy)

    def registry_flags(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group(
            "the Model Registry (optional): record the version now serving LIVE, the other ARCHIVED"
        )
        g.add_argument("--registry-url", help="the registry's REST endpoint")
        g.add_argument("--registry-model-name", help="the registered model (default: --name)")
        g.add_argument("--registry-token-file", help="bearer token for the registry (never logged)")
        g.add_argument(
            "--update-model-card",
            action="store_true",
            help="also put the approval decision on the version's model card (S3 settings from the AWS_* env)",
        )
        g = p.add_argument_group("the approval gate (Tekton): record the manual approval gate's decision")
        g.add_argument(
            "--approval-task-of", metavar="PIPELINERUN",
            help="read the ApprovalTask of this PipelineRun; promote refuses unless it is approved",
        )  # fmt: skip
        g.add_argument("--approval-pipeline-task", default="approve", help="the approval's pipeline task name")
        g.add_argument("--approval-namespace", help="the PipelineRun's namespace (default: this pod's own)")

    p = sub.add_parser("promote", help="send all traffic to the latest revision (after verify passed)")
    kube_flags(p)
    registry_flags(p)
    p.add_argument(
        "--when-approved",
        action="store_true",
        help="the recurring check: promote the version under approval once approved in the registry, roll it "
        "back once rejected or past its deadline, else change nothing",
    )
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "rollback", help="Serverless: pin the previous revision; RawDeployment: restore the previous path"
    )
    kube_flags(p)
    registry_flags(p)
    p.set_defaults(func=cmd_rollback)

    for decision, verb in (("approve", "approve"), ("reject", "reject")):
        p = sub.add_parser(decision, help=f"{verb} a registered version awaiting approval (the registry records who)")
        p.add_argument("--registry-url", required=True, help="the Model Registry's REST endpoint")
        p.add_argument("--model-name", required=True, help="the registered model")
        p.add_argument("--version", required=True, help="the version awaiting approval")
        p.add_argument("--by", required=True, help="who decides (recorded on the version)")
        p.add_argument("--message", default="", help="why (recorded on the version)")
        p.add_argument("--token-file", help="bearer token for the registry (never logged)")
        p.set_defaults(func=cmd_decide, decision=decision)

    from anomaly_mlops.params import TRUSTYAI_DRIFT_METRICS, TRUSTYAI_REFERENCE_ROWS

    p = sub.add_parser(
        "trustyai-register",
        help="optional: the version's training reference in TrustyAI, and its drift metrics scheduled",
    )
    p.add_argument("--url", required=True, help="the TrustyAI service, e.g. https://trustyai-service.<namespace>.svc")
    p.add_argument("--model-id", required=True, help="the InferenceService's name (TrustyAI's model id)")
    p.add_argument("--model-dir", required=True, help="the released version: local directory or s3:// prefix")
    p.add_argument("--data", required=True, help="the rows it was trained on (the data step's train.parquet)")
    p.add_argument("--version", help="the version's name (default: the s3:// version segment, or publish's name)")
    p.add_argument(
        "--metrics", default=TRUSTYAI_DRIFT_METRICS, help="drift metrics: meanshift, kstest, approxkstest, fouriermmd"
    )
    p.add_argument("--rows", type=int, default=TRUSTYAI_REFERENCE_ROWS, help="training rows uploaded as the reference")
    p.add_argument("--batch-size", type=int, help="served rows each drift computation looks at (default: TrustyAI's)")
    p.add_argument("--token-file", help="bearer token for the service (never logged)")
    p.add_argument("--ca-bundle", help="CA bundle for HTTPS")
    p.set_defaults(func=cmd_trustyai_register)
