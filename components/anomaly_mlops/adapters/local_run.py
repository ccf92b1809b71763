"""The main job, locally: data -> train -> validate -> gate -> publish (embedded S3) ->
serve (the lean model server on loopback, loading from S3) -> verify. Each step's seconds,
and the embedded services' start and stop, add up to the total in summary.json."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from anomaly_mlops.adapters.local_services import embedded_s3, model_server
from anomaly_mlops.errors import GateFailedError
from anomaly_mlops.model.artifacts import load_model_dir
from anomaly_mlops.params import check_seed
from anomaly_mlops.sources.files import load_dataset
from anomaly_mlops.steps.data import prepare_data
from anomaly_mlops.steps.model_card import build_card, publish_card
from anomaly_mlops.steps.train import TrainParams, train
from anomaly_mlops.steps.validate import Gates, LatencyPlan, describe_gate_failure, validate
from anomaly_mlops.steps.verify import VerifyPlan, raise_on_failure, verify
from anomaly_mlops.store.releases import publish
from anomaly_mlops.store.s3 import S3Settings

log = logging.getLogger(__name__)


@dataclass
class LocalRunConfig:
    workdir: Path = Path("runs/local")
    model_name: str = "anomaly-detector"
    rows: int = 20_160
    seed: int = 42
    anomaly_rate: float = 0.03
    train_params: TrainParams = field(default_factory=TrainParams)
    gates: Gates = field(default_factory=Gates)
    latency: LatencyPlan = field(default_factory=LatencyPlan)
    verify_plan: VerifyPlan = field(default_factory=VerifyPlan)
    # Before run_local: the interpreter's start and the steps' libraries (the CLI measures it).
    import_seconds: float = 0.0


def run_local(config: LocalRunConfig | None = None) -> dict:
    config = config or LocalRunConfig()
    # settings refused before a run directory is made, so a wrong flag leaves nothing behind
    check_seed(config.seed)
    config.train_params.check()
    config.verify_plan.check()
    run_started = time.perf_counter()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    root = Path(config.workdir) / run_id
    root.mkdir(parents=True, exist_ok=False)
    timings: dict[str, float] = (
        {"start Python, import libraries": config.import_seconds} if config.import_seconds else {}
    )
    step_names = ("data", "train", "validate", "publish", "serve+verify")

    def step(number: int, name: str):
        log.info("==> [%d/%d] %s", number, len(step_names), name)
        return time.perf_counter()

    started = step(1, "data: synthetic node metrics")
    prepared = prepare_data(root / "data", rows=config.rows, seed=config.seed, anomaly_rate=config.anomaly_rate)
    timings["data"] = time.perf_counter() - started

    started = step(2, "train: StandardScaler + IsolationForest")
    trained = train(str(prepared.train_path), root / "model", config.train_params)
    timings["train"] = time.perf_counter() - started

    started = step(3, "validate: accuracy, latency, gates")
    validation = validate(
        trained.model_dir, str(prepared.holdout_path), root / "validation", config.gates, config.latency
    )
    timings["validate"] = time.perf_counter() - started
    summary = {
        "run_dir": str(root),
        "model_dir": str(trained.model_dir),
        "report": str(validation.report_path),
        "metrics": {k: validation.metrics[k] for k in ("roc_auc", "pr_auc", "precision", "recall", "f1")},
        "gate_passed": validation.passed,
    }
    if not validation.passed:
        _write_summary(root, summary, timings)
        failed = [describe_gate_failure(g) for g in validation.gates if not g["passed"]]
        raise GateFailedError(
            f"release gate failed ({'; '.join(failed)}); nothing published. Report: {validation.report_path}"
        )

    started = time.perf_counter()
    with embedded_s3() as s3_env:
        timings["start embedded S3"] = time.perf_counter() - started
        started = step(4, "publish: immutable version on the embedded S3 server")
        published = publish(trained.model_dir, config.model_name, settings=S3Settings.from_env(s3_env))
        checked = {"metrics": validation.metrics, "gate_passed": validation.passed, "gates": validation.gates}
        card = build_card(trained.model_dir, published.version, checked)
        publish_card(card, config.model_name, published.version, S3Settings.from_env(s3_env))
        (root / "model-card.md").write_text(card.markdown)  # the embedded S3 server goes with the run
        (root / "model-card.html").write_text(card.html)
        timings["publish"] = time.perf_counter() - started
        summary["published_uri"] = published.uri
        summary["model_card"] = str(root / "model-card.html")

        started = step(5, "serve from S3 with the lean model server, then verify")
        reference = load_model_dir(trained.model_dir)
        rows = load_dataset(str(prepared.holdout_path), reference.schema).X
        with model_server(config.model_name, published.uri, env=s3_env, log_path=root / "model-server.log") as url:
            result = verify(
                url, config.model_name, rows, reference=reference, plan=config.verify_plan, out_dir=root / "verify"
            )
        timings["serve+verify"] = time.perf_counter() - started
        summary["verify"] = {
            "passed": result.passed,
            "latency_ms": result.latency_ms,
            "report": str(result.report_path),
        }
        started = time.perf_counter()
    timings["stop embedded S3"] = time.perf_counter() - started
    timings["total"] = time.perf_counter() - run_started + config.import_seconds
    _write_summary(root, summary, timings)
    raise_on_failure(result)
    return summary


def _write_summary(root: Path, summary: dict, timings: dict) -> None:
    if "total" in timings:  # what no step accounts for (folders, summaries), so that the parts add up
        timings["other"] = timings["total"] - sum(v for k, v in timings.items() if k != "total")
    summary["seconds"] = {k: round(v, 2) for k, v in timings.items()}
    log.info(
        "seconds: %s",
        ", ".join(f"{k} {v:.2f}" for k, v in summary["seconds"].items() if k != "total")
        + f"; total {summary['seconds'].get('total', sum(summary['seconds'].values())):.2f}",
    )
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("summary: %s", os.fspath(root / "summary.json"))
