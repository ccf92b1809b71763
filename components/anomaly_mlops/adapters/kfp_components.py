"""KFP v2 component adapters: lightweight components on our image
(``install_kfp_package=False``: kfp and this package are already in it), each body a
few lines that call the step function. KFP copies only the function source into the
container, so every body imports what it uses.

Components are built by ``make_components(image, validate_image)`` so the images are compile options.
No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from anomaly_mlops.params import DEFAULT_IMAGE


def prepare_data(
    train_data: Output[Dataset],
    holdout_data: Output[Dataset],
    source: str = "synthetic",
    features: str = "",
    rows: int = 20160,
    seed: int = 42,
    anomaly_rate: float = 0.03,
    holdout_fraction: float = 0.3,
    prometheus_url: str = "",
    queries_file: str = "",
    lookback: str = "14d",
    step: str = "60s",
    max_gap_steps: int = 5,
    alerts: str = "",
    incidents: str = "",
    token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token",
    ca_bundle: str = "/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt",
):
    """Read or generate metrics, check the schema, split in time into train and holdout.

    Args:
        train_data: the training part (Parquet).
        holdout_data: the latest part, held out (Parquet).
        source: 'synthetic', a CSV/Parquet path or s3:// URI; with prometheus_url set, live metrics.
        features: the feature schema: 'default', 'self-healing-platform' or comma-separated names.
        rows: synthetic rows (one a minute).
        seed: synthetic data seed.
        anomaly_rate: share of synthetic rows made anomalous.
        holdout_fraction: latest share of the rows held out.
        prometheus_url: Prometheus or Thanos Querier (https://thanos-querier.openshift-monitoring.svc:9091).
        queries_file: feature -> PromQL file in the image; empty: the schema's built-in queries.
        lookback: the window ending now, e.g. 14d (fetched in pieces when long).
        step: the resolution, e.g. 60s.
        max_gap_steps: longest gap (in steps) filled forward; longer gaps fail the step.
        alerts: alertname regex; rows inside their firing intervals (ALERTS) are labelled anomalous.
        incidents: CSV/Parquet of incident windows (start, end, entity), s3:// or a path.
        token_file: bearer token for Prometheus (the pod's service account token).
        ca_bundle: CA bundle for HTTPS (the service CA); ignored when the file is absent.
    """
    import os
    import shutil
    import tempfile

    from anomaly_mlops.model.schema import FeatureSchema
    from anomaly_mlops.sources.prometheus import PrometheusSource
    from anomaly_mlops.steps.data import prepare_data as prepare

    live = (
        PrometheusSource(
            url=prometheus_url,
            queries=queries_file or None,
            lookback=lookback,
            step=step,
            max_gap_steps=max_gap_steps,
            token_file=token_file if os.path.isfile(token_file) else None,
            ca_bundle=ca_bundle if os.path.isfile(ca_bundle) else None,
            alerts=alerts or None,
            incidents=incidents or None,
        )
        if prometheus_url
        else None
    )
    out = tempfile.mkdtemp()
    result = prepare(
        out,
        source=source,
        schema=FeatureSchema.parse(features),
        holdout_fraction=holdout_fraction,
        rows=rows,
        seed=seed,
        anomaly_rate=anomaly_rate,
        prometheus=live,
    )
    shutil.copyfile(result.train_path, train_data.path)
    shutil.copyfile(result.holdout_path, holdout_data.path)
    train_data.metadata.update({"rows": result.train_rows, "features": list(result.schema.features)})
    holdout_data.metadata.update(
        {"rows": result.holdout_rows, "anomalies": result.holdout_anomalies, "labelled": result.labelled}
    )
    if result.labels is not None:
        holdout_data.metadata["labels"] = result.labels


def train_model(
    train_data: Input[Dataset],
    model: Output[Model],
    features: str = "",
    n_estimators: int = 100,
    max_samples: str = "4096",
    contamination: float = 0.02,
    seed: int = 42,
    feature_window: int = -1,
    window_columns: str = "deviation,std",
    raw_tree_share: float = 0.5,
    metric_basis: str = "",
    reconstruction_variance: float = 0.0,
    score_smoothing: int = -1,
    threshold: str = "",
    fit_labelled_anomalies: bool = False,
    fixed_engine: bool = False,
    run_id: str = "",
):
    """Fit StandardScaler + IsolationForest; the model artifact is the model directory.

    Args:
        train_data: training rows (Parquet) from prepare_data.
        model: the model directory (model.skops, model.joblib, metadata.json, MANIFEST.sha256).
        features: the feature schema: 'default', 'self-healing-platform' or comma-separated names.
        n_estimators: trees in the forest.
        max_samples: rows drawn per tree (at most the training rows), or 'auto' (256).
        contamination: expected anomalous share (the flagged-rate gate; the threshold with threshold='quantile').
        seed: random seed; training is reproducible.
        feature_window: minutes of history behind each row's features; 0: raw metrics; -1: the schema's default.
        window_columns: with a feature window, the columns each metric gains: comma list of delta, deviation, std.
        raw_tree_share: with a feature window, share of the trees grown on the raw metrics alone, in [0, 1).
        metric_basis: 'principal' (metrics on their principal axes over the training rows), 'raw', or '' (the
            default: raw).
        reconstruction_variance: add to the forest's score the reconstruction error from the principal axes that
            explain this share of the training rows' variance, in [0, 1), for example 0.9; 0 (the default): the
            forest's score alone.
        score_smoothing: minutes the anomaly scores are averaged over; 0: none; -1: the schema's default.
        threshold: 'quantile' (of held-back training scores), 'pot' (extreme-value fit of them), or '' (quantile).
        fit_labelled_anomalies: fit and calibrate on rows labelled anomalous too (default: they are left out).
        fixed_engine: self-healing-platform schema: train on the features as computed (default: on what the
            platform's engine sends, its lag fallback and node defaults included).
        run_id: the pipeline run's id, recorded in metadata.json with the image's git commit.
    """
    from anomaly_mlops.model.schema import FeatureSchema
    from anomaly_mlops.steps.train import TrainParams, provenance, train

    params = TrainParams.from_pipeline(
        n_estimators=n_estimators,
        max_samples=max_samples,
        contamination=contamination,
        seed=seed,
        feature_window=feature_window,
        window_columns=window_columns,
        raw_tree_share=raw_tree_share,
        metric_basis=metric_basis,
        reconstruction_variance=reconstruction_variance,
        score_smoothing=score_smoothing,
        threshold=threshold,
        fit_labelled_anomalies=fit_labelled_anomalies,
        fixed_engine=fixed_engine,
    )
    result = train(train_data.path, model.path, params, FeatureSchema.parse(features), provenance(run_id=run_id))
    model.metadata.update(
        {
            "framework": "scikit-learn",
            "threshold": result.threshold,
            "manifest_sha256": result.manifest_sha256,
            "train_rows": result.train_rows,
        }
    )


def validate_model(
    model: Input[Model],
    holdout_data: Input[Dataset],
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
    min_roc_auc: float = 0.80,
    min_pr_auc: float = 0.30,
    max_single_row_p99_ms: float = 100.0,
    latency_repeats: int = 300,
    champion: str = "",
    model_name: str = "anomaly-detector",
    root_prefix: str = "",
    max_auc_drop: float = 0.02,
    max_score_psi: float = 4.0,
    max_flagged_rate_ratio: float = 3.0,
    runtime: str = "",
) -> bool:
    """Accuracy, latency, gates (a negative threshold switches a gate off), HTML report.
    Returns whether every gate passed (a single ``Output``: kfp.local resolves conditions
    on task outputs by that name only).

    Args:
        model: the model directory to validate.
        holdout_data: the holdout (labelled or not).
        metrics: scalar metrics (challenger and champion side by side).
        classification: ROC curve and confusion matrix (with labels).
        report: the HTML report.
        min_roc_auc: lowest ROC-AUC on the labelled holdout.
        min_pr_auc: lowest PR-AUC on the labelled holdout.
        max_single_row_p99_ms: highest single-row scoring p99 in milliseconds.
        latency_repeats: single-row calls timed.
        champion: compare with 'latest' (newest released in S3), 'serving:<ns>/<isvc>', or an s3:// version.
        model_name: the model whose released versions 'latest' looks at.
        root_prefix: key prefix before <model>/ in the bucket.
        max_auc_drop: with labels, how much lower than the champion's ROC-AUC/PR-AUC is allowed.
        max_score_psi: without labels, largest score shift (PSI) from the champion.
        max_flagged_rate_ratio: without labels, flagged share at most this multiple of the contamination.
        runtime: the runtime that will serve the release (custom or sklearn); a model it cannot serve fails here, before publishing. Empty: not checked.
    """
    import shutil
    import tempfile

    from anomaly_mlops.steps.champion import resolve_champion
    from anomaly_mlops.steps.validate import Gates, LatencyPlan, validate

    out = tempfile.mkdtemp()
    gates = Gates.with_negatives_off(
        min_roc_auc=min_roc_auc,
        min_pr_auc=min_pr_auc,
        max_single_row_p99_ms=max_single_row_p99_ms,
        max_auc_drop=max_auc_drop,
        max_score_psi=max_score_psi,
        max_flagged_rate_ratio=max_flagged_rate_ratio,
    )
    reference = resolve_champion(champion, model_name, tempfile.mkdtemp(), root_prefix)
    result = validate(
        model.path,
        holdout_data.path,
        out,
        gates,
        LatencyPlan(single_row_repeats=latency_repeats),
        reference,
        None if champion else "no champion named",
        runtime=runtime,
    )
    m = result.metrics
    for name in ("roc_auc", "pr_auc", "precision", "recall", "f1", "threshold", "flagged_rate"):
        if m.get(name) is not None:
            metrics.log_metric(name, m[name])
    for name, value in (m.get("champion") or {}).items():
        if name in ("roc_auc", "pr_auc", "f1", "flagged_rate", "score_psi"):
            metrics.log_metric(f"champion_{name}", value)
    for q in ("p50", "p95", "p99"):
        metrics.log_metric(f"single_row_latency_{q}_ms", m["latency"]["single_row_ms"][q])
    if m.get("outside_training_range"):
        metrics.log_metric("rows_outside_training_range", m["outside_training_range"]["rows_share"])
    metrics.log_metric("gate_passed", float(result.passed))
    if m.get("roc_auc") is not None:
        classification.log_roc_curve(
            result.roc_points["fpr"], result.roc_points["tpr"], result.roc_points["thresholds"]
        )
        classification.log_confusion_matrix(["normal", "anomaly"], result.confusion)
    shutil.copyfile(result.report_path, report.path)
    report.metadata.update({"gates": result.gates, "device": m["device"]["gpu_note"]})
    return result.passed


def publish_model(
    model: Input[Model],
    validation: Input[Metrics],
    validation_report: Input[HTML],
    model_name: str = "anomaly-detector",
    version: str = "",
    root_prefix: str = "",
    require_approval: bool = False,
) -> NamedTuple(
    "PublishOutputs", [("uri", str), ("version", str), ("storage_path", str), ("status", str), ("model_card", str)]
):
    """Upload to the immutable S3 version prefix, and the version's model card beside it;
    credentials from the data connection env.

    Args:
        model: the validated model directory.
        validation: validate's metrics (on the model card).
        validation_report: validate's report (its gates, on the model card).
        model_name: the first key segment: <model>/<version>/.
        version: the release name; empty: v<training time>-<manifest digest>.
        root_prefix: key prefix before <model>/ in the bucket.
        require_approval: the card says the version awaits approval.
    """
    from collections import namedtuple

    from anomaly_mlops.steps.model_card import publish_release_card, validation_from_logged
    from anomaly_mlops.store.releases import publish

    result = publish(model.path, model_name, version or None, root_prefix=root_prefix)
    measured = validation_from_logged(validation.metadata, (validation_report.metadata or {}).get("gates"))
    approval = "pending" if require_approval else "not required"
    card = publish_release_card(model.path, model_name, result.version, measured, approval, root_prefix=root_prefix)
    return namedtuple("PublishOutputs", ["uri", "version", "storage_path", "status", "model_card"])(
        result.uri, result.version, result.prefix, result.status, card
    )


def fetch_model(
    model: Output[Model],
    model_name: str = "anomaly-detector",
    version: str = "",
    root_prefix: str = "",
) -> NamedTuple("FetchOutputs", [("uri", str), ("storage_path", str)]):
    """Download a released version from the data connection's bucket, checksums verified.

    Args:
        model: the downloaded model directory.
        model_name: the released model's name.
        version: the released version to fetch.
        root_prefix: key prefix before <model>/ in the bucket.
    """
    from collections import namedtuple

    from anomaly_mlops.store.releases import download_model, version_prefix
    from anomaly_mlops.store.s3 import S3Settings

    settings = S3Settings.from_env()
    prefix = version_prefix(model_name, version, root_prefix)
    uri = f"s3://{settings.bucket}/{prefix}"
    download_model(uri, model.path, settings)
    model.metadata.update({"source_uri": uri, "version": version})
    return namedtuple("FetchOutputs", ["uri", "storage_path"])(uri, prefix)


def deploy_model(
    model: Input[Model],
    storage_path: str,
    model_version: str,
    isvc_name: str = "anomaly-detector",
    namespace: str = "",
    storage_key: str = "aws-connection-models",
    runtime: str = "custom",
    deployment_mode: str = "RawDeployment",
    canary_traffic_percent: int = 10,
    min_replicas: int = 1,
    max_replicas: int = 1,
    history_secret: str = "",
    timeout_s: float = 600.0,
    hold_for_approval: bool = False,
    registry_url: str = "",
    registration: str = "",
    registry_name: str = "",
) -> NamedTuple(
    "DeployOutputs", [("url", str), ("service_url", str), ("revision", str), ("canary", bool), ("action", str)]
):
    """Create or update the InferenceService and wait for Ready (in-cluster credentials).

    Args:
        model: the released model directory: runtime 'sklearn' is refused for one that needs history.
        storage_path: key prefix of the released version in the data connection's bucket.
        model_version: recorded in the anomaly-mlops.io/model-version annotation.
        isvc_name: InferenceService name (at most 36 characters on OpenShift AI).
        namespace: target namespace; empty: the pod's own.
        storage_key: the data connection secret KServe's storage initializer reads.
        runtime: 'custom' (labels and scores) or 'sklearn' (upstream runtime, labels only).
        deployment_mode: 'RawDeployment' (also 'Standard') or 'Serverless' (also 'Knative': canary, revisions).
        canary_traffic_percent: traffic share of a new model on a live Serverless service.
        min_replicas: lowest replica count (0: scale to zero, Serverless).
        max_replicas: autoscaling ceiling; above 1 for a windowed model only with history_secret.
        history_secret: a Secret whose key 'url' is the Redis/Valkey URL the replicas keep entity history in.
        timeout_s: seconds to wait for Ready.
        hold_for_approval: the rollout waits for approval: refused without registry_url, where it is recorded.
        registry_url: the Model Registry (checked here only: verify and promote tell it what serves).
        registration: register's output: the InferenceService gets the registry's labels with its ids.
        registry_name: the Model Registry's name, the label OpenShift AI's dashboard reads; empty: no labels.
    """
    from collections import namedtuple

    from anomaly_mlops.errors import ConfigError
    from anomaly_mlops.model.artifacts import check_replicas, check_runtime_serves
    from anomaly_mlops.steps.deploy import DeploySpec, canary_percent, current_namespace, deploy
    from anomaly_mlops.steps.registry import registry_labels

    if hold_for_approval and not registry_url:
        raise ConfigError("require_approval records the approval in the Model Registry: set registry_url")
    labels = registry_labels(registration, registry_name)
    check_runtime_serves(runtime, model.path)
    check_replicas(max_replicas, model.path, shared_history=bool(history_secret))
    spec = DeploySpec(
        name=isvc_name,
        namespace=current_namespace(namespace),
        runtime=runtime,
        storage_key=storage_key,
        storage_path=storage_path,
        model_version=model_version,
        deployment_mode=deployment_mode,
        canary_traffic_percent=canary_percent(canary_traffic_percent),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        history_secret=history_secret or None,
        labels=labels,
    )
    result = deploy(spec, timeout_s=timeout_s)
    # url reaches the new revision alone (a canary's `latest` tag URL): what verify checks.
    return namedtuple("DeployOutputs", ["url", "service_url", "revision", "canary", "action"])(
        result.candidate_url or "", result.url or "", result.revision or "", result.canary, result.action
    )


def verify_deployment(
    model: Input[Model],
    probe_data: Input[Dataset],
    verification: Output[Artifact],
    url: str,
    isvc_name: str = "anomaly-detector",
    namespace: str = "",
    model_name: str = "",
    requests: int = 200,
    slo_p99_ms: float = 100.0,
    max_error_rate: float = 0.0,
    use_service_account_token: bool = False,
    canary: bool = False,
    rollback_on_failure: bool = True,
    hold_for_approval: bool = False,
    registry_url: str = "",
    registry_model_name: str = "",
):
    """Post-deployment checks; on failure roll back, on success promote a canary.

    Args:
        model: the model directory whose offline scores the served ones must equal.
        probe_data: rows sent to the served model.
        verification: verify.json.
        url: URL that reaches the deployed revision alone (deploy's url: a canary's own URL).
        isvc_name: InferenceService to promote or roll back.
        namespace: its namespace; empty: the pod's own.
        model_name: the served model's name; empty: isvc_name.
        requests: single-row requests for the latency SLO.
        slo_p99_ms: highest served p99 in milliseconds.
        max_error_rate: highest share of failed requests.
        use_service_account_token: send the pod's token (OpenShift AI with auth on).
        canary: the deployment went out as a canary (promote it when checks pass).
        rollback_on_failure: roll back when a check fails.
        hold_for_approval: leave a rollout that passed as it is: `promote --when-approved` ends it.
        registry_url: the Model Registry to tell what serves; empty: none.
        registry_model_name: the registered model; empty: isvc_name.
    """
    from anomaly_mlops.model.artifacts import load_model_dir
    from anomaly_mlops.params import service_account_token
    from anomaly_mlops.sources.files import load_dataset
    from anomaly_mlops.steps.deploy import current_namespace
    from anomaly_mlops.steps.rollout import RegistryTarget
    from anomaly_mlops.steps.verify import VerifyPlan, raise_on_failure, verify_rollout

    token = service_account_token()
    registry = RegistryTarget(registry_url, registry_model_name or isvc_name, token) if registry_url else None
    reference = load_model_dir(model.path)
    result = verify_rollout(
        url,
        isvc_name,
        current_namespace(namespace),
        load_dataset(probe_data.path, reference.schema).X,
        reference,
        canary=canary,
        model_name=model_name or isvc_name,
        rollback_on_failure=rollback_on_failure,
        registry=registry,
        hold_for_approval=hold_for_approval,
        token=token if use_service_account_token else None,
        plan=VerifyPlan(requests=requests, slo_p99_ms=slo_p99_ms, max_error_rate=max_error_rate),
        out_dir=verification.path,
    )
    raise_on_failure(result)


def register_in_model_registry(
    model: Input[Model],
    validation: Input[Metrics],
    registry_url: str,
    model_name: str,
    version: str,
    uri: str,
    storage_key: str = "aws-connection-models",
    run_id: str = "",
    run_name: str = "",
    namespace: str = "",
    use_service_account_token: bool = True,
    require_approval: bool = False,
    approval_timeout_hours: float = 24.0,
    model_card: str = "",
) -> str:
    """Optional: the released version in the Kubeflow Model Registry (idempotent); nothing
    without a registry_url.

    Args:
        model: the released model directory.
        validation: validate's metrics (they go on the version).
        registry_url: the registry's REST endpoint, e.g. https://HOST:443; empty: do nothing.
        model_name: the registered model (publish's model name).
        version: the released version (publish's).
        uri: the released version's s3:// prefix (publish's).
        storage_key: the data connection KServe reads it with.
        run_id: this pipeline run's id.
        run_name: this pipeline run's name.
        namespace: where the run runs; empty: the pod's own.
        use_service_account_token: send the pod's token.
        require_approval: register it awaiting approval (promote --when-approved acts on the decision).
        approval_timeout_hours: after this, an undecided approval counts as rejected.
        model_card: the version's model card (publish's), linked from the version.
    """
    import json
    from dataclasses import asdict

    from anomaly_mlops.errors import ConfigError
    from anomaly_mlops.params import service_account_token
    from anomaly_mlops.steps.approval import pending_approval
    from anomaly_mlops.steps.deploy import current_namespace
    from anomaly_mlops.steps.model_card import validation_from_logged
    from anomaly_mlops.steps.registry import Lineage, register_version

    if not registry_url:
        return ""  # the registry is off: deploy then puts no registry labels on the InferenceService
    try:
        where = current_namespace(namespace)
    except ConfigError:  # not in a pod (kfp.local): lineage without it
        where = ""
    measured = validation_from_logged(validation.metadata)
    registration = register_version(
        registry_url,
        model.path,
        model_name,
        version,
        uri,
        storage_key=storage_key,
        validation=measured,
        lineage=Lineage("kfp", run_id, run_name, where),
        token=service_account_token() if use_service_account_token else None,
        approval=pending_approval(approval_timeout_hours) if require_approval else None,
        model_card=model_card or None,
    )
    return json.dumps(asdict(registration))


def register_with_trustyai(
    model: Input[Model],
    train_data: Input[Dataset],
    trustyai_url: str,
    model_id: str,
    version: str,
    metrics: str = "meanshift,kstest",
    rows: int = 1000,
    use_service_account_token: bool = True,
) -> str:
    """Optional: the released version's training reference in TrustyAI, its drift metrics scheduled.

    Args:
        model: the released model directory.
        train_data: the rows it was trained on.
        trustyai_url: the TrustyAI service, e.g. https://trustyai-service.<namespace>.svc.
        model_id: the InferenceService's name (TrustyAI's model id).
        version: the released version (publish's).
        metrics: drift metrics to schedule: meanshift, kstest, approxkstest, fouriermmd.
        rows: training rows uploaded as the reference.
        use_service_account_token: send the pod's token.
    """
    import json
    from dataclasses import asdict

    from anomaly_mlops.model.artifacts import load_model_dir
    from anomaly_mlops.params import service_account_token
    from anomaly_mlops.sources.files import load_dataset
    from anomaly_mlops.steps.trustyai import register_with_trustyai as register

    loaded = load_model_dir(model.path)
    registration = register(
        loaded,
        load_dataset(train_data.path, loaded.schema).X,
        trustyai_url,
        model_id,
        version,
        metrics=tuple(m.strip() for m in metrics.split(",") if m.strip()),
        rows=rows,
        token=service_account_token() if use_service_account_token else None,
    )
    return json.dumps(asdict(registration))


def rollback_deployment(
    isvc_name: str = "anomaly-detector", namespace: str = "", registry_url: str = "", model_name: str = ""
) -> str:
    """Serverless: pin the previous revision; RawDeployment: restore the previous predictor.

    Args:
        isvc_name: InferenceService to roll back.
        namespace: its namespace; empty: the pod's own.
        registry_url: the Model Registry to tell what serves; empty: none.
        model_name: the registered model; empty: isvc_name.
    """
    import json

    from anomaly_mlops.params import service_account_token
    from anomaly_mlops.steps.deploy import InferenceServiceClient, current_namespace
    from anomaly_mlops.steps.rollout import RegistryTarget, rollback

    token = service_account_token()
    registry = RegistryTarget(registry_url, model_name or isvc_name, token) if registry_url else None
    return json.dumps(rollback(InferenceServiceClient(), isvc_name, current_namespace(namespace), registry))


def promote_when_approved(
    registry_url: str,
    isvc_name: str = "anomaly-detector",
    namespace: str = "",
    model_name: str = "anomaly-detector",
    update_model_card: bool = True,
) -> str:
    """The approval gate's recurring check: promote the version under approval once approved in
    the Model Registry, roll it back once rejected or past its deadline, else change nothing.

    Args:
        registry_url: the Model Registry's REST endpoint.
        isvc_name: the InferenceService serving the version under approval.
        namespace: its namespace; empty: the pod's own.
        model_name: the registered model.
        update_model_card: put the decision on the version's model card (the data connection's bucket).
    """
    import json

    from anomaly_mlops.params import service_account_token
    from anomaly_mlops.steps.deploy import InferenceServiceClient, current_namespace
    from anomaly_mlops.steps.rollout import RegistryTarget, release_when_approved
    from anomaly_mlops.store.s3 import S3Settings

    token = service_account_token()
    registry = RegistryTarget(registry_url, model_name, token, S3Settings.from_env() if update_model_card else None)
    done = release_when_approved(InferenceServiceClient(), isvc_name, current_namespace(namespace), registry)
    return json.dumps(done)


def pipeline_summary(model_name: str = "anomaly-detector", run_name: str = "") -> str:
    """Exit handler: one line naming the run when it ends, whatever happened.

    Portable: it takes no ``dsl.PipelineTaskFinalStatus``, which every Data Science Pipelines
    backend before KFP 2.14 refuses when a run is created. Each task's state is in the run's
    graph; ``pipeline_final_status`` (the ``training-final-status`` file) adds it here on 2.14+.

    Args:
        model_name: the model the run trained.
        run_name: the run (filled in by KFP).
    """
    import json

    summary = {"model": model_name, "run": run_name, "state": "ended (task states: the run's graph)"}
    print(json.dumps(summary))
    return json.dumps(summary)


def pipeline_final_status(status: dsl.PipelineTaskFinalStatus, model_name: str = "anomaly-detector") -> str:
    """Exit handler with the run's final status: KFP 2.14+ backends only (OpenShift AI 3.x).

    Args:
        status: the run's final status (filled in by KFP; its error is empty, kubeflow/pipelines#11975).
        model_name: the model the run trained.
    """
    import json

    summary = {
        "model": model_name,
        "state": status.state,
        "run": status.pipeline_job_resource_name,
        "failed_task": getattr(status, "error_message", "") or "",
    }
    print(json.dumps(summary))
    return json.dumps(summary)


STEP_FUNCTIONS = (
    prepare_data,
    train_model,
    validate_model,
    publish_model,
    fetch_model,
    deploy_model,
    verify_deployment,
    register_in_model_registry,
    register_with_trustyai,
    rollback_deployment,
    promote_when_approved,
    pipeline_summary,
    pipeline_final_status,
)


def make_components(image: str = DEFAULT_IMAGE, validate_image: str | None = None) -> dict:
    """name -> KFP component, every one on ``image``; validate on ``validate_image`` when given
    (the Containerfile's validate-gpu target: the same steps plus torch for the GPU path)."""
    return {
        func.__name__: dsl.component(
            func,
            base_image=validate_image if func is validate_model and validate_image else image,
            install_kfp_package=False,
        )
        for func in STEP_FUNCTIONS
    }
