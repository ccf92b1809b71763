"""A model card per released version (``anomaly-mlops model-card``): what the model is for,
what it was trained on, how it measured against its gates, its known limits, where it came
from and whether it is approved, as Markdown and HTML.

Cards live beside the version, never in it: ``<model>/.cards/<version>/model-card.{md,html}``
(and ``model-card.json``, its sections, from which ``refresh_approval`` renders it again when
the approval is decided) in the bucket. A version's prefix holds exactly the files its manifest lists (KServe's storage
initializer downloads the whole prefix and the servers refuse extra files), and a card may be
written again when the approval changes, while a released version never is. The Model
Registry links to it (the version's ``model_card`` property, steps/registry.py).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from anomaly_mlops.errors import ConfigError
from anomaly_mlops.model.artifacts import MANIFEST_FILE, METADATA_FILE
from anomaly_mlops.redact import redact

CARDS_FOLDER = ".cards"
APPROVAL_STATES = ("not required", "pending", "approved", "rejected", "timed-out")
APPROVAL_HEADING = "Approval"
INTENDED_USE = (
    "Flags anomalous rows of operational metrics (CPU, memory, disk, network, restarts) of the "
    "nodes and pods of an OpenShift cluster, for the Self-Healing Platform's coordination engine "
    "and for people watching those machines. Answers each row with a prediction (-1 anomalous, "
    "1 normal) and an anomaly score. Not for other kinds of data, and not a root-cause analysis."
)


@dataclass
class ModelCard:
    markdown: str
    html: str
    title: str = ""
    sections: list | None = None

    @classmethod
    def render(cls, title: str, sections: list) -> ModelCard:
        return cls(_markdown(title, sections), _html(title, sections), title, sections)


def approval_section(approval: str, detail: str = "") -> tuple[str, list]:
    """The card's approval section: the state, and who decided, when and through what."""
    if approval not in APPROVAL_STATES:
        raise ConfigError(f"--approval must be one of {', '.join(APPROVAL_STATES)}, got {approval!r}")
    lines = [f"Status: **{approval}**."]
    if approval == "pending":
        lines.append(
            "Promotion waits for the approvers; the decision is recorded on the version in the Model Registry."
        )
    if detail:
        lines.append(detail)
    return (APPROVAL_HEADING, lines)


def summarize_validation(document: dict | None) -> dict:
    """validate's metrics.json (or an already flat dict of metrics) as {metric: value, ...,
    "passed": bool, "gates": [...]}: what the registry and the model card show."""
    if not document:
        return {}
    flat = dict(document.get("metrics") or document)
    passed = document.get("gate_passed", document.get("passed"))
    if passed is not None:
        flat["passed"] = bool(passed)
    if document.get("gates"):
        flat["gates"] = document["gates"]
    return flat


def validation_from_logged(logged: dict | None, gates: list | None = None) -> dict:
    """validate's KFP Metrics metadata (and its report's gates) as summarize_validation's dict."""
    logged = dict(logged or {})
    measured: dict = {k: logged[k] for k in ("roc_auc", "pr_auc", "f1", "flagged_rate") if k in logged}
    if "gate_passed" in logged:
        measured["passed"] = bool(logged["gate_passed"])
    if gates:
        measured["gates"] = gates
    return measured


def publish_release_card(
    model_dir: str | Path, model_name: str, version: str, validation: dict | None, approval: str,
    settings=None, root_prefix: str = "",
) -> str:  # fmt: skip
    """Build the released version's card and write it beside the version; its s3:// URI. The
    release itself is already safe when this fails: `anomaly-mlops model-card --upload` redoes it."""
    card = build_card(model_dir, version, validation, approval)
    return publish_card(card, model_name, version, settings, root_prefix)


def card_key(model_name: str, version: str, root_prefix: str = "") -> str:
    """``[<root>/]<model>/.cards/<version>/``, beside the version's prefix, outside it."""
    from anomaly_mlops.store.releases import version_prefix

    version_prefix(model_name, version, root_prefix)  # the release's naming rules
    root = f"{root_prefix.strip('/')}/" if root_prefix.strip("/") else ""
    return f"{root}{model_name}/{CARDS_FOLDER}/{version}/"


