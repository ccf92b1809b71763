"""The CLI as containers and Tekton run it: subprocesses, exit codes, JSON on stdout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "anomaly_mlops.adapters.cli"]


def run(*args, env=None, check=True):
    result = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=240
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stderr[-3000:]}")
    return result


def test_steps_chain_through_the_cli(tmp_path, s3_env):
    data = json.loads(run("data", "--out", str(tmp_path / "data"), "--rows", "4000", "--seed", "3").stdout)
    assert data["train_rows"] == 2800 and data["holdout_anomalies"] > 0
    trained = json.loads(
        run("train", "--data", data["train"], "--out", str(tmp_path / "model"), "--n-estimators", "30").stdout
    )
    assert Path(trained["model_dir"], "MANIFEST.sha256").exists()
    validated = json.loads(
        run(
            "validate",
            "--model",
            trained["model_dir"],
            "--holdout",
            data["holdout"],
            "--out",
            str(tmp_path / "val"),
            "--latency-repeats",
            "20",
        ).stdout
    )
    assert validated["gate_passed"] is True and Path(validated["report"]).exists()
    published = json.loads(
        run(
            "publish", "--model", trained["model_dir"], "--model-name", "cli-model", "--version", "v1", env=s3_env
        ).stdout
    )
    assert published == {**published, "status": "published", "uri": f"s3://{s3_env['AWS_S3_BUCKET']}/cli-model/v1/"}
    again = json.loads(
        run(
            "publish", "--model", trained["model_dir"], "--model-name", "cli-model", "--version", "v1", env=s3_env
        ).stdout
    )
    assert again["status"] == "unchanged"
    downloaded = json.loads(
        run("download", "--uri", published["uri"], "--out", str(tmp_path / "dl"), env=s3_env).stdout
    )
    assert sorted(os.listdir(downloaded["model_dir"])) == [
        "MANIFEST.sha256",
        "forest.npz",
        "metadata.json",
        "model.joblib",
        "model.skops",
    ]


def test_gate_failure_exits_3(tmp_path, model_dir, prepared):
    result = run(
        "validate",
        "--model",
        str(model_dir),
        "--holdout",
        str(prepared.holdout_path),
        "--out",
        str(tmp_path),
        "--latency-repeats",
        "10",
        "--min-roc-auc",
        "0.9999",
        check=False,
    )
    assert result.returncode == 3
    assert "release gate failed: roc_auc" in result.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["gate_passed"] is False
    # A negative threshold switches the gate off.
    ok = run(
        "validate",
        "--model",
        str(model_dir),
        "--holdout",
        str(prepared.holdout_path),
        "--out",
        str(tmp_path / "b"),
        "--latency-repeats",
        "10",
        "--min-roc-auc",
        "-1",
        "--min-pr-auc",
        "-1",
    )
    assert json.loads(ok.stdout)["gate_passed"] is True


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "--source", "/nonexistent/metrics.csv", "--out", "x"], "data file not found"),
        (["train", "--data", "/nonexistent.parquet", "--out", "x"], "data file not found"),
        (["validate", "--model", "/nonexistent", "--holdout", "h.csv", "--out", "x"], "model directory not found"),
        (["download", "--uri", "http://not-s3/x", "--out", "x"], "not an s3:// URI"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, tmp_path):
    result = run(*args, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_runs_from_the_source_tree_uninstalled():
    """PYTHONPATH=components with no install (a GPU node's own python, a debugging session):
    the steps start; submit, whose default pipeline ships with the installed package, asks for
    --package. -S keeps the installed (editable) package out of sight."""
    components = Path(__file__).resolve().parents[1] / "components"
    code = f"import sys; sys.path.insert(0, {str(components)!r}); from anomaly_mlops.adapters.cli import main; main(sys.argv[1:])"
    steps = subprocess.run([sys.executable, "-S", "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert steps.returncode == 0 and "validate" in steps.stdout, steps.stderr
    submit = subprocess.run(
        [sys.executable, "-S", "-c", code, "submit", "--host", "https://dsp"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submit.returncode == 2 and "the following arguments are required: --package" in submit.stderr


def test_publish_without_the_data_connection_names_the_missing_keys(model_dir):
    env = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_S3_BUCKET")}
    result = run("publish", "--model", str(model_dir), "--model-name", "m", env=env, check=False)
    assert result.returncode == 2
    assert "missing AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_S3_BUCKET" in result.stderr


@pytest.mark.slow
def test_run_local_end_to_end(tmp_path):
    """The README's main job, small: every step, real S3 protocol server, the real (lean) model server."""
    result = run("run", "--local", "--workdir", str(tmp_path), "--rows", "10080")
    summary = json.loads(result.stdout)
    assert summary["gate_passed"] is True
    assert summary["published_uri"].startswith("s3://models/anomaly-detector/v")
    assert summary["verify"]["passed"] is True
    run_dir = Path(summary["run_dir"])
    for produced in (
        "data/train.parquet",
        "model/MANIFEST.sha256",
        "validation/report.html",
        "verify/verify.json",
        "summary.json",
        "model-server.log",
    ):
        assert (run_dir / produced).exists(), produced
    for step in ("[1/5] data", "[3/5] validate", "[5/5] serve"):
        assert step in result.stderr
    assert "local-embedded-secret" not in result.stderr + result.stdout
