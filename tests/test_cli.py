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
    card = (run_dir / "model-card.md").read_text()
    assert summary["model_card"] == str(run_dir / "model-card.html") and "| roc_auc | " in card
    for produced in (
        "data/train.parquet",
        "model/MANIFEST.sha256",
        "validation/report.html",
        "verify/verify.json",
        "summary.json",
        "model-server.log",
    ):
        assert (run_dir / produced).exists(), produced
    for step in ("[1/5] data", "[3/5] validate", "[5/5] serve from S3 with the lean model server"):
        assert step in result.stderr
    assert "KServe" not in result.stderr  # the lean server runs: the banner says so
    seconds = summary["seconds"]
    parts = sum(v for k, v in seconds.items() if k != "total")
    assert abs(parts - seconds["total"]) <= 0.05 * len(seconds), seconds  # rounding only
    assert {"start Python, import libraries", "start embedded S3", "stop embedded S3"} <= set(seconds)
    assert "local-embedded-secret" not in result.stderr + result.stdout


def test_every_flag_has_help_and_the_help_has_no_markup():
    import argparse

    from anomaly_mlops.adapters.cli import build_parser

    parser = build_parser()
    missing = []

    def walk(p, path):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, [*path, name])
            elif action.option_strings and action.dest != "help" and not action.help:
                missing.append(" ".join([*path, action.option_strings[0]]))

    walk(parser, [])
    assert missing == []
    top = parser.format_help()
    assert "``" not in top and "exit codes: 0 done" in top and "6 the model server could not start" in top


@pytest.mark.parametrize(
    "args, hint",
    [
        (["trian"], "did you mean 'train'?"),
        (["train", "--data", "x", "--out", "y", "--seeds", "3"], "did you mean '--seeds' -> '--seed'?"),
        (["serve", "--htp-port", "9"], "did you mean '--htp-port' -> '--http-port'?"),
    ],
)
def test_a_mistyped_step_or_flag_gets_a_suggestion(args, hint):
    result = run(*args, check=False)
    assert result.returncode == 2 and hint in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("server", ["lean", "kserve"])
def test_a_busy_port_is_its_own_exit_code_and_nothing_says_serving(model_dir, server):
    """Not 3 (the release gate's code, which uvicorn's start-up failure used to give)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            "serve",
            "--server",
            server,
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--http-port",
            str(port),
            check=False,
        )
    assert result.returncode == 6, result.stderr[-2000:]
    assert result.stderr.splitlines()[-1] == f"error: cannot serve on 127.0.0.1:{port}: Address already in use"
    assert "serving" not in result.stderr.replace("serving.", "")


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--http-port", "99999", "--http-port must be a TCP port, 1-65535, got 99999"),
        ("--max-instances", "0", "--max-instances must be at least 1, got 0"),
        ("--max-body-bytes", "-5", "--max-body-bytes must be at least 1, got -5"),
        ("--max-entities", "0", "--max-entities must be at least 1, got 0"),
        # no timeout would leave idle and trickling connections open forever
        ("--request-head-timeout", "inf", "--request-head-timeout must be a finite number of seconds above 0, got inf"),
        ("--request-head-timeout", "0", "--request-head-timeout must be a finite number of seconds above 0, got 0.0"),
    ],
)
def test_serve_flags_out_of_range_are_refused_before_anything_loads(flag, value, message):
    result = run("serve", "--model-dir", "/nowhere", flag, value, check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"error: {message}"]


def test_deploy_settings_are_checked_before_credentials_are_looked_for(tmp_path):
    """A wrong flag is named even where no kubeconfig is found (the credentials error came first)."""
    result = run(
        "deploy", "--namespace", "ns", "--storage-uri", "s3://bucket/model", "--canary-percent", "150",
        env={"KUBECONFIG": str(tmp_path / "missing")}, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: canary_traffic_percent must be 0-100, got 150"
    ]


def test_an_unreachable_api_server_is_one_line(tmp_path):
    """urllib3's retry warnings are not printed; the step's one-line error says it all."""
    import socket

    import yaml

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    result = run("rollback", "--namespace", "ns", "--kubeconfig", str(kubeconfig), check=False)
    assert result.returncode == 5
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("error: cannot reach the Kubernetes API")
    ]
