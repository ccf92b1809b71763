"""The model card (steps/model_card.py, `anomaly-mlops model-card`): what it says of a released
version, its HTML escaped, and where it is kept: beside the version, never in it."""

from __future__ import annotations

import json
import uuid

import pytest
from test_train_validate import FAST_LATENCY

from anomaly_mlops.adapters.cli import main
from anomaly_mlops.errors import ConfigError
from anomaly_mlops.model.artifacts import METADATA_FILE, write_manifest
from anomaly_mlops.steps.model_card import build_card, card_key, publish_card
from anomaly_mlops.steps.validate import validate
from anomaly_mlops.store.releases import download_model, publish


@pytest.fixture(scope="module")
def validated(model_dir, prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("validation")
    result = validate(model_dir, str(prepared.holdout_path), out, latency=FAST_LATENCY)
    return json.loads(result.metrics_path.read_text())


def test_the_card_says_use_data_metrics_gates_limits_provenance_and_approval(model_dir, validated):
    card = build_card(model_dir, "v7", validated, approval="pending")
    text = card.markdown
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    assert "## Intended use" in text and "Self-Healing Platform" in text
    assert f"| roc_auc | {validated['metrics']['roc_auc']:.4f} |" in text
    gates = text.split("Release gates:")[1].split("## ")[0]
    for gate in validated["gates"]:
        shown = f"skipped ({gate['skipped']})" if gate.get("skipped") else ("passed" if gate["passed"] else "FAILED")
        assert shown in gates.split(f"| {gate['gate']} |")[1].split("\n")[0]
    assert ">= None" not in text and "None <=" not in text
    windowed = meta["feature_transform"].get("window") or meta["score_smoothing"].get("rows", 1) > 1
    assert ("Windowed: each row is scored with its entity's earlier rows" in text) == bool(windowed)
    assert str(meta["data"]["rows"]) in text and meta["created_at"] in text
    assert "Status: **pending**." in text
    assert "<h2>Measured on the holdout</h2>" in card.html and "**" not in card.html


def test_a_windowed_model_says_it_needs_entity_history(windowed):
    model, _ = windowed
    text = build_card(model.model_dir, "v1").markdown
    assert "Windowed: each row is scored with its entity's earlier rows" in text and "--history-url" in text


def test_html_is_escaped_and_credentials_redacted(copy_model):
    model = copy_model()
    meta = json.loads((model / METADATA_FILE).read_text())
    meta["data"]["source"] = "s3://user:secret@host/<script>alert(1)</script>.parquet"
    (model / METADATA_FILE).write_text(json.dumps(meta))
    write_manifest(model)
    card = build_card(model, "v1")
    assert "<script>" not in card.html and "&lt;script&gt;" in card.html
    assert "<script>" not in card.markdown and "&lt;script>" in card.markdown  # renderers may pass HTML
    with pytest.raises(ConfigError, match=r"version 'v<1>' is not allowed"):
        build_card(model, "v<1>")  # cards are of released versions, named as a release is
    assert "secret" not in card.markdown + card.html
    assert "Not given: build the card with validate's metrics.json." in card.markdown
    with pytest.raises(ConfigError, match="--approval must be one of"):
        build_card(model, "v1", approval="maybe")


def test_the_card_is_kept_beside_the_version_which_still_downloads_verified(model_dir, settings, raw, tmp_path):
    name = f"card-{uuid.uuid4().hex[:6]}"
    release = publish(model_dir, name, "v1", settings)
    uri = publish_card(build_card(model_dir, "v1"), name, "v1", settings)
    assert (
        uri == f"s3://{settings.bucket}/{name}/.cards/v1/model-card.html"
        and card_key(name, "v1") == f"{name}/.cards/v1/"
    )
    listed = {o["Key"] for o in raw.list_objects_v2(Bucket=settings.bucket, Prefix=f"{name}/v1/")["Contents"]}
    assert not [k for k in listed if "model-card" in k or ".cards" in k]
    download_model(release.uri, tmp_path / "dl", settings)  # verified: nothing extra in the version
    publish_card(build_card(model_dir, "v1", approval="approved"), name, "v1", settings)  # a card may change
    body = raw.get_object(Bucket=settings.bucket, Key=f"{name}/.cards/v1/model-card.md")["Body"].read().decode()
    assert "Status: **approved**." in body


def test_the_cli_writes_both_files(model_dir, validated, tmp_path, capsys):
    (tmp_path / "metrics.json").write_text(json.dumps(validated))
    code = main(["model-card", "--model-dir", str(model_dir), "--version", "v3", "--validation",
                 str(tmp_path / "metrics.json"), "--out", str(tmp_path / "card")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "card" / "model-card.md").read_text().startswith("# Model card: anomaly detector v3")
    assert (tmp_path / "card" / "model-card.html").read_text().startswith("<!doctype html>")


def test_a_decided_approval_renders_the_stored_card_again(model_dir, validated, settings, raw):
    from anomaly_mlops.errors import ConfigError
    from anomaly_mlops.steps.model_card import publish_release_card, refresh_approval

    name = f"card-{uuid.uuid4().hex[:6]}"
    assert refresh_approval(name, "v1", "approved", settings=settings) is None  # no card written: nothing to do
    publish_release_card(model_dir, name, "v1", validated, "pending", settings)
    before = raw.get_object(Bucket=settings.bucket, Key=f"{name}/.cards/v1/model-card.html")["Body"].read().decode()
    refresh_approval(name, "v1", "approved", "Decided by alice.", settings)
    after = raw.get_object(Bucket=settings.bucket, Key=f"{name}/.cards/v1/model-card.html")["Body"].read().decode()
    # Everything but the approval is as it was, tables included; the approval says who decided.
    assert before.split("<h2>Approval</h2>")[0] == after.split("<h2>Approval</h2>")[0]
    assert "<p>Status: approved.</p>" in after and "<p>Decided by alice.</p>" in after
    with pytest.raises(ConfigError, match="--approval must be one of"):
        refresh_approval(name, "v1", "maybe", settings=settings)
    raw.put_object(Bucket=settings.bucket, Key=f"{name}/.cards/v1/model-card.json", Body=b"[1, 2]")
    with pytest.raises(ConfigError, match="is not a model card's sections"):
        refresh_approval(name, "v1", "approved", settings=settings)
