"""What Tekton, Pipelines-as-Code and the cluster really accept, beyond references:
every Tekton object against the real CRD schemas, a .tekton/ folder that resolves on its
own (PaC), a GPU task that can be scheduled with Tekton's default affinity assistant,
restricted step security contexts, and the image build run with a stand-in buildah."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

import crd_schema

ROOT = Path(__file__).resolve().parents[1]
PAC = ROOT / ".tekton"


def documents(folder: Path) -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(folder.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return found


def pipeline_runs() -> list[tuple[str, dict]]:
    """Every PipelineRun we ship: .tekton/ and the TriggerTemplate's resource templates."""
    runs = [(str(p.relative_to(ROOT)), d) for p, d in documents(PAC) if d["kind"] == "PipelineRun"]
    for path, doc in documents(ROOT / "manifests" / "tekton"):
        if doc["kind"] == "TriggerTemplate":
            runs += [(f"{path.relative_to(ROOT)} resourcetemplate", r) for r in doc["spec"]["resourcetemplates"]]
    return runs


@pytest.mark.skipif(not crd_schema.available(), reason="../shared/schemas not found beside the checkout")
def test_every_tekton_object_matches_the_tekton_crd_schemas():
    objects = [
        (str(p.relative_to(ROOT)), d)
        for folder in (ROOT / "manifests" / "tekton", PAC)
        for p, d in documents(folder)
        if d["kind"] in ("Task", "Pipeline", "PipelineRun")
    ]
    objects += pipeline_runs()
    assert len(objects) >= 22
    for where, obj in objects:
        assert crd_schema.errors(obj) == [], f"{where} {obj['kind']}"
    # The check refuses what the API server refuses.
    (_, task), *_ = [(w, o) for w, o in objects if o["kind"] == "Task"]
    broken = copy.deepcopy(task)
    broken["spec"]["steps"][0]["scirpt"] = "typo"
    broken["spec"]["workspaces"][0]["readOnly"] = "yes"
    assert {e.split(":")[0] for e in crd_schema.errors(broken)} == {
        "spec.steps[0].scirpt",
        "spec.workspaces[0].readOnly",
    }


def test_pipelines_as_code_resolves_everything_inside_tekton_folder():
    """PaC refuses a pipelineRef/taskRef it cannot find in .tekton/ ("cannot find referenced pipeline");
    a custom task whose apiVersion is not tekton.dev/… it uses as it is (openshift-pipelines/
    pipelines-as-code docs/content/docs/guide/resolver.md, "The resolver will skip resolving")."""
    objects = [d for _, d in documents(PAC)]
    pipelines = {d["metadata"]["name"]: d for d in objects if d["kind"] == "Pipeline"}
    tasks = {d["metadata"]["name"]: d for d in objects if d["kind"] == "Task"}
    runs = [d for d in objects if d["kind"] == "PipelineRun"]
    assert runs
    for run in runs:
        ref = run["spec"]["pipelineRef"]
        assert set(ref) == {"name"} and ref["name"] in pipelines, ref
        spec = pipelines[ref["name"]]["spec"]
        for task in spec["tasks"] + spec.get("finally", []):
            if not task["taskRef"].get("apiVersion", "tekton.dev/").startswith("tekton.dev/"):
                assert set(task["taskRef"]) == {"apiVersion", "kind"}, task["name"]  # no name: nothing to resolve
                continue
            assert set(task["taskRef"]) == {"name"} and task["taskRef"]["name"] in tasks, task["name"]


def test_tekton_folder_is_a_fresh_copy_of_the_manifests():
    from anomaly_mlops.pipelines.compile import PAC_OUT, pac_copies

    copies = pac_copies()
    assert {p.name for p in PAC_OUT.glob("*.yaml")} == set(copies)
    for name, text in copies.items():
        assert (PAC_OUT / name).read_text() == text, f"{name}: run `anomaly-mlops compile`"


def scheduling_problems(run: dict, pipeline: dict) -> list[str]:
    """Tekton's default affinity assistant (coschedule: workspaces) puts every pod sharing a
    PVC workspace on the node of one assistant pod, placed with the run-level pod template
    only. A task-level nodeSelector/toleration/affinity is then unsatisfiable unless the
    run-level template already carries it; a task requesting a GPU needs the run on a GPU node."""
    spec = run["spec"]
    pvc = {w["name"] for w in spec.get("workspaces", []) if "volumeClaimTemplate" in w or "persistentVolumeClaim" in w}
    sharing = {
        t["name"] for t in pipeline["spec"]["tasks"] if any(w["workspace"] in pvc for w in t.get("workspaces", []))
    }
    run_level = (spec.get("taskRunTemplate") or {}).get("podTemplate") or {}
    problems = []
    for task_spec in spec.get("taskRunSpecs", []):
        name = task_spec["pipelineTaskName"]
        template = task_spec.get("podTemplate") or {}
        for key in ("nodeSelector", "tolerations", "affinity"):
            if name in sharing and template.get(key) and template[key] != run_level.get(key):
                problems.append(f"{name}: {key} on the task, not the run, while it shares a PVC workspace")
        limits = (task_spec.get("computeResources") or {}).get("limits", {})
        if "nvidia.com/gpu" in limits and name in sharing:
            tolerated = {t.get("key") for t in run_level.get("tolerations", [])}
            if "nvidia.com/gpu" not in tolerated or "nvidia.com/gpu.present" not in run_level.get("nodeSelector", {}):
                problems.append(f"{name}: requests a GPU but the run is not placed on GPU nodes")
    return problems


