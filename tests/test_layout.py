"""The package layout is the architecture: adapters -> steps -> serving | sources -> store ->
model -> (errors, params, redact). Every import in the package, function-level ones too, runs
down that order or stays inside its own subpackage; serving and sources never import each
other (../shared/STYLE.md, section 7)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "components" / "anomaly_mlops"
PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
RANK = {"": 0, "model": 1, "store": 2, "sources": 3, "serving": 3, "steps": 4, "adapters": 5}


def layer(module: str) -> str:
    """The subpackage of ``anomaly_mlops.<sub>.<mod>``, "" for the package's own leaves; the
    KFP pipeline definitions (anomaly_mlops.pipelines) are adapters."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "pipelines":
        return "adapters"
    return parts[1] if len(parts) > 2 and parts[1] in RANK else ""


def imports(path: Path, module: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{module}: relative import (line {node.lineno}); the package imports absolutely")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anomaly_mlops"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("anomaly_mlops")]
    return found


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        yield path, ".".join(["anomaly_mlops", *rel.parts]).removesuffix(".__init__")
    for path in sorted(PIPELINES.glob("*.py")):
        yield path, f"anomaly_mlops.pipelines.{path.stem}".removesuffix(".__init__")


def violations(edges) -> list[str]:
    """(module, imported module) pairs that do not run down the layers."""
    wrong = []
    for module, target in edges:
        own, other = layer(module), layer(target)
        if other != own and RANK[other] >= RANK[own]:
            wrong.append(f"{module} imports {target}")
    return wrong


def test_imports_run_down_the_layers():
    assert violations((module, target) for path, module in modules() for target in imports(path, module)) == []


def test_the_layer_check_can_fail(tmp_path):
    upward = tmp_path / "m.py"
    upward.write_text("def f():\n    from anomaly_mlops.steps.train import train\n")
    assert violations((m, t) for m, t in [("anomaly_mlops.model.m", x) for x in imports(upward, "m")]) == [
        "anomaly_mlops.model.m imports anomaly_mlops.steps.train"
    ]
    assert violations([("anomaly_mlops.serving.protocol", "anomaly_mlops.sources.files")]) != []
    assert violations([("anomaly_mlops.steps.deploy", "anomaly_mlops.steps.verify")]) == []


def test_every_subpackage_is_installed():
    """A non-editable install (the image) ships only the packages pyproject.toml lists."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(["anomaly_mlops", *init.parent.relative_to(PACKAGE).parts]) for init in PACKAGE.rglob("__init__.py")
    }
    assert found - listed == set()
