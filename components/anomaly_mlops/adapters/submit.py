"""Submit compiled pipelines to OpenShift AI Data Science Pipelines (a KFP v2 API server)
and keep one recurring run per name in the state asked for.

DSP routes sit behind the OpenShift OAuth proxy: pass a bearer token (``oc whoami -t``,
or a service account token) as ``existing_token``. Recurring runs cannot be edited in
place through the KFP API, so ``schedule`` compares a fingerprint of what was asked
(pipeline package, parameters, cron, concurrency) and replaces the recurring run only
when it differs; asking twice for the same thing changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from anomaly_mlops.errors import AnomalyMLOpsError, ConfigError

log = logging.getLogger(__name__)

FINGERPRINT_PREFIX = "anomaly-mlops fingerprint: "


# robfig/cron's fields with a seconds field, as KFP parses them: (name, low, high, names).
_CRON_FIELDS = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)


def check_cron(expression: str) -> str:
    """KFP uses robfig/cron with a seconds field: 6 fields, e.g. '0 0 3 * * *' for 03:00 daily.
    Every field is checked here, before any server is contacted."""
    fields = expression.split()
    if len(fields) != 6:
        hint = f" (did you mean '0 {expression}'?)" if len(fields) == 5 else ""
        raise ConfigError(f"KFP cron expressions have 6 fields, seconds first; got {len(fields)}: {expression!r}{hint}")
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS):
        for part in text.split(","):
            _check_cron_part(part, name, low, high, names, expression)
    return " ".join(fields)


def _check_cron_part(part: str, name: str, low: int, high: int, names: tuple, expression: str) -> None:
    def value(token: str) -> int:
        if token.upper() in names:
            return names.index(token.upper()) + low
        if not token.isdigit() or not low <= int(token) <= high:
            raise ConfigError(f"cron {expression!r}: {name} {token!r} is not in {low}-{high}")
        return int(token)

    span, _, step = part.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        raise ConfigError(f"cron {expression!r}: {name} step {step!r} must be a positive number")
    if span in ("*", "?"):
        if span == "?" and name not in ("day of month", "day of week"):
            raise ConfigError(f"cron {expression!r}: '?' is allowed only for day of month or day of week")
        return
    first, dash, last = span.partition("-")
    if value(first) > (value(last) if dash else high if step else value(first)):
        raise ConfigError(f"cron {expression!r}: {name} range {span!r} runs backwards")


# KFP's parameter types and the JSON values a run parameter of each may hold.
_KFP_TYPES = {
    "NUMBER_INTEGER": ("a whole number", (int,)),
    "NUMBER_DOUBLE": ("a number", (int, float)),
    "STRING": ("a string", (str,)),
    "BOOLEAN": ("true or false", (bool,)),
    "LIST": ("a JSON list", (list,)),
    "STRUCT": ("a JSON object", (dict,)),
}


def check_arguments(package: str | Path, arguments: dict) -> dict:
    """Refuse run parameters the pipeline does not declare (naming the ones it does), values
    not of their declared type, and values its steps would refuse (the train step's settings,
    verify's plan, the canary's share), so that a wrong value fails here, not as a failed run
    or every week in a recurring one. Returns the arguments to send: a number given for a
    string parameter (max_samples=4096) as its text, a whole float for an integer as an int."""
    import yaml

    spec = yaml.safe_load(Path(_package(package)).read_text().split("\n---\n")[0])
    declared = (spec.get("root", {}).get("inputDefinitions", {}) or {}).get("parameters", {}) or {}
    unknown = sorted(set(arguments) - set(declared))
    if unknown:
        raise ConfigError(
            f"the pipeline in {package} has no parameter {', '.join(unknown)}; it takes: {', '.join(sorted(declared))}"
        )
    sent = {}
    for name, value in arguments.items():
        kind = declared[name].get("parameterType")
        if kind == "STRING" and isinstance(value, int | float) and not isinstance(value, bool):
            value = json.dumps(value)
        value = _typed(kind, value)  # 5000.0 for a whole number: 5000
        words, types = _KFP_TYPES.get(kind, (None, (object,)))
        if not isinstance(value, types) or (isinstance(value, bool) and kind != "BOOLEAN"):
            raise ConfigError(f"parameter {name} must be {words}, got {value!r}")
        sent[name] = value
    defaults = {name: _typed(d.get("parameterType"), d.get("defaultValue")) for name, d in declared.items()}
    _check_values(defaults | sent)
    return sent


def _typed(kind: str | None, value):
    """A default as the compiled spec holds it (whole numbers as 42.0) in its declared type."""
    return int(value) if kind == "NUMBER_INTEGER" and isinstance(value, float) and value.is_integer() else value


def _check_values(values: dict) -> None:
    """What the steps check of a run's values, for the ones this pipeline takes."""
    import inspect

    from anomaly_mlops.params import TrainParams, VerifyPlan

    train_fields = list(inspect.signature(TrainParams.from_pipeline).parameters)  # the train component's names
    if all(name in values for name in train_fields):
        TrainParams.from_pipeline(**{name: values[name] for name in train_fields}).check()
    if "verify_requests" in values and "slo_p99_ms" in values:
        VerifyPlan(requests=values["verify_requests"], slo_p99_ms=values["slo_p99_ms"]).check()
    if "canary_traffic_percent" in values:
        from anomaly_mlops.steps.deploy import canary_percent, check_canary_percent

        check_canary_percent(canary_percent(values["canary_traffic_percent"]))


