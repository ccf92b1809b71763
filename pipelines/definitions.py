"""The KFP v2 pipelines.

- ``training``: data (synthetic, a file, or live Prometheus metrics labelled by alert
  history when ``prometheus_url`` is set) -> train -> validate (GPU node; against the
  champion, ``latest`` released by default) -> If(gate passed) -> publish ->
  If(registry_url) -> register; If(deploy) -> deploy -> verify (promote the canary, or roll
  back; with ``require_approval`` the rollout that passed is left for the approval); an exit
  handler prints a summary whatever happened.
- ``deploy-only``: an already released version: fetch (verified) -> deploy -> verify.
- ``rollback``: pin the previous revision / restore the previous storage path.
- ``promote-when-approved``: the approval gate's recurring check (KFP has no manual step).

Node placement, the image and the data connection are compile options (``PipelineOptions``);
everything else a run may change is a pipeline parameter. (No postponed annotations: KFP
reads parameter types.)

What the IR may hold is bounded by the oldest Data Science Pipelines backend we support
(KFP 2.0.5, whose driver parses the kubernetes platform config strictly): secrets are
named by a constant (``secretName``; no ``secretNameParameter``, no ``optional``), so the
data connection is a compile option and every step that mounts it needs it to exist.
Tolerations exist from KFP 2.2.0; for 2.0.5 compile with ``--gpu-toleration-key ''``.
``retryPolicy`` is honoured from KFP 2.5.0 and ignored before.

The API server compiles the IR to an Argo Workflow when a run is created, and before KFP 2.14
that compiler refuses a task whose input is ``dsl.PipelineTaskFinalStatus`` ("task final
status not supported yet"). The default training pipeline's exit handler therefore takes
none; ``final_status=True`` (the ``training-final-status`` file) needs ``backend="2.14"``.
"""

from dataclasses import dataclass, replace

from kfp import dsl, kubernetes

from anomaly_mlops.adapters.kfp_components import DEFAULT_IMAGE, make_components
from anomaly_mlops.errors import ConfigError
from anomaly_mlops.params import RETRAINING_LOOKBACK
from anomaly_mlops.store.s3 import ENV_KEYS

DATA_CONNECTION = "aws-connection-models"
# The KFP backends of OpenShift AI's Data Science Pipelines, oldest first.
BACKENDS = {
    "2.0.5": "DSP 2.0-2.6",
    "2.2.0": "DSP 2.7-2.10",
    "2.4.0": "DSP 2.11-2.13",
    "2.5.0": "DSP 2.14-2.16 and stable-2.x (OpenShift AI 2.x)",
    "2.14": "OpenShift AI 3.x",
}
NETWORK_RETRY = dict(num_retries=3, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="300s")


@dataclass(frozen=True)
class PipelineOptions:
    image: str = DEFAULT_IMAGE
    validate_image: str | None = None  # None: validate runs on `image` too (no torch: GPU path not measured)
    gpu: bool = True
    gpu_resource: str = "nvidia.com/gpu"
    gpu_count: int = 1
    gpu_node_selector: tuple[str, str] | None = ("nvidia.com/gpu.present", "true")
    gpu_toleration_key: str | None = "nvidia.com/gpu"
    data_connection: str = DATA_CONNECTION  # the OpenShift AI data connection secret every S3 step mounts
    backend: str = "2.0.5"  # the oldest KFP backend (BACKENDS) the compiled file must run on
    final_status: bool = False  # the exit handler reads the run's final status: KFP 2.14+ only

    def check(self) -> None:
        """A feature the target backend refuses is a compile error naming both."""
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown KFP backend {self.backend!r}: one of {', '.join(BACKENDS)}")
        if self.final_status and _older(self.backend, "2.14"):
            raise ConfigError(
                f"the exit handler's final status (dsl.PipelineTaskFinalStatus) needs a KFP 2.14+ backend "
                f"({BACKENDS['2.14']}); KFP {self.backend} ({BACKENDS[self.backend]}) refuses it when a run "
                "is created ('task final status not supported yet'): compile with backend 2.14, or without it"
            )


def _older(version: str, than: str) -> bool:
    return tuple(int(p) for p in version.split(".")) < tuple(int(p) for p in than.split("."))


def _resources(task, cpu: str, memory: str, cpu_limit: str, memory_limit: str):
    return task.set_cpu_request(cpu).set_memory_request(memory).set_cpu_limit(cpu_limit).set_memory_limit(memory_limit)