def test_the_gpu_task_is_schedulable_with_the_default_affinity_assistant():
    pipelines = {
        d["metadata"]["name"]: d for _, d in documents(ROOT / "manifests" / "tekton") if d["kind"] == "Pipeline"
    }
    runs = pipeline_runs()
    assert len(runs) == 3  # .tekton/push.yaml, the commit and the drift triggers' templates
    for where, run in runs:
        pipeline = pipelines[run["spec"]["pipelineRef"]["name"]]
        assert scheduling_problems(run, pipeline) == [], where
        # The layout this project shipped before: GPU placement on the validate task only.
        old = copy.deepcopy(run)
        placement = old["spec"]["taskRunTemplate"].pop("podTemplate")
        old["spec"]["taskRunSpecs"][0]["podTemplate"] = placement
        assert len(scheduling_problems(old, pipeline)) == 3, where


# CRI-O's default capabilities (what a container keeps unless its context drops them) and
# what `buildah bud` needs of them (DESIGN.md, platform rules).
RUNTIME_DEFAULT_CAPS = {
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "KILL",
}
BUILDAH_NEEDS = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID", "SETFCAP"}
# openshift-pipelines/tektoncd-catalog, task-buildah 0.7.1, the build step's securityContext.
CATALOG_BUILDAH_CONTEXT = {"capabilities": {"add": ["SETFCAP"]}}


def effective_capabilities(context: dict) -> set[str]:
    caps = context.get("capabilities") or {}
    dropped = set(caps.get("drop") or [])
    kept = set() if "ALL" in dropped else RUNTIME_DEFAULT_CAPS - dropped
    return kept | set(caps.get("add") or [])


def test_steps_run_restricted_but_the_build_runs_as_the_catalog_buildah_task():
    for path, doc in documents(ROOT / "manifests" / "tekton" / "tasks"):
        for step in doc["spec"]["steps"]:
            context = step["securityContext"]
            if doc["metadata"]["name"] == "anomaly-build-image":
                assert context == CATALOG_BUILDAH_CONTEXT, path.name
                assert BUILDAH_NEEDS <= effective_capabilities(context)
                continue
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert context["runAsNonRoot"] is True and "add" not in context["capabilities"], path.name


def test_the_restricted_context_the_build_had_leaves_buildah_without_what_it_needs():
    old = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"], "add": ["SETFCAP"]}}
    assert BUILDAH_NEEDS - effective_capabilities(old) == {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"}


def test_every_step_after_the_build_runs_the_image_built_from_the_commit():
    (pipeline,) = [
        d for _, d in documents(ROOT / "manifests" / "tekton") if d["metadata"]["name"] == "anomaly-mlops-retraining"
    ]
    tasks = {t["name"]: t for t in pipeline["spec"]["tasks"] + pipeline["spec"]["finally"] if "name" in t["taskRef"]}
    assert tasks["build"]["runAfter"] == ["clone"]
    commit = "$(tasks.clone.results.commit)"
    assert {p["name"]: p["value"] for p in tasks["build"]["params"]}["commit"] == commit
    for name, task in tasks.items():
        image = {p["name"]: p["value"] for p in task.get("params", [])}.get("image")
        if name == "clone":
            assert image == "$(params.base-image)"
        elif name != "build":
            assert image == "$(tasks.build.results.image)", name
    train = {p["name"]: p["value"] for p in tasks["train"]["params"]}
    assert train["git-commit"] == commit and train["run-id"] == "$(context.pipelineRun.name)"


def test_the_build_script_builds_the_commit_and_reports_the_digest(tmp_path):
    """buildah cannot run here; a stand-in records what the script asks of it."""
    from test_tekton import TASKS, run_task

    assert "anomaly-build-image" in TASKS
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "buildah").write_text(f"""#!/usr/bin/env bash
echo "$*" >> {calls}
for ((i=1; i<=$#; i++)); do
  if [ "${{!i}}" = "--digestfile" ]; then j=$((i+1)); printf 'sha256:%064d' 7 > "${{!j}}"; fi
done
""")
    (bin_dir / "buildah").chmod(0o755)
    # The buildah image has no git: a git called by the script fails the test.
    (bin_dir / "git").write_text(f"#!/usr/bin/env bash\necho git >> {calls}.git\nexit 127\n")
    (bin_dir / "git").chmod(0o755)
    work = tmp_path / "work"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (work / "src").mkdir(parents=True)
    (work / "commit").write_text(commit)  # what the clone task writes beside the sources
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = run_task(
        "anomaly-build-image", {"commit": commit, "image-repository": "registry.test/ns/anomaly-mlops"}, work, env
    )
    assert result["image"] == f"registry.test/ns/anomaly-mlops@sha256:{7:064d}"
    build, push = calls.read_text().splitlines()
    assert f"--build-arg GIT_COMMIT={commit}" in build and f"-t registry.test/ns/anomaly-mlops:{commit}" in build
    assert push.endswith(f"docker://registry.test/ns/anomaly-mlops:{commit}")
    run_task("anomaly-build-image", {"commit": "main"}, work, env, expect_rc=2)  # a branch name is not a commit
    run_task("anomaly-build-image", {"commit": "f" * 40}, work, env, expect_rc=2)  # not what the workspace holds
    assert json.loads(json.dumps(result))  # results are plain text
    assert not Path(f"{calls}.git").exists()
