"""The validate step: accuracy on a labelled holdout, scoring latency, release gates, and
an HTML report with the ROC curve and the score and latency histograms.

The decision threshold comes from the model's metadata (set from training scores), so the
holdout labels only measure, they never tune.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from anomaly_mlops.errors import DataError
from anomaly_mlops.model.artifacts import ANOMALY, LoadedModel, load_model_dir
from anomaly_mlops.model.drift import TOP_METRICS, describe_outside, outside_training_range
from anomaly_mlops.model.features import FeatureTransform
from anomaly_mlops.params import MIN_SPLIT_ROWS, Gates, LatencyPlan
from anomaly_mlops.sources.files import Dataset, load_dataset

log = logging.getLogger(__name__)


@dataclass
class ValidationResult:
    metrics: dict
    gates: list[dict]
    passed: bool
    out_dir: Path
    report_path: Path
    metrics_path: Path
    roc_points: dict = field(repr=False, default_factory=dict)
    confusion: list = field(repr=False, default_factory=list)
    single_row_ms: np.ndarray = field(repr=False, default_factory=lambda: np.array([]))


def describe_device() -> dict:
    """What the latency was measured on; says plainly when no GPU was seen."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            gpus = [line.strip() for line in out.stdout.splitlines() if line.strip().startswith("GPU")]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "scoring_device": "cpu",
        "gpus": gpus,
        "gpu_note": (
            f"{len(gpus)} GPU(s) seen; scikit-learn scores on the CPU" if gpus else "no GPU was seen on this node"
        ),
    }


def measure_latency(model: LoadedModel, X: np.ndarray, plan: LatencyPlan) -> tuple[dict, np.ndarray]:
    """Single rows as the server scores them (a windowed model after the entity's kept
    history), and batches of rows scored as one series."""
    from anomaly_mlops.serving.history import history_for

    rng = np.random.default_rng(0)
    rows = X[rng.integers(0, len(X), size=plan.single_row_repeats + plan.warmup)]
    history = history_for(model)

    def score_one(row):
        return history.score("latency", row) if history is not None else model.score(row)

    for i in range(plan.warmup):
        score_one(rows[i : i + 1])
    single = np.empty(plan.single_row_repeats)
    for i in range(plan.single_row_repeats):
        row = rows[plan.warmup + i : plan.warmup + i + 1]
        t0 = time.perf_counter()
        score_one(row)
        single[i] = (time.perf_counter() - t0) * 1000.0
    result = {"single_row_ms": _percentiles(single), "batches": {}}
    for size in plan.batch_sizes:
        batch = X[rng.integers(0, len(X), size=size)]
        model.score(batch)
        timings = np.empty(plan.batch_repeats)
        for i in range(plan.batch_repeats):
            t0 = time.perf_counter()
            model.score(batch)
            timings[i] = (time.perf_counter() - t0) * 1000.0
        stats = _percentiles(timings)
        stats["rows_per_second"] = round(size / (np.median(timings) / 1000.0), 1)
        stats["p99_us_per_row"] = round(stats["p99"] * 1000.0 / size, 3)
        result["batches"][str(size)] = stats
        log.info("latency batch %d: p50 %.2f ms, p99 %.2f ms", size, stats["p50"], stats["p99"])
    log.info(
        "latency single row over %d calls: p50 %.3f ms, p95 %.3f ms, p99 %.3f ms",
        plan.single_row_repeats,
        *(result["single_row_ms"][k] for k in ("p50", "p95", "p99")),
    )
    return result, single


def _percentiles(samples_ms: np.ndarray) -> dict:
    return {
        "n": int(samples_ms.size),
        "p50": round(float(np.percentile(samples_ms, 50)), 4),
        "p95": round(float(np.percentile(samples_ms, 95)), 4),
        "p99": round(float(np.percentile(samples_ms, 99)), 4),
        "max": round(float(samples_ms.max()), 4),
    }


