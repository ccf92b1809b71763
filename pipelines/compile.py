"""Compile every pipeline to pipelines/compiled/<name>.yaml and every component to
components/specs/<name>.yaml (loadable with kfp.components.load_component_from_file, and by
Elyra). ``check=True`` compiles to a temporary directory and reports stale files instead.

The kfp-kubernetes SDK writes ``secretAsEnv[].optional`` and ``secretNameParameter`` even
for a constant secret name; the KFP 2.0.5 and 2.2.0 drivers (Data Science Pipelines 2.0-2.10)
refuse both fields. ``portable_platform_config`` removes them where that changes nothing:
``optional: false`` is the default, and a driver without ``secretNameParameter`` reads
``secretName`` (KFP's driver: "SecretNameParameter != nil ... else if SecretName != ''").
Anything it cannot remove that way fails the compile."""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path

import yaml
from kfp import compiler

from anomaly_mlops.adapters.kfp_components import make_components
from anomaly_mlops.pipelines.definitions import PIPELINES, PipelineOptions

ROOT = Path(__file__).resolve().parents[1]
PIPELINES_OUT = ROOT / "pipelines" / "compiled"
COMPONENTS_OUT = ROOT / "components" / "specs"
TEKTON_SOURCE = ROOT / "manifests" / "tekton"
# Pipelines-as-Code resolves pipelineRef/taskRef only from the repository's .tekton/ folder.
PAC_OUT = ROOT / ".tekton" / "retraining"
PAC_PIPELINE = "pipeline-retraining.yaml"


def compile_all(
    options: PipelineOptions = PipelineOptions(),
    pipelines_out: Path = PIPELINES_OUT,
    components_out: Path = COMPONENTS_OUT,
) -> list[Path]:
    pipelines_out.mkdir(parents=True, exist_ok=True)
    components_out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in PIPELINES.items():
        path = pipelines_out / f"{name}.yaml"
        compiler.Compiler().compile(build(options), str(path))
        portable_platform_config(path)
        written.append(path)
    for name, component in make_components(options.image, options.validate_image).items():
        path = components_out / f"{name}.yaml"
        compiler.Compiler().compile(component, str(path))
        written.append(path)
    return written


def pac_copies() -> dict[str, str]:
    """The retraining Pipeline and every Task it references, as the files .tekton/retraining/
    holds: each a verbatim copy of its manifests/tekton source under a header."""
    source = TEKTON_SOURCE / PAC_PIPELINE
    pipeline = yaml.safe_load(source.read_text())
    # Custom tasks (the approval gate's ApprovalTask) are the cluster's: PaC uses them as they are.
    everything = pipeline["spec"]["tasks"] + pipeline["spec"].get("finally", [])
    wanted = {t["taskRef"]["name"] for t in everything if "name" in t["taskRef"]}
    tasks = {
        yaml.safe_load(f.read_text())["metadata"]["name"]: f for f in sorted((TEKTON_SOURCE / "tasks").glob("*.yaml"))
    }
    missing = wanted - set(tasks)
    if missing:
        raise ValueError(
            f"{source.relative_to(ROOT)} references Tasks not in manifests/tekton/tasks: {sorted(missing)}"
        )
    copies = {}
    for path in [source, *(tasks[name] for name in sorted(wanted))]:
        note = (
            f"# Generated from {path.relative_to(ROOT)} by `anomaly-mlops compile` for Pipelines-as-Code; "
            "edit that file, not this one.\n"
        )
        copies[path.name] = note + path.read_text()
    return copies


def write_pac_copies(out: Path = PAC_OUT) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    copies = pac_copies()
    for stale in set(p.name for p in out.glob("*.yaml")) - set(copies):
        (out / stale).unlink()
    written = []
    for name, text in copies.items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


def portable_platform_config(path: Path) -> None:
    """Rewrite the kubernetes platform config of a compiled pipeline so that every
    supported backend reads it, and reads it the same way."""
    documents = list(yaml.safe_load_all(path.read_text()))
    for document in documents:
        executors = (
            (((document or {}).get("platforms") or {}).get("kubernetes") or {})
            .get("deploymentSpec", {})
            .get("executors", {})
        )
        for executor, config in executors.items():
            for secret in config.get("secretAsEnv", []):
                if secret.pop("optional", False):
                    raise ValueError(f"{executor}: an optional secret cannot be expressed for KFP 2.0.5/2.2.0")
                parameter = secret.pop("secretNameParameter", None)
                constant = ((parameter or {}).get("runtimeValue") or {}).get("constant")
                if parameter is not None and constant != secret.get("secretName"):
                    raise ValueError(
                        f"{executor}: a secret named by a run parameter cannot be expressed for "
                        "KFP 2.0.5/2.2.0; make it a compile option"
                    )
    path.write_text(header(path.read_text()) + yaml.safe_dump_all(documents, sort_keys=False))


def header(text: str) -> str:
    """The compiler's leading comment lines, kept."""
    lines = []
    for line in text.splitlines(True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def stale_files(options: PipelineOptions = PipelineOptions()) -> list[str]:
    """Committed files that differ from a fresh compile, with a short diff each."""
    problems = []
    copies = pac_copies()
    committed_pac = {p.name for p in PAC_OUT.glob("*.yaml")} if PAC_OUT.is_dir() else set()
    for name in sorted(committed_pac | set(copies)):
        old = (PAC_OUT / name).read_text() if name in committed_pac else ""
        if copies.get(name, "") != old:
            problems.append(f"{(PAC_OUT / name).relative_to(ROOT)} is stale (generated from manifests/tekton)")
    with tempfile.TemporaryDirectory() as tmp:
        fresh = compile_all(options, Path(tmp) / "p", Path(tmp) / "c")
        for path in fresh:
            committed = (PIPELINES_OUT if path.parent.name == "p" else COMPONENTS_OUT) / path.name
            new = path.read_text()
            old = committed.read_text() if committed.exists() else ""
            if new != old:
                diff = "".join(
                    list(
                        difflib.unified_diff(
                            old.splitlines(True), new.splitlines(True), str(committed), "fresh compile"
                        )
                    )[:20]
                )
                problems.append(f"{committed.relative_to(ROOT)} is stale:\n{diff}")
    return problems
