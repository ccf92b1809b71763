"""No image can be built here (no container engine), so install the package the way the
Containerfile does, into a fresh virtualenv from the files it copies, and run the entry
points the KFP components, Tekton tasks and the ServingRuntime call."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = (ROOT / "Containerfile").read_text()


def stage_lines(stage: str) -> list[str]:
    text = CONTAINERFILE.split(f" AS {stage}", 1)[1]
    return text.split("\nFROM ", 1)[0].splitlines()


def test_every_stage_runs_as_non_root():
    stages = re.findall(r"^FROM \S+ AS ([\w-]+)", CONTAINERFILE, re.M)
    assert stages == ["steps", "validate-gpu", "predictor"]  # a build without --target gets the predictor
    for stage in ("steps", "validate-gpu"):
        users = [line.split()[1] for line in stage_lines(stage) if line.startswith("USER ")]
        assert users[-1] == "1001", stage
    assert not [line for line in stage_lines("predictor") if line.startswith("USER ")]  # inherits 1001
    assert re.search(r"^ARG BASE_IMAGE=registry\.access\.redhat\.com/ubi9/python-311", CONTAINERFILE, re.M)


def test_validate_gpu_image_adds_the_pinned_torch_to_the_steps():
    """The image compile --validate-image names: the steps' install plus the gpu extra, under
    the same lock, and the lock pins the torch the extra names."""
    assert "FROM steps AS validate-gpu" in CONTAINERFILE
    (install,) = [line for line in stage_lines("validate-gpu") if "pip install" in line]
    assert "-c requirements.lock '.[gpu]'" in install
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    locked = re.findall(r"^torch==\S+$", (ROOT / "requirements.lock").read_text(), re.M)
    assert extra == locked, (extra, locked)


def test_predictor_command_is_a_valid_cli_call():
    from anomaly_mlops.adapters.cli import build_parser

    (cmd,) = [line for line in stage_lines("predictor") if line.startswith("CMD ")]
    import json

    args = build_parser().parse_args(json.loads(cmd[4:]))
    assert (args.command, args.model_dir, args.http_port) == ("serve", "/mnt/models", 8080)


@pytest.mark.slow
def test_image_install_provides_working_entry_points(tmp_path):
    copies = [line.split()[1:-1] for line in stage_lines("steps") if line.startswith("COPY ")]
    context = tmp_path / "context"
    context.mkdir()
    for sources in copies:
        for source in sources:
            target = context / source
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, target)
    run_line = next(line for line in stage_lines("steps") if "pip install" in line)
    install = run_line.removeprefix("RUN ").split("&&")[0].strip()
    # Same command; only the interpreter is the fresh venv's, and pip may use its cache here.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    command = install.replace("python3", str(venv / "bin" / "python"), 1).replace("--no-cache-dir ", "")
    out = subprocess.run(command, shell=True, cwd=context, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]

    cli = venv / "bin" / "anomaly-mlops"
    for args in (["--help"], ["serve", "--help"], ["deploy", "--help"], ["verify", "--help"], ["compile", "--help"]):
        result = subprocess.run([str(cli), *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (args, result.stderr[-2000:])
    check = (
        "import anomaly_mlops.serving.kserve_model as p, anomaly_mlops.pipelines.definitions as d, kserve, kfp, sklearn; "
        "import importlib.util, pathlib; assert importlib.util.find_spec('pipelines') is None, 'top-level pipelines'; "
        "from anomaly_mlops.adapters.cli import build_parser; "
        "a = build_parser().parse_args(['submit', '--host', 'h']); assert pathlib.Path(a.package).is_file(), a.package; "
        "assert 'site-packages' in a.package, a.package; "
        "p.build_model_class(); print(sklearn.__version__)"
    )
    if shutil.which("cc") or shutil.which("gcc"):  # the C parts are built where a compiler is (UBI's has gcc)
        check += "; from anomaly_mlops.model import _forest_walk, _window_stats"
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import sklearn

    assert result.stdout.strip() == sklearn.__version__  # trained and served with the same version
    # Test-only tools stay out of the image.
    pip_list = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list"], capture_output=True, text=True
    ).stdout
    assert "pytest" not in pip_list and "moto" not in pip_list