def accuracy_metrics(y: np.ndarray, scores: np.ndarray, predictions: np.ndarray) -> tuple[dict, dict, list]:
    from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score, roc_curve

    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise DataError(
            f"the holdout has {positives} anomalous rows out of {len(y)}: "
            "accuracy needs both normal and anomalous labelled rows"
        )
    flagged = (predictions == ANOMALY).astype(np.int8)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, flagged, labels=[0, 1]).ravel())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr, tpr, thresholds = roc_curve(y, scores)
    # KFP's ClassificationMetrics wants a modest number of points.
    keep = np.unique(np.linspace(0, len(fpr) - 1, num=min(len(fpr), 200)).astype(int))
    roc = {
        "fpr": fpr[keep].tolist(),
        "tpr": tpr[keep].tolist(),
        "thresholds": np.nan_to_num(thresholds[keep], posinf=1.0).tolist(),
    }
    metrics = {
        "roc_auc": round(float(roc_auc_score(y, scores)), 5),
        "pr_auc": round(float(average_precision_score(y, scores)), 5),
        "precision": round(precision, 5),
        "recall": round(recall, 5),
        "f1": round(f1, 5),
        "holdout_rows": int(len(y)),
        "holdout_anomalies": positives,
        "flagged_rows": int(flagged.sum()),
    }
    return metrics, roc, [[tn, fp], [fn, tp]]


def evaluate_gates(metrics: dict, gates: Gates) -> list[dict]:
    """Every configured gate (None switches one off): passed, failed, or skipped with the
    reason when it cannot be measured here. Accuracy gates need labels; the flagged-rate and
    score-shift gates are for unlabelled data, where they are what there is to measure."""
    labelled = metrics.get("roc_auc") is not None
    champion = metrics.get("champion") or {}
    no_labels = None if labelled else "no labels"
    no_champion = None if champion.get("compared") else champion.get("note", "no champion")
    for_unlabelled = "labels measure accuracy directly" if labelled else None
    checks = [  # (gate, value, op, configured limit, limit in effect, why skipped)
        ("roc_auc", metrics.get("roc_auc"), ">=", gates.min_roc_auc, gates.min_roc_auc, no_labels),
        ("pr_auc", metrics.get("pr_auc"), ">=", gates.min_pr_auc, gates.min_pr_auc, no_labels),
        ("f1", metrics.get("f1"), ">=", gates.min_f1, gates.min_f1, no_labels),
        (
            "single_row_p99_ms",
            metrics["latency"]["single_row_ms"]["p99"],
            "<=",
            gates.max_single_row_p99_ms,
            gates.max_single_row_p99_ms,
            None,
        ),
    ]
    if gates.max_batch_row_p99_us is not None:
        worst = max(b["p99_us_per_row"] for b in metrics["latency"]["batches"].values())
        checks.append(("batch_row_p99_us", worst, "<=", gates.max_batch_row_p99_us, gates.max_batch_row_p99_us, None))
    for name in ("roc_auc", "pr_auc"):
        limit = (
            None
            if gates.max_auc_drop is None or champion.get(name) is None
            else round(champion[name] - gates.max_auc_drop, 5)
        )
        checks.append(
            (f"{name}_vs_champion", metrics.get(name), ">=", gates.max_auc_drop, limit, no_champion or no_labels)
        )
    contamination = metrics.get("expected_contamination", 0.0)
    flagged_limit = (
        None if gates.max_flagged_rate_ratio is None else round(gates.max_flagged_rate_ratio * contamination, 5)
    )
    checks.append(
        ("flagged_rate", metrics.get("flagged_rate"), "<=", gates.max_flagged_rate_ratio, flagged_limit, for_unlabelled)
    )
    # A champion that flags more than twice what the flagged-rate gate allows on these rows,
    # where the challenger keeps within it, no longer fits them (the machines moved: what a
    # drift alert retrains on); a shift away from its scores is then the repair, not a fault.
    champion_storms = (
        f"the champion flags {champion['flagged_rate']:.1%} of these rows, more than twice the "
        f"{flagged_limit:.1%} the flagged-rate gate allows, and this model keeps within it: the champion no "
        "longer fits these rows"
        if flagged_limit is not None
        and champion.get("flagged_rate") is not None
        and champion["flagged_rate"] > 2 * flagged_limit
        and metrics.get("flagged_rate") is not None
        and metrics["flagged_rate"] <= flagged_limit
        else None
    )
    checks.append(
        (
            "score_psi_vs_champion",
            champion.get("score_psi"),
            "<=",
            gates.max_score_psi,
            gates.max_score_psi,
            no_champion or for_unlabelled or champion.get("score_psi_not_comparable") or champion_storms,
        )
    )
    results = []
    for name, value, op, configured, limit, skipped in checks:
        if configured is None:
            continue
        if skipped:
            results.append(
                {"gate": name, "value": value, "op": op, "threshold": limit, "passed": True, "skipped": skipped}
            )
            continue
        passed = value >= limit if op == ">=" else value <= limit
        results.append({"gate": name, "value": value, "op": op, "threshold": limit, "passed": bool(passed)})
    return results


