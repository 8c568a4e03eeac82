"""The GitHub workflows: valid against GitHub's workflow schema, shell that parses, pinned actions.

actionlint (with shellcheck) runs in the workflows' own lint job; here it runs only when the
binary is on PATH. What runs everywhere: the SchemaStore workflow schema bundled with
check-jsonschema, ``bash -n`` on every ``run:`` block, and the properties the CI relies on.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def check_schema(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                           *map(str, paths)], capture_output=True, text=True)


def load(name: str) -> dict:
    # `on:` is a YAML 1.1 boolean to PyYAML: read it back as the key GitHub means
    doc = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def steps(doc: dict) -> list[dict]:
    return [step for job in doc["jobs"].values() for step in job.get("steps", [])]


def test_workflows_exist():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "gpu-e2e.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_matches_github_schema(path):
    result = check_schema(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_refuses_a_broken_workflow(tmp_path):
    doc = load("ci.yml")
    doc["jobs"]["test"]["runs_on"] = doc["jobs"]["test"].pop("runs-on")  # a typo GitHub would refuse
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(doc))
    assert check_schema(bad).returncode != 0


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_run_blocks_are_valid_bash(path):
    doc = load(path.name)
    for step in steps(doc):
        if "run" in step:
            script = re.sub(r"\$\{\{.*?\}\}", "X", step["run"])  # expressions are substituted before bash
            result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
            assert result.returncode == 0, f"{path.name} step {step.get('name')!r}: {result.stderr}"


def test_bash_check_catches_a_syntax_error():
    assert subprocess.run(["bash", "-n"], input="if true; then echo\n", capture_output=True, text=True).returncode != 0


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_third_party_actions_are_pinned_by_commit(path):
    unpinned = [s["uses"] for s in steps(load(path.name))
                if "uses" in s and not s["uses"].startswith("./") and not PINNED.match(s["uses"])]
    assert unpinned == []


@pytest.mark.skipif(shutil.which("actionlint") is None and not (BIN / "actionlint").exists(),
                    reason="actionlint is not installed (the workflows' lint job runs it)")
def test_actionlint():
    exe = shutil.which("actionlint") or str(BIN / "actionlint")
    result = subprocess.run([exe, *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_test_suite_on_a_clean_checkout():
    doc = load("ci.yml")
    assert {"push", "pull_request"} <= set(doc["on"])
    test = doc["jobs"]["test"]
    assert test["timeout-minutes"] <= 90
    assert any(s.get("run", "").strip() in (".ci/run", "make test") for s in test["steps"])
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_gpu_e2e_installs_runs_and_always_uninstalls():
    doc = load("gpu-e2e.yml")
    (job,) = doc["jobs"].values()
    assert "self-hosted" in job["runs-on"]
    runs = [s for s in job["steps"] if "run" in s]
    text = "\n".join(s["run"] for s in runs)
    assert "secrets.KUBECONFIG" in yaml.safe_dump(job), "the kubeconfig comes from a secret"
    assert "helm upgrade --install" in text and "charts/kuberlhf" in text
    assert "pytest" in text and "tests/e2e" in text
    cleanup = [s for s in runs if "helm uninstall" in s["run"]]
    assert cleanup and all(s.get("if") == "always()" for s in cleanup), "uninstall must run even after a failure"
    assert (REPO / "tests" / "e2e").is_dir()


def test_gpu_e2e_runs_either_backend():
    doc = load("gpu-e2e.yml")
    trigger = doc.get("on") or doc.get(True)  # YAML 1.1 reads the key `on` as true
    backend = trigger["workflow_dispatch"]["inputs"]["backend"]
    assert backend["options"] == ["pytorchjob", "trainjob"] and backend["default"] == "pytorchjob"
    (job,) = doc["jobs"].values()
    assert "trainjob" in job["strategy"]["matrix"]["backend"]  # the nightly run does both
    text = "\n".join(s.get("run", "") for s in job["steps"])
    assert '--set cluster.backend="$BACKEND"' in text and "trainer.runtimes" in text
    e2e = next(s for s in job["steps"] if "tests/e2e" in s.get("run", ""))
    assert e2e["env"]["KUBERLHF_E2E_BACKEND"] == "${{ matrix.backend }}"
    source = (REPO / "tests" / "e2e" / "test_rlhf_ppo_cluster.py").read_text()
    assert '"mode": BACKEND' in source