def _s3_env(task, options: PipelineOptions):
    # optional=False is the only form every backend reads the same way: KFP 2.0.5/2.2.0
    # refuse the field, 2.4.0/2.5.0 drop it (the secret is then required anyway).
    kubernetes.use_secret_as_env(task, secret_name=options.data_connection, secret_key_to_env={k: k for k in ENV_KEYS})
    return task


def _on_gpu(task, options: PipelineOptions):
    if not options.gpu:
        return task
    task.set_accelerator_type(options.gpu_resource).set_accelerator_limit(options.gpu_count)
    if options.gpu_node_selector:
        kubernetes.add_node_selector(
            task, label_key=options.gpu_node_selector[0], label_value=options.gpu_node_selector[1]
        )
    if options.gpu_toleration_key:
        kubernetes.add_toleration(task, key=options.gpu_toleration_key, operator="Exists", effect="NoSchedule")
    return task


def _deploy_and_verify(
    c,
    *,
    model,
    probe_data,
    storage_path,
    model_version,
    isvc_name,
    namespace,
    data_connection: str,
    runtime,
    deployment_mode,
    canary_traffic_percent,
    verify_requests,
    slo_p99_ms,
    use_service_account_token,
    registry_url,
    model_name,
    hold_for_approval=False,
    registration="",
    registry_name="",
):
    deployed = c["deploy_model"](
        model=model,
        storage_path=storage_path,
        model_version=model_version,
        isvc_name=isvc_name,
        namespace=namespace,
        storage_key=data_connection,
        runtime=runtime,
        deployment_mode=deployment_mode,
        canary_traffic_percent=canary_traffic_percent,
        hold_for_approval=hold_for_approval,
        registry_url=registry_url,
        registration=registration,
        registry_name=registry_name,
    ).set_display_name("deploy InferenceService")
    deployed.set_caching_options(False).set_retry(**NETWORK_RETRY)
    _resources(deployed, "100m", "256Mi", "500m", "512Mi")
    verified = c["verify_deployment"](
        model=model,
        probe_data=probe_data,
        url=deployed.outputs["url"],
        isvc_name=isvc_name,
        namespace=namespace,
        requests=verify_requests,
        slo_p99_ms=slo_p99_ms,
        canary=deployed.outputs["canary"],
        use_service_account_token=use_service_account_token,
        hold_for_approval=hold_for_approval,
        registry_url=registry_url,
        registry_model_name=model_name,
    ).set_display_name("verify served model")
    verified.set_caching_options(False)
    _resources(verified, "250m", "512Mi", "1", "1Gi")
    return deployed, verified