def raw_tree_share(metadata: dict) -> float:
    """The share of trees grown on the raw metrics alone, as grown (metadata's "forest");
    models written before it was recorded: the share asked for, where a window gave raw metrics."""
    forest = metadata.get("forest")
    if forest:
        return round(forest["raw_metric_trees"] / forest["trees"], 4)
    window = (metadata.get("feature_transform") or {}).get("window")
    return (metadata.get("params") or {}).get("raw_tree_share", 0.0) if window else 0.0


def detector_differences(champion: LoadedModel, challenger: LoadedModel) -> list[str]:
    """Settings that put two models' anomaly scores on different scales (rows per tree,
    features per tree, time-series features and the trees grown on raw metrics alone, the
    metric basis, the reconstruction error added, score smoothing), as 'name: old -> new'."""

    def settings(model: LoadedModel) -> dict:
        params = model.metadata.get("params", {})
        return {
            "max_samples": params.get("max_samples", "auto"),
            "max_features": params.get("max_features", 1.0),
            "feature_window_rows": model.transform.window,
            "window_columns": ",".join(model.transform.columns) if model.transform.window else None,
            "raw_tree_share": raw_tree_share(model.metadata),
            "metric_basis": "raw" if model.transform.basis is None else "principal",
            "reconstruction_variance": model.reconstruction.variance if model.reconstruction is not None else 0.0,
            "score_smoothing_rows": model.smoothing,
        }

    old, new = settings(champion), settings(challenger)
    return [f"{k}: {old[k]} -> {new[k]}" for k in old if old[k] != new[k]]


def champion_metrics(
    champion: LoadedModel | None,
    dataset: Dataset,
    challenger_scores: np.ndarray,
    labelled: bool,
    note: str | None = None,
    challenger: LoadedModel | None = None,
) -> dict:
    """The champion scored on the same rows: its accuracy (with labels), flagged rate and
    the PSI of the challenger's scores against its scores. The PSI is marked not comparable
    when the two detectors score on different scales (``detector_differences``)."""
    from anomaly_mlops.steps.champion import psi

    if champion is None:
        return {"compared": False, "note": note or "no champion"}
    if champion.schema.features != dataset.schema.features:
        return {
            "compared": False,
            "note": f"the champion ({champion.metadata.get('created_at')}) has another "
            "feature schema; nothing to compare",
        }
    predictions, scores = champion.score(dataset.X, dataset.entities)
    result = {
        "compared": True,
        "created_at": champion.metadata.get("created_at"),
        "provenance": champion.metadata.get("provenance"),
        "flagged_rate": round(float(np.mean(predictions == ANOMALY)), 5),
        "score_psi": round(psi(scores, challenger_scores), 5),
    }
    differences = detector_differences(champion, challenger) if challenger is not None else []
    if differences:
        result["score_psi_not_comparable"] = (
            f"the champion's detector differs ({'; '.join(differences)}): its scores are on another scale"
        )
    if labelled:
        accuracy, _, _ = accuracy_metrics(dataset.y, scores, predictions)
        result.update({k: accuracy[k] for k in ("roc_auc", "pr_auc", "f1")})
    return result