def make_client(host: str, token: str | None = None, namespace: str | None = None, ssl_ca_cert: str | None = None):
    import kfp

    if not host:
        raise ConfigError("no Data Science Pipelines host: pass --host https://<ds-pipeline route>")
    return kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow", ssl_ca_cert=ssl_ca_cert)


def _package(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline package not found: {path} (run 'anomaly-mlops compile')")
    return path


def submit_run(
    client, package: str | Path, arguments: dict, run_name: str, experiment: str, namespace: str | None = None
) -> str:
    arguments = check_arguments(package, arguments)
    result = client.create_run_from_pipeline_package(
        pipeline_file=str(_package(package)),
        arguments=arguments,
        run_name=run_name,
        experiment_name=experiment,
        namespace=namespace,
    )
    log.info("submitted run %s (%s) in experiment %s", result.run_id, run_name, experiment)
    return result.run_id


@dataclass
class ScheduleResult:
    action: str  # created, replaced, unchanged
    recurring_run_id: str
    experiment_id: str


def fingerprint(package: Path, arguments: dict, cron: str, max_concurrency: int, enabled: bool) -> str:
    digest = hashlib.sha256(package.read_bytes())
    digest.update(
        json.dumps({"args": arguments, "cron": cron, "max": max_concurrency, "on": enabled}, sort_keys=True).encode()
    )
    return digest.hexdigest()[:16]


def schedule(
    client,
    package: str | Path,
    name: str,
    cron: str,
    arguments: dict,
    experiment: str,
    namespace: str | None = None,
    max_concurrency: int = 1,
    enabled: bool = True,
) -> ScheduleResult:
    package = _package(package)
    cron = check_cron(cron)
    arguments = check_arguments(package, arguments)
    wanted = fingerprint(package, arguments, cron, max_concurrency, enabled)
    exp = client.create_experiment(name=experiment, namespace=namespace)  # returns the existing one if present
    name_filter = json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": name}]})
    existing = client.list_recurring_runs(experiment_id=exp.experiment_id, filter=name_filter, page_size=100)
    matches = [r for r in (existing.recurring_runs or []) if r.display_name == name]
    for run in matches:
        if (run.description or "").endswith(FINGERPRINT_PREFIX + wanted) and len(matches) == 1:
            log.info("recurring run %s already matches (%s); nothing to do", name, run.recurring_run_id)
            return ScheduleResult("unchanged", run.recurring_run_id, exp.experiment_id)
    for run in matches:
        client.delete_recurring_run(run.recurring_run_id)
        log.info("deleted outdated recurring run %s (%s)", name, run.recurring_run_id)
    created = client.create_recurring_run(
        experiment_id=exp.experiment_id,
        job_name=name,
        cron_expression=cron,
        max_concurrency=max_concurrency,
        no_catchup=True,
        params=arguments,
        pipeline_package_path=str(package),
        enabled=enabled,
        description=f"Scheduled retraining of the anomaly detector. {FINGERPRINT_PREFIX}{wanted}",
    )
    action = "replaced" if matches else "created"
    log.info("%s recurring run %s (%s) with cron %r", action, name, created.recurring_run_id, cron)
    return ScheduleResult(action, created.recurring_run_id, exp.experiment_id)


def parse_params(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are JSON when they parse (numbers, booleans), else strings."""
    params = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"parameters are key=value, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def api_error(exc: Exception, host: str) -> AnomalyMLOpsError:
    status = getattr(exc, "status", None)
    if status in (401, 403):
        return AnomalyMLOpsError(
            f"Data Science Pipelines at {host} refused the token ({status}): pass a valid "
            "--token-file (oc whoami -t) with access to the project"
        )
    from anomaly_mlops.redact import redact

    return AnomalyMLOpsError(
        f"Data Science Pipelines at {redact(host)} failed: {type(exc).__name__}: {redact(str(exc))[:300]}"
    )