def _second_score(reconstruction: dict | None) -> str:
    if not reconstruction:
        return "none (the forest's score alone)"
    return (
        f"reconstruction error from the axes of {100 * reconstruction['variance']:.0f}% of the variance "
        f"({len(reconstruction['axes'][0])} of {len(reconstruction['axes'])}), weight {reconstruction['weight']:.4g}"
    )


def build_card(
    model_dir: str | Path, version: str, validation: dict | None = None, approval: str = "not required"
) -> ModelCard:
    """The card of the model at ``model_dir`` (released as ``version``), with validate's
    metrics.json when given."""
    import hashlib

    from anomaly_mlops.store.releases import check_name_segment

    check_name_segment("version", version)  # a released version's name, as the card says it is
    if approval not in APPROVAL_STATES:
        raise ConfigError(f"--approval must be one of {', '.join(APPROVAL_STATES)}, got {approval!r}")
    validation = summarize_validation(validation)
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    transform = meta.get("feature_transform") or {}
    smoothing = meta.get("score_smoothing") or {}
    data = meta.get("data") or {}
    provenance = meta.get("provenance") or {}
    method = meta.get("threshold_method") or {}
    window = transform.get("window_minutes") or 0
    sections: list[tuple[str, list]] = []
    sections.append(("Intended use", [INTENDED_USE]))
    sections.append(
        (
            "Model",
            [
                [
                    ("type", f"{meta.get('model_type')} ({meta['params'].get('n_estimators')} trees)"),
                    ("features", ", ".join(meta["schema"]["features"])),
                    ("feature window", f"{window} min ({', '.join(transform.get('columns') or [])})" if window else "none"),
                    ("metric basis", (transform.get("basis") or {}).get("kind", "raw metrics")),
                    ("second score", _second_score(meta.get("reconstruction_score"))),
                    ("score smoothing", f"{smoothing.get('minutes', 0)} min"),
                    ("threshold", f"{meta['threshold']:.5f} ({method.get('method', '?')}, "
                                  f"{100 * float(method.get('calibration_flagged_share', 0)):.1f}% of calibration rows above)"),
                ]
            ],
        )
    )  # fmt: skip
    sections.append(
        (
            "Data",
            [
                [
                    ("source", redact(str(data.get("source", "?")))),
                    ("rows", str(data.get("rows", "?"))),
                    ("sha256", str(data.get("sha256", "?"))),
                ]
            ],
        )
    )
    if validation:
        rows = [
            (k, f"{validation[k]:.4f}")
            for k in ("roc_auc", "pr_auc", "f1", "flagged_rate")
            if isinstance(validation.get(k), int | float)
        ]
        gates = [(g["gate"], _gate_outcome(g)) for g in validation.get("gates") or []]
        blocks: list = [rows or [("metrics", "none recorded")]]
        if gates:
            blocks += ["Release gates:", gates]
        sections.append(("Measured on the holdout", blocks))
    else:
        sections.append(("Measured on the holdout", ["Not given: build the card with validate's metrics.json."]))
    limits = [
        "The threshold is set to flag about the calibrated share of ordinary rows; a machine that moves "
        "to a new normal is flagged row after row until a retraining (the drift alert says so once).",
        "Rows whose metrics leave the ranges the model was fitted on are counted on /metrics; scores "
        "there are less reliable.",
    ]
    if window or int(smoothing.get("rows", 1)) > 1:
        limits.insert(
            0,
            "Windowed: each row is scored with its entity's earlier rows. Clients send an entity; one replica "
            "keeps history in process, several need a shared store (--history-url). The upstream sklearn "
            "runtime cannot serve it.",
        )
    sections.append(("Known limits", [limits]))
    manifest = hashlib.sha256((model_dir / MANIFEST_FILE).read_bytes()).hexdigest()
    sections.append(
        (
            "Provenance",
            [
                [
                    ("version", version),
                    ("trained at", str(meta.get("created_at", "?"))),
                    ("git commit", str(provenance.get("git_commit") or "not recorded")),
                    ("run id", str(provenance.get("run_id") or "not recorded")),
                    ("manifest sha256", manifest),
                    (
                        "libraries",
                        ", ".join(f"{k} {v}" for k, v in sorted((meta.get("library_versions") or {}).items())),
                    ),
                ]
            ],
        )
    )
    sections.append(approval_section(approval))
    return ModelCard.render(f"Model card: anomaly detector {version}", sections)