def validate(
    model_dir: str | os.PathLike,
    holdout: Dataset | str,
    out_dir: str | os.PathLike,
    gates: Gates | None = None,
    latency: LatencyPlan | None = None,
    champion: LoadedModel | None = None,
    champion_note: str | None = None,
    runtime: str = "",
) -> ValidationResult:
    """Measure, gate and report. Writes metrics.json, report.html and the PNG figures.

    A holdout without labels (or with one class only) is validated on what can be
    measured without them (flagged rate, score shift from the champion, latency), and the
    report says so. ``champion`` (see champion.py) is scored on the same rows. ``runtime``,
    the KServe runtime that will serve the release (deploy --runtime), refuses a model it
    cannot serve here, before anything is measured or published (ConfigError)."""
    gates = gates or Gates()
    latency = latency or LatencyPlan()
    model = load_model_dir(model_dir)  # checksums verified before its metadata is trusted
    if runtime:
        from anomaly_mlops.model.artifacts import check_runtime_serves

        check_runtime_serves(runtime, model_dir)
    dataset = holdout if isinstance(holdout, Dataset) else load_dataset(holdout, model.schema)
    if dataset.schema.features != model.schema.features:
        raise DataError(
            f"holdout columns {list(dataset.schema.features)} differ from the model's schema {list(model.schema.features)}"
        )
    if dataset.n_rows < MIN_SPLIT_ROWS:  # a flagged rate or an accuracy of a row or two gates nothing
        raise DataError(f"validate needs at least {MIN_SPLIT_ROWS} holdout rows, got {dataset.n_rows}")
    if model.metadata.get("engine_features") == "engine fallbacks":
        from anomaly_mlops.sources.self_healing import engine_view

        dataset, _ = engine_view(dataset, scoped_copies=False)  # measured on what the engine sends
    labelled = dataset.y is not None and 0 < int(dataset.y.sum()) < dataset.n_rows
    log.info("scoring %d holdout rows (%s)", dataset.n_rows, "labelled" if labelled else "no labels")
    predictions, scores = model.score(dataset.X, dataset.entities)
    if labelled:
        metrics, roc, confusion = accuracy_metrics(dataset.y, scores, predictions)
    else:
        why = "no labels" if dataset.y is None else f"labels of one class only ({int(dataset.y.sum())} anomalous)"
        log.warning(
            "the holdout has %s: accuracy is not measured; gating on flagged rate, score shift and latency", why
        )
        metrics, roc, confusion = (
            {
                "roc_auc": None,
                "pr_auc": None,
                "precision": None,
                "recall": None,
                "f1": None,
                "holdout_rows": dataset.n_rows,
                "labels": why,
            },
            {},
            [],
        )
    metrics["flagged_rate"] = round(float(np.mean(predictions == ANOMALY)), 5)
    metrics["expected_contamination"] = float(model.metadata.get("params", {}).get("contamination", 0.02))
    ranges = model.metadata.get("training_ranges")
    metrics["outside_training_range"] = (
        outside_training_range(dataset.X, ranges, model.schema.features) if ranges else None
    )
    metrics["champion"] = champion_metrics(champion, dataset, scores, labelled, champion_note, model)
    metrics["threshold"] = model.threshold
    metrics["feature_window"] = model.transform.window
    metrics["feature_window_minutes"] = model.metadata.get("feature_transform", {}).get("window_minutes")
    metrics["score_smoothing_rows"] = model.smoothing
    metrics["device"] = describe_device()
    metrics["latency"], single = measure_latency(model, dataset.X, latency)
    from anomaly_mlops.model.gpu_scoring import measure_gpu_path

    features = model.transform.apply_by_entity(dataset.X, dataset.entities)
    metrics["latency"]["gpu"] = measure_gpu_path(model.fast, features, model.forest_scores(features))
    if metrics["latency"]["gpu"]["measured"]:
        log.info("GPU path on %s: %s", metrics["latency"]["gpu"]["device_name"], metrics["latency"]["gpu"]["batches"])
    else:
        log.info("GPU path not measured: %s", metrics["latency"]["gpu"]["reason"])
    gate_results = evaluate_gates(metrics, gates)
    passed = all(g["passed"] for g in gate_results)
    if labelled:
        log.info(
            "ROC-AUC %.4f, PR-AUC %.4f, F1 %.4f at threshold %.4f; gates %s",
            metrics["roc_auc"],
            metrics["pr_auc"],
            metrics["f1"],
            model.threshold,
            "PASSED" if passed else "FAILED",
        )
    else:
        log.info(
            "flagged %.2f%% of rows (contamination %.2f%%); gates %s",
            100 * metrics["flagged_rate"],
            100 * metrics["expected_contamination"],
            "PASSED" if passed else "FAILED",
        )
    for g in gate_results:
        if not g["passed"]:
            log.warning("gate %s failed: %s", g["gate"], describe_gate_failure(g))
    _log_outside_training_range(metrics["outside_training_range"], gate_results)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = _figures(dataset.y if labelled else None, scores, model.threshold, roc, metrics, single, out)
    from anomaly_mlops.model.artifacts import MANIFEST_FILE
    from anomaly_mlops.store.releases import default_version

    manifest_sha = hashlib.sha256((Path(model_dir) / MANIFEST_FILE).read_bytes()).hexdigest()
    document = {
        "model_dir": str(model_dir),
        "model": {
            "version": default_version(Path(model_dir)),
            "manifest_sha256": manifest_sha,
            "provenance": model.metadata.get("provenance"),
        },
        "holdout": {"source": dataset.source, "sha256": dataset.sha256},
        "metrics": metrics,
        "gates": gate_results,
        "gate_passed": passed,
        "gate_config": asdict(gates),
        "roc_curve": roc,
        "confusion_matrix": {"labels": ["normal", "anomaly"], "matrix": confusion},
    }
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(document, indent=2) + "\n")
    report_path = out / "report.html"
    report_path.write_text(render_report(document, model.metadata, figures))
    return ValidationResult(metrics, gate_results, passed, out, report_path, metrics_path, roc, confusion, single)


