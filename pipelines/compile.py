"""Compile every pipeline to pipelines/compiled/<name>.yaml and every component to
components/specs/<name>.yaml (loadable with kfp.components.load_component_from_file, and by
Elyra). ``check=True`` compiles to a temporary directory and reports stale files instead."""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path

from kfp import compiler

from anomaly_mlops.kfp_components import make_components
from pipelines.definitions import PIPELINES, PipelineOptions

ROOT = Path(__file__).resolve().parents[1]
PIPELINES_OUT = ROOT / "pipelines" / "compiled"
COMPONENTS_OUT = ROOT / "components" / "specs"


def compile_all(options: PipelineOptions = PipelineOptions(), pipelines_out: Path = PIPELINES_OUT,
                components_out: Path = COMPONENTS_OUT) -> list[Path]:
    pipelines_out.mkdir(parents=True, exist_ok=True)
    components_out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in PIPELINES.items():
        path = pipelines_out / f"{name}.yaml"
        compiler.Compiler().compile(build(options), str(path))
        written.append(path)
    for name, component in make_components(options.image).items():
        path = components_out / f"{name}.yaml"
        compiler.Compiler().compile(component, str(path))
        written.append(path)
    return written


def stale_files(options: PipelineOptions = PipelineOptions()) -> list[str]:
    """Committed files that differ from a fresh compile, with a short diff each."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_all(options, Path(tmp) / "p", Path(tmp) / "c")
        for path in fresh:
            committed = (PIPELINES_OUT if path.parent.name == "p" else COMPONENTS_OUT) / path.name
            new = path.read_text()
            old = committed.read_text() if committed.exists() else ""
            if new != old:
                diff = "".join(list(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                         str(committed), "fresh compile"))[:20])
                problems.append(f"{committed.relative_to(ROOT)} is stale:\n{diff}")
    return problems