def build_training_pipeline(options: PipelineOptions = PipelineOptions()):
    options.check()
    c = make_components(options.image, options.validate_image)

    @dsl.pipeline(
        name="anomaly-detector-training",
        description="Train, validate (GPU node), gate, publish to S3, deploy to KServe and verify the "
        "isolation-forest anomaly detector.",
    )
    def training(
        source: str = "synthetic",
        features: str = "",
        prometheus_url: str = "",
        lookback: str = RETRAINING_LOOKBACK,
        step: str = "60s",
        alerts: str = "",
        incidents: str = "",
        rows: int = 20160,
        seed: int = 42,
        anomaly_rate: float = 0.03,
        holdout_fraction: float = 0.3,
        n_estimators: int = 100,
        max_samples: str = "4096",
        contamination: float = 0.02,
        feature_window: int = -1,
        window_columns: str = "deviation,std",
        raw_tree_share: float = 0.5,
        metric_basis: str = "",
        reconstruction_variance: float = 0.0,
        score_smoothing: int = -1,
        threshold: str = "",
        fit_labelled_anomalies: bool = False,
        fixed_engine: bool = False,
        min_roc_auc: float = 0.80,
        min_pr_auc: float = 0.30,
        max_single_row_p99_ms: float = 100.0,
        champion: str = "latest",
        max_auc_drop: float = 0.02,
        max_score_psi: float = 4.0,
        max_flagged_rate_ratio: float = 3.0,
        model_name: str = "anomaly-detector",
        version: str = "",
        root_prefix: str = "",
        deploy: bool = True,
        isvc_name: str = "anomaly-detector",
        namespace: str = "",
        runtime: str = "custom",
        deployment_mode: str = "RawDeployment",
        canary_traffic_percent: int = 10,
        verify_requests: int = 200,
        slo_p99_ms: float = 100.0,
        use_service_account_token: bool = False,
        trustyai_url: str = "",
        registry_url: str = "",
        registry_name: str = "",
        require_approval: bool = False,
        approval_timeout_hours: float = 24.0,
    ):
        if options.final_status:
            summary = c["pipeline_final_status"](model_name=model_name)
        else:
            summary = c["pipeline_summary"](model_name=model_name, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER)
        summary.set_display_name("summary")
        summary.set_caching_options(False)
        _resources(summary, "100m", "128Mi", "250m", "256Mi")
        with dsl.ExitHandler(summary, name="retraining"):
            data = c["prepare_data"](
                source=source,
                features=features,
                rows=rows,
                seed=seed,
                anomaly_rate=anomaly_rate,
                holdout_fraction=holdout_fraction,
                prometheus_url=prometheus_url,
                lookback=lookback,
                step=step,
                alerts=alerts,
                incidents=incidents,
            )
            data.set_display_name("data")
            # The same source URI can hold new data on the next scheduled run: never cache.
            data.set_caching_options(False).set_retry(**NETWORK_RETRY)
            _s3_env(data, options)
            _resources(data, "500m", "1Gi", "2", "4Gi")

            trained = c["train_model"](
                train_data=data.outputs["train_data"],
                features=features,
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
                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ).set_display_name("train")
            _resources(trained, "1", "2Gi", "2", "8Gi")

            validated = c["validate_model"](
                model=trained.outputs["model"],
                holdout_data=data.outputs["holdout_data"],
                min_roc_auc=min_roc_auc,
                min_pr_auc=min_pr_auc,
                max_single_row_p99_ms=max_single_row_p99_ms,
                champion=champion,
                model_name=model_name,
                root_prefix=root_prefix,
                max_auc_drop=max_auc_drop,
                max_score_psi=max_score_psi,
                max_flagged_rate_ratio=max_flagged_rate_ratio,
                runtime=runtime,  # a model the runtime cannot serve stops here, before it is published
            ).set_display_name("validate")
            _s3_env(validated, options)  # the champion comes from the bucket
            _resources(validated, "1", "2Gi", "2", "8Gi")
            _on_gpu(validated, options)

            with dsl.If(validated.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
                published = c["publish_model"](
                    model=trained.outputs["model"],
                    validation=validated.outputs["metrics"],
                    validation_report=validated.outputs["report"],
                    model_name=model_name,
                    version=version,
                    root_prefix=root_prefix,
                    require_approval=require_approval,
                )
                published.set_display_name("publish to S3").set_caching_options(False).set_retry(**NETWORK_RETRY)
                _s3_env(published, options)
                _resources(published, "250m", "512Mi", "1", "1Gi")
                # Without a registry_url register does nothing; it runs anyway, so deploy can take
                # the registration's ids from it (KFP refuses a dependency on a task inside a
                # condition the dependent is not in).
                registered_version = c["register_in_model_registry"](
                    model=trained.outputs["model"],
                    validation=validated.outputs["metrics"],
                    registry_url=registry_url,
                    model_name=model_name,
                    version=published.outputs["version"],
                    uri=published.outputs["uri"],
                    storage_key=options.data_connection,
                    run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                    run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                    namespace=namespace,
                    require_approval=require_approval,
                    approval_timeout_hours=approval_timeout_hours,
                    model_card=published.outputs["model_card"],
                )
                registered_version.set_display_name("register in the Model Registry").set_caching_options(False)
                registered_version.set_retry(**NETWORK_RETRY)
                _resources(registered_version, "250m", "512Mi", "1", "1Gi")
                with dsl.If(trustyai_url != "", name="trustyai-enabled"):
                    registered = c["register_with_trustyai"](
                        model=trained.outputs["model"],
                        train_data=data.outputs["train_data"],
                        trustyai_url=trustyai_url,
                        model_id=isvc_name,
                        version=published.outputs["version"],
                    )
                    registered.set_display_name("register with TrustyAI").set_caching_options(False)
                    registered.set_retry(**NETWORK_RETRY)
                    _resources(registered, "250m", "512Mi", "1", "1Gi")
                with dsl.If(deploy == True, name="deploy-enabled"):  # noqa: E712
                    _deploy_and_verify(
                        c,
                        model=trained.outputs["model"],
                        probe_data=data.outputs["holdout_data"],
                        storage_path=published.outputs["storage_path"],
                        model_version=published.outputs["version"],
                        isvc_name=isvc_name,
                        namespace=namespace,
                        data_connection=options.data_connection,
                        runtime=runtime,
                        deployment_mode=deployment_mode,
                        canary_traffic_percent=canary_traffic_percent,
                        verify_requests=verify_requests,
                        slo_p99_ms=slo_p99_ms,
                        use_service_account_token=use_service_account_token,
                        registry_url=registry_url,
                        model_name=model_name,
                        hold_for_approval=require_approval,
                        registration=registered_version.output,
                        registry_name=registry_name,
                    )

    return training


def build_deploy_pipeline(options: PipelineOptions = PipelineOptions()):
    c = make_components(options.image, options.validate_image)

    @dsl.pipeline(
        name="anomaly-detector-deploy",
        description="Deploy an already released model version to KServe, verify it, then promote "
        "the canary or roll back.",
    )
    def deploy_only(
        version: str,
        model_name: str = "anomaly-detector",
        root_prefix: str = "",
        probe_rows: int = 2000,
        isvc_name: str = "anomaly-detector",
        namespace: str = "",
        runtime: str = "custom",
        deployment_mode: str = "RawDeployment",
        canary_traffic_percent: int = 10,
        verify_requests: int = 200,
        slo_p99_ms: float = 100.0,
        use_service_account_token: bool = False,
        registry_url: str = "",
    ):
        fetched = c["fetch_model"](model_name=model_name, version=version, root_prefix=root_prefix)
        fetched.set_display_name("fetch released version").set_caching_options(False).set_retry(**NETWORK_RETRY)
        _s3_env(fetched, options)
        _resources(fetched, "250m", "512Mi", "1", "1Gi")
        probe = c["prepare_data"](source="synthetic", rows=probe_rows).set_display_name("probe rows")
        _resources(probe, "250m", "512Mi", "1", "1Gi")
        _deploy_and_verify(
            c,
            model=fetched.outputs["model"],
            probe_data=probe.outputs["holdout_data"],
            storage_path=fetched.outputs["storage_path"],
            model_version=version,
            isvc_name=isvc_name,
            namespace=namespace,
            data_connection=options.data_connection,
            runtime=runtime,
            deployment_mode=deployment_mode,
            canary_traffic_percent=canary_traffic_percent,
            verify_requests=verify_requests,
            slo_p99_ms=slo_p99_ms,
            use_service_account_token=use_service_account_token,
            registry_url=registry_url,
            model_name=model_name,
        )

    return deploy_only


def build_rollback_pipeline(options: PipelineOptions = PipelineOptions()):
    c = make_components(options.image, options.validate_image)

    @dsl.pipeline(
        name="anomaly-detector-rollback",
        description="Serverless: pin traffic to the previous revision. RawDeployment: restore the "
        "previous storage path.",
    )
    def rollback(isvc_name: str = "anomaly-detector", namespace: str = "", registry_url: str = "",
                 model_name: str = "anomaly-detector"):  # fmt: skip
        task = c["rollback_deployment"](
            isvc_name=isvc_name, namespace=namespace, registry_url=registry_url, model_name=model_name
        ).set_display_name("roll back")
        task.set_caching_options(False).set_retry(**NETWORK_RETRY)
        _resources(task, "100m", "256Mi", "500m", "512Mi")

    return rollback


def build_promote_when_approved_pipeline(options: PipelineOptions = PipelineOptions()):
    c = make_components(options.image, options.validate_image)

    @dsl.pipeline(
        name="anomaly-detector-promote-when-approved",
        description="The approval gate's recurring check: promote the version awaiting approval once it is "
        "approved in the Model Registry; roll it back once rejected or past its deadline.",
    )
    def promote_when_approved(
        registry_url: str, isvc_name: str = "anomaly-detector", namespace: str = "",
        model_name: str = "anomaly-detector",
    ):  # fmt: skip
        task = c["promote_when_approved"](
            registry_url=registry_url, isvc_name=isvc_name, namespace=namespace, model_name=model_name
        ).set_display_name("promote when approved")
        task.set_caching_options(False).set_retry(**NETWORK_RETRY)
        _s3_env(task, options)  # the decision goes on the version's model card
        _resources(task, "100m", "256Mi", "500m", "512Mi")

    return promote_when_approved


def build_training_final_status_pipeline(options: PipelineOptions = PipelineOptions()):
    """The training pipeline whose summary reads the run's final status (KFP 2.14+)."""
    return build_training_pipeline(replace(options, backend="2.14", final_status=True))


PIPELINES = {
    "training": build_training_pipeline,
    "training-final-status": build_training_final_status_pipeline,
    "deploy-only": build_deploy_pipeline,
    "rollback": build_rollback_pipeline,
    "promote-when-approved": build_promote_when_approved_pipeline,
}