OUTSIDE_RANGE_HINT = (
    "a level that moved since the training rows reads as an anomaly to the forest: train on more recent rows "
    "(a shorter lookback, or a fresh retraining) before blaming the detector"
)


def outside_rows_explain_flags(found: dict | None, gate_results: list[dict]) -> bool:
    """The flagged-rate gate failed, and the rows outside the training range alone are more
    than it allows flagged: moved levels may well be what it caught."""
    return bool(found) and any(
        g["gate"] == "flagged_rate" and not g["passed"] and found["rows_share"] > g["threshold"] for g in gate_results
    )


def _log_outside_training_range(found: dict | None, gate_results: list[dict]) -> None:
    """Name the metrics that left their training range; as a warning that says what it
    likely means when the flagged-rate gate failed and those rows alone exceed its limit."""
    if found is None:
        log.info("this model does not record its training ranges (trained before they were recorded)")
        return
    if not found["rows_share"]:
        return
    if outside_rows_explain_flags(found, gate_results):
        log.warning("holdout rows outside the training range: %s; %s", describe_outside(found), OUTSIDE_RANGE_HINT)
    else:
        log.info("holdout rows outside the training range: %s", describe_outside(found))


def describe_gate_failure(gate: dict) -> str:
    """'0.95541 < required 0.99': the value, how it misses, and the requirement."""
    miss = "<" if gate["op"] == ">=" else ">"
    return f"{gate['gate']} {gate['value']} {miss} required {gate['threshold']}"