def _gate_outcome(gate: dict) -> str:
    if gate.get("skipped"):
        return f"skipped ({gate['skipped']})"
    return (
        f"{gate.get('value')} {gate.get('op')} {gate.get('threshold')}: {'passed' if gate.get('passed') else 'FAILED'}"
    )


def _markdown(title: str, sections) -> str:
    def text(value) -> str:
        """A value as Markdown text: a renderer that passes HTML through gets no tag from a
        value (a '<' opening one is escaped; '<=' stays as it reads)."""
        return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", str(value))

    out = [f"# {title}", ""]
    for heading, blocks in sections:
        out += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, str):
                out += [block, ""]
            elif block and isinstance(block[0], tuple):
                out += ["| | |", "|---|---|"] + [f"| {k} | {text(v).replace('|', '/')} |" for k, v in block] + [""]
            else:
                out += [f"- {text(item)}" for item in block] + [""]
    return "\n".join(out)


def _html(title: str, sections) -> str:
    e = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:.2em .6em;"
           "border-bottom:1px solid #ddd;text-align:left;vertical-align:top}</style></head><body>",
           f"<h1>{e(title)}</h1>"]  # fmt: skip
    for heading, blocks in sections:
        out.append(f"<h2>{e(heading)}</h2>")
        for block in blocks:
            if isinstance(block, str):
                out.append(f"<p>{e(block).replace('**', '')}</p>")
            elif block and isinstance(block[0], tuple):
                out.append(
                    "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in block) + "</table>"
                )
            else:
                out.append("<ul>" + "".join(f"<li>{e(item)}</li>" for item in block) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def publish_card(card: ModelCard, model_name: str, version: str, settings=None, root_prefix: str = "") -> str:
    """Write the card beside the released version (over an earlier card of it); its s3:// URI."""
    from anomaly_mlops.store.s3 import S3Settings, describe_client_error

    settings = settings or S3Settings.from_env()
    prefix = card_key(model_name, version, root_prefix)
    client = settings.client()
    files = [("model-card.md", card.markdown, "text/markdown"), ("model-card.html", card.html, "text/html")]
    if card.sections is not None:
        files.append(
            ("model-card.json", json.dumps({"title": card.title, "sections": card.sections}), "application/json")
        )
    for name, body, kind in files:
        try:
            client.put_object(Bucket=settings.bucket, Key=prefix + name, Body=body.encode(), ContentType=kind)
        except Exception as exc:
            raise describe_client_error(
                exc, f"write the model card s3://{settings.bucket}/{prefix}{name}", settings
            ) from exc
    return f"s3://{settings.bucket}/{prefix}model-card.html"


def refresh_approval(
    model_name: str, version: str, approval: str, detail: str = "", settings=None, root_prefix: str = ""
) -> str | None:
    """Render the version's card again with the approval decided; None when the version has no
    card written by this step (its sections are read back from model-card.json)."""
    from anomaly_mlops.store.s3 import S3Settings, describe_client_error, read_small_object

    settings = settings or S3Settings.from_env()
    key = card_key(model_name, version, root_prefix) + "model-card.json"
    try:
        body = read_small_object(settings.client(), settings.bucket, key)
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise describe_client_error(exc, f"read the model card s3://{settings.bucket}/{key}", settings) from exc
    try:
        stored = json.loads(body)
        sections = [(heading, blocks) for heading, blocks in stored["sections"] if heading != APPROVAL_HEADING]
        title = str(stored["title"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"s3://{settings.bucket}/{key} is not a model card's sections ({exc})") from exc
    sections = [(h, _rows(b)) for h, b in sections]
    sections.append(approval_section(approval, detail))
    return publish_card(ModelCard.render(title, sections), model_name, version, settings, root_prefix)


def _rows(blocks: list) -> list:
    """JSON turns the tables' (key, value) tuples into lists: back to tuples, so they render as tables."""
    out = []
    for block in blocks:
        if isinstance(block, list) and block and all(isinstance(r, list) and len(r) == 2 for r in block):
            out.append([tuple(r) for r in block])
        else:
            out.append(block)
    return out
