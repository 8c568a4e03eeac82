"""Every stage's job, as kuberlhf renders it, admitted by a real apiserver (`make cluster-up`, then this).

For each stage and both backends, `kuberlhf launch STAGE --dry-run` with the chart's own cluster
settings (the ``cluster.yaml`` of the release's ``kuberlhf-config`` ConfigMap) goes through the
real apiserver's server-side dry run in the chart's namespace: validation against the operators'
CRD schemas, their defaulting and validating webhooks, and the namespace's admission chain.
(PodSecurity judges pods, not the templates inside custom resources: the jobs' pods meet it when
they are created.)

Needs the test cluster (``KUBECONFIG`` or ``.cache/cluster/run/kubeconfig``) with the chart installed
in ``KUBERLHF_E2E_NAMESPACE`` (default ``kuberlhf``); skipped when there is none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KUBECONFIG = os.environ.get("KUBECONFIG") or str(ROOT / ".cache/cluster/run/kubeconfig")
NAMESPACE = os.environ.get("KUBERLHF_E2E_NAMESPACE", "kuberlhf")
sys.path.insert(0, str(ROOT / "cluster"))


def kubectl(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    import parts  # cluster/parts.py: where the cluster's kubectl is

    binary = parts.PARTS["kubernetes"].path("kubectl")
    return subprocess.run([str(binary), "--kubeconfig", KUBECONFIG, *args], capture_output=True, text=True,
                          input=input, timeout=120)


def _cluster_settings() -> str | None:
    if not Path(KUBECONFIG).exists():
        return None
    proc = kubectl("-n", NAMESPACE, "get", "configmap", "kuberlhf-config", "-o", r"jsonpath={.data.cluster\.yaml}")
    return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None


SETTINGS = _cluster_settings()
pytestmark = pytest.mark.skipif(SETTINGS is None, reason=f"no test cluster with the chart in {NAMESPACE!r} "
                                "(make cluster-up)")
STAGES = ("sft", "reward", "ppo", "dpo", "rloo", "grpo", "generate", "rlaif", "rest")


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
@pytest.mark.parametrize("stage", STAGES)
def test_the_real_apiserver_admits_the_job(stage, backend, tmp_path):
    settings = tmp_path / "cluster.yaml"
    settings.write_text(SETTINGS)
    render = subprocess.run([sys.executable, "-m", "kuberlhf.cli", "launch", stage, "--dry-run", "--backend", backend,
                             "--cluster", str(settings), "--run-id", "admission", "output_dir=s3://kuberlhf/admission"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert render.returncode == 0, render.stderr[-1500:]
    applied = kubectl("apply", "--dry-run=server", "-n", NAMESPACE, "-f", "-", input=render.stdout)
    assert applied.returncode == 0, applied.stderr
    assert "(server dry run)" in applied.stdout