def _figures(y, scores, threshold, roc, metrics, single_ms, out: Path) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figures: dict[str, bytes] = {}

    def save(fig, name: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        figures[name] = buffer.getvalue()
        (out / name).write_bytes(figures[name])

    if y is not None:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.plot(roc["fpr"], roc["tpr"], lw=2, label=f"ROC-AUC {metrics['roc_auc']:.3f}")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve (holdout)")
        ax.legend(loc="lower right")
        save(fig, "roc.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(scores.min(), scores.max(), 60)
    if y is None:
        ax.hist(scores, bins=bins, alpha=0.7, label="all rows (no labels)", density=True)
    else:
        ax.hist(scores[y == 0], bins=bins, alpha=0.6, label="normal", density=True)
        ax.hist(scores[y == 1], bins=bins, alpha=0.6, label="anomalous (label)", density=True)
    ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="anomaly score", ylabel="density", title="Score distribution (holdout)")
    ax.legend()
    save(fig, "scores.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    low, high = max(float(single_ms.min()), 1e-4), max(float(single_ms.max()), 2e-4)
    ax.hist(single_ms, bins=np.logspace(np.log10(low), np.log10(high * 1.01), 50), color="tab:purple")
    ax.set_xscale("log")  # a long tail on a linear axis hides the body
    # Five plain labels: within one decade matplotlib's log labels (1.1x10^-1 ...) overlap.
    ticks = np.geomspace(low, high, 5)
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    for q, style in (("p50", ":"), ("p99", "--")):
        ax.axvline(metrics["latency"]["single_row_ms"][q], color="black", ls=style, label=q)
    ax.set(xlabel="milliseconds", ylabel="calls", title="Single-row scoring latency")
    ax.legend()
    save(fig, "latency.png")
    return figures


def describe_detector(metadata: dict) -> str:
    """The detector in one line, from its metadata.json (the report says what it validated)."""
    params = metadata.get("params") or {}
    transform = metadata.get("feature_transform") or {}
    parts = [f"{params.get('n_estimators', '?')} trees of {params.get('max_samples', 'auto')} rows"]
    parsed = FeatureTransform.from_dict(transform)
    rotated = parsed.basis is not None
    if rotated:
        parts.append("metrics on their principal axes")
    if parsed.window:
        columns = ", ".join(["value", *parsed.columns])
        parts.append(f"features over {transform.get('window_minutes')} min ({columns})")
        share = raw_tree_share(metadata)
        if share:
            parts.append(f"{share:.0%} of the trees on the {'components' if rotated else 'raw metrics'} alone")
    elif not rotated:
        parts.append("raw metrics")
    second = metadata.get("reconstruction_score")
    if second:
        parts.append(f"plus the reconstruction error off the axes of {second['variance']:.0%} of the variance")
    smoothing = (metadata.get("score_smoothing") or {}).get("minutes")
    if smoothing:
        parts.append(f"scores averaged over {smoothing} min")
    parts.append(f"threshold: {(metadata.get('threshold_method') or {}).get('method', 'quantile')}")
    left_out = metadata.get("labelled_anomalous_rows_left_out")
    if left_out:
        parts.append(f"{left_out} training rows labelled anomalous left out")
    return ", ".join(parts)


def render_report(document: dict, model_metadata: dict, figures: dict[str, bytes]) -> str:
    m = document["metrics"]
    e = html.escape
    rows = "".join(
        f"<tr class='{'skip' if g.get('skipped') else 'ok' if g['passed'] else 'bad'}'><td>{e(g['gate'])}</td>"
        f"<td>{'-' if g['value'] is None else g['value']}</td>"
        f"<td>{'-' if g['threshold'] is None else e(g['op']) + ' ' + str(g['threshold'])}</td>"
        f"<td>{e('skipped: ' + g['skipped']) if g.get('skipped') else 'pass' if g['passed'] else 'FAIL'}</td></tr>"
        for g in document["gates"]
    )
    champion = m.get("champion") or {}
    if champion.get("compared"):

        def cell(key):
            return f"<td>{m.get(key) if m.get(key) is not None else '-'}</td><td>{champion.get(key, '-')}</td>"

        champion_html = (
            f"<table><tr><th></th><th>challenger (this model)</th><th>champion ({e(str(champion.get('created_at')))})</th></tr>"
            + "".join(
                f"<tr><th>{label}</th>{cell(key)}</tr>"
                for label, key in (
                    ("ROC-AUC", "roc_auc"),
                    ("PR-AUC", "pr_auc"),
                    ("F1", "f1"),
                    ("flagged rate", "flagged_rate"),
                )
            )
            + f"<tr><th>score PSI vs champion</th><td colspan=2>{champion['score_psi']}</td></tr></table>"
        )
    else:
        champion_html = f"<p>No comparison: {e(champion.get('note', 'no champion'))}.</p>"
    lat = m["latency"]
    batch_rows = "".join(
        f"<tr><td>{size}</td><td>{b['p50']}</td><td>{b['p95']}</td><td>{b['p99']}</td><td>{b['rows_per_second']}</td></tr>"
        for size, b in lat["batches"].items()
    )
    images = "".join(
        f"<figure><img alt='{e(name)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'/></figure>"
        for name, data in figures.items()
    )
    labelled = m.get("roc_auc") is not None
    if labelled:
        (tn, fp), (fn, tp) = document["confusion_matrix"]["matrix"]
        accuracy_html = f"""<table>
<tr><th>ROC-AUC</th><th>PR-AUC</th><th>precision</th><th>recall</th><th>F1</th><th>flagged rows</th></tr>
<tr><td>{m["roc_auc"]}</td><td>{m["pr_auc"]}</td><td>{m["precision"]}</td><td>{m["recall"]}</td><td>{m["f1"]}</td><td>{m["flagged_rows"]}</td></tr></table>
<table><tr><th>actual \\ predicted</th><th>predicted normal</th><th>predicted anomaly</th></tr>
<tr><th>actual normal</th><td>{tn}</td><td>{fp}</td></tr><tr><th>actual anomaly</th><td>{fn}</td><td>{tp}</td></tr></table>"""
        holdout_note = f"{m['holdout_anomalies']} labelled anomalous"
    else:
        accuracy_html = (
            f"<p><b>Not measured: the holdout has {e(m.get('labels', 'no labels'))}.</b> The gates use "
            f"what can be measured without labels: {100 * m['flagged_rate']:.2f}% of rows flagged "
            f"(contamination {100 * m['expected_contamination']:.2f}%), the score shift from the "
            f"champion, and latency.</p>"
        )
        holdout_note = "no labels"
    verdict = "PASSED" if document["gate_passed"] else "FAILED"
    device = m["device"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Anomaly detector validation: {verdict}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} th{{background:#f4f4f4}}
tr.bad td{{background:#fde2e2}} tr.ok td{{background:#e6f4ea}} tr.skip td{{background:#f1f1f1;color:#555}} figure{{display:inline-block;margin:0 1em 1em 0}}
.verdict{{font-size:1.4em;font-weight:bold;color:{"#137333" if document["gate_passed"] else "#b3261e"}}}
</style></head><body>
<h1>Anomaly detector validation</h1>
<p class="verdict">Release gate {verdict}</p>
<p>Model {e(document["model"]["version"])} (manifest sha256 {document["model"]["manifest_sha256"][:16]}…{
        e(", commit " + str((document["model"].get("provenance") or {}).get("git_commit"))[:12])
        if (document["model"].get("provenance") or {}).get("git_commit")
        else ""
    }), trained {e(str(model_metadata.get("created_at")))} on
{model_metadata.get("data", {}).get("rows")} rows; holdout {e(document["holdout"]["source"])}
({m["holdout_rows"]} rows, {holdout_note}).
Detector: {e(describe_detector(model_metadata))}.
Threshold {m["threshold"]:.5f} was fixed from training scores, not from holdout labels.</p>
<h2>Gates</h2><table><tr><th>gate</th><th>value</th><th>required</th><th>result</th></tr>{rows}</table>
<h2>Accuracy</h2>{accuracy_html}
<h2>Holdout against the training rows</h2>{_outside_section(m.get("outside_training_range"), document["gates"])}
<h2>Challenger and champion</h2>{champion_html}
<h2>Latency</h2>
<p>Device: {e(device["cpu"])} ({device["cpu_count"]} CPUs), scoring on {e(device["scoring_device"])}; {
        e(device["gpu_note"])
    }.</p>
<table><tr><th>single row (ms)</th><th>p50</th><th>p95</th><th>p99</th><th>max</th></tr>
<tr><td>{lat["single_row_ms"]["n"]} calls</td><td>{lat["single_row_ms"]["p50"]}</td><td>{
        lat["single_row_ms"]["p95"]
    }</td>
<td>{lat["single_row_ms"]["p99"]}</td><td>{lat["single_row_ms"]["max"]}</td></tr></table>
<table><tr><th>batch rows</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>rows/s</th></tr>{batch_rows}</table>
<h3>GPU scoring path</h3>{_gpu_section(lat.get("gpu") or {{"measured": False, "reason": "not run"}})}
<h2>Figures</h2>{images}
</body></html>
"""


def _outside_section(found: dict | None, gate_results: list[dict]) -> str:
    e = html.escape
    if found is None:
        return "<p>Not recorded: this model's train step did not record each metric's range.</p>"
    if not found["rows_share"]:
        return "<p>Every holdout metric lies within the range the forest was fitted on.</p>"
    rows = "".join(
        f"<tr><td>{e(name)}</td><td>{100 * share:.1f}%</td></tr>"
        for name, share in list(found["metrics"].items())[:TOP_METRICS]
    )
    more = len(found["metrics"]) - TOP_METRICS
    hint = (
        f" The flagged-rate gate failed: {e(OUTSIDE_RANGE_HINT)}."
        if outside_rows_explain_flags(found, gate_results)
        else ""
    )
    return (
        f"<p>{100 * found['rows_share']:.1f}% of the holdout rows hold a metric outside the range the forest was "
        f"fitted on.{hint}</p>"
        f"<table><tr><th>metric</th><th>holdout rows outside its training range</th></tr>{rows}</table>"
        + (f"<p>and {more} more metrics (metrics.json).</p>" if more > 0 else "")
    )


def _gpu_section(gpu: dict) -> str:
    if not gpu.get("measured"):
        return f"<p>Not measured: {html.escape(gpu.get('reason', ''))}.</p>"
    rows = "".join(
        f"<tr><td>{size}</td><td>{b['p50']}</td><td>{b['p99']}</td><td>{b['rows_per_second']}</td></tr>"
        for size, b in gpu["batches"].items()
    )
    return (
        f"<p>Flattened forest in torch on {html.escape(gpu['device_name'])}; max |score - CPU| = "
        f"{gpu['max_abs_diff_vs_cpu']:.3g}. Times include host-device copies.</p>"
        f"<table><tr><th>batch rows</th><th>p50 ms</th><th>p99 ms</th><th>rows/s</th></tr>{rows}</table>"
    )
