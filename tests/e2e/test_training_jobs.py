"""rlhf-ppo's training stages as real PyTorchJobs and TrainJobs on the test cluster (``make e2e``).

Each stage is launched the way a pipeline step launches it, with ``kuberlhf launch``, from this
machine through the kubeconfig, with the chart's cluster settings (its ``kuberlhf-config``
ConfigMap) in the chart's restricted namespace: two pods of one process each (a Master and a
Worker, or two TrainJob nodes), gloo on CPU, models in the test S3 server on the pods' bridge.
Then the faults a cluster brings: a Worker pod deleted mid-run and a launcher killed mid-wait; and
the launcher's ServiceAccount against the real RBAC.

Needs ``make cluster-up`` and the sft, reward and ppo images in the cluster's containerd (``make
e2e`` does both); skipped without the cluster.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from test_cluster_admission import KUBECONFIG, NAMESPACE, SETTINGS, kubectl  # noqa: E402

pytestmark = pytest.mark.skipif(SETTINGS is None, reason=f"no test cluster with the chart in {NAMESPACE!r} "
                                "(make cluster-up)")
# kuberlhf launch from this machine, as a user runs it; the cluster's images are the ones built here (local/...)
LAUNCH_ENV = {"KUBERLHF_IMAGE_REGISTRY": "local", **os.environ, "KUBECONFIG": KUBECONFIG}
RUN = os.environ.get("KUBERLHF_E2E_RUN") or time.strftime("e2e-%m%d-%H%M%S")
BUCKET = "kuberlhf"
PODS = ["cluster.nodes=2", "cluster.procs_per_node=1", "cluster.cpu=200m", "cluster.memory=2Gi",
        "cluster.memory_limit=4Gi", "cluster.shm_size=256Mi"]
STEPS = {  # enough that every stage trains across both pods and seals checkpoints; minutes on 2 cores
    "sft": ["training.max_steps=24", "training.save_steps=12", "training.logging_steps=4"],
    "reward": ["training.max_steps=24", "training.save_steps=12", "training.logging_steps=4"],
    "ppo": ["training.max_steps=8", "training.save_steps=2", "training.logging_steps=1", "rollout.batch_size=16",
            "data.eval=demo://prompts?n=16&split=test"],
}
# what must come out the same whether the run was interrupted or not, on the cluster or here
COMPARED = ("steps", "reward", "kl_train", "kl_coef", "world_size")


def uri(backend: str, stage: str) -> str:
    return f"s3://{BUCKET}/{RUN}/{backend}/{stage}"


def inputs(backend: str, stage: str) -> list[str]:
    if stage != "ppo":
        return []
    return [f"policy.name_or_path={uri(backend, 'sft')}", f"reward_model.name_or_path={uri(backend, 'reward')}"]


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Path:
    """The chart's cluster settings, with one thread per process (as torchrun gives each of two processes
    on one machine) so that two pods compute what two local processes do."""
    data = yaml.safe_load(SETTINGS)
    data["env"] = {**(data.get("env") or {}), "OMP_NUM_THREADS": "1"}
    path = tmp_path_factory.mktemp("e2e") / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def store_env() -> dict[str, str]:
    """The object store as the pods see it, with the credentials of the chart's Secret."""
    secret = json.loads(kubectl("-n", NAMESPACE, "get", "secret", "kuberlhf-s3", "-o", "json").stdout)["data"]
    cluster = yaml.safe_load(SETTINGS)
    return {"AWS_ENDPOINT_URL_S3": cluster["storage_endpoint"],
            **{key: base64.b64decode(secret[key]).decode() for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}


def launch_cmd(stage: str, backend: str, settings: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "kuberlhf.cli", "launch", stage, "--backend", backend, "--cluster", str(settings),
            "--run-id", f"{RUN}-{backend}", "--name", name, *PODS, *STEPS[stage], *inputs(backend, stage),
            f"output_dir={uri(backend, stage)}", *extra]


def launch(stage: str, backend: str, settings: Path, name: str, *extra: str) -> str:
    started = time.monotonic()
    proc = subprocess.run(launch_cmd(stage, backend, settings, name, *extra), capture_output=True, text=True,
                          cwd=ROOT, timeout=1800, env=LAUNCH_ENV)
    print(f"{backend} {name} ({stage}): exit {proc.returncode} in {time.monotonic() - started:.0f} s; "
          f"{proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ''}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def artifact(location: str, env: dict[str, str]) -> dict:
    """The artifact's metrics.json, after the download checked every file against its manifest."""
    code = ("import json, sys, tempfile; from kuberlhf.artifacts import storage, manifest; "
            "d = storage.download_dir(sys.argv[1], tempfile.mkdtemp()); manifest.verify_local(d); "
            "print((d / 'metrics.json').read_text())")
    proc = subprocess.run([sys.executable, "-c", code, location], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)
    assert proc.returncode == 0, f"{location}: {proc.stderr[-1500:]}"
    return json.loads(proc.stdout)


def compared(metrics: dict) -> dict:
    return {key: metrics[key] for key in COMPARED}


@pytest.fixture(scope="module")
def pytorchjob_run(settings, store_env) -> dict:
    for stage in ("sft", "reward", "ppo"):
        launch(stage, "pytorchjob", settings, f"{RUN}-pj-{stage}")
    return {stage: artifact(uri("pytorchjob", stage), store_env) for stage in ("sft", "reward", "ppo")}


def test_the_stages_run_as_two_pod_pytorchjobs(pytorchjob_run):
    assert pytorchjob_run["ppo"]["world_size"] == 2 and pytorchjob_run["ppo"]["steps"] == 8
    for stage in ("sft", "reward"):
        assert pytorchjob_run[stage]["global_step"] == 24 and pytorchjob_run[stage]["resumed_from_step"] == 0


def test_ppo_on_two_pods_ends_as_two_local_processes(pytorchjob_run, store_env, tmp_path):
    out = f"{uri('pytorchjob', 'ppo')}-local"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "kuberlhf.cli", "ppo",
           "--config", "configs/ppo/demo.yaml", *STEPS["ppo"], *inputs("pytorchjob", "ppo"), f"output_dir={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800,
                          env={**os.environ, **store_env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    local = artifact(out, store_env)
    print(f"PPO, two pods: {compared(pytorchjob_run['ppo'])}; two local processes: {compared(local)}")
    assert compared(local) == compared(pytorchjob_run["ppo"])


def test_the_stages_run_as_two_node_trainjobs(pytorchjob_run, settings, store_env):
    for stage in ("sft", "reward", "ppo"):
        launch(stage, "trainjob", settings, f"{RUN}-tj-{stage}")
    ppo = artifact(uri("trainjob", "ppo"), store_env)
    assert ppo["world_size"] == 2
    assert compared(ppo) == compared(pytorchjob_run["ppo"])  # same inputs' content, same seed, same shape


def sealed_checkpoints(location: str, env: dict[str, str]) -> list[int]:
    import boto3

    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
            for o in page.get("Contents", [])]
    return sorted(int(k.split("/checkpoint-")[1].split("/")[0]) for k in keys
                  if "/checkpoints/checkpoint-" in k and k.endswith("/manifest.json"))


def wait_for(what: str, check, timeout: float = 900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_deleted_worker_pod_restarts_and_the_run_resumes_to_the_same_end(pytorchjob_run, settings, store_env):
    name, out = f"{RUN}-pj-ppo-del", f"{uri('pytorchjob', 'ppo')}-deleted"
    launcher = subprocess.Popen(launch_cmd("ppo", "pytorchjob", settings, name, f"output_dir={out}"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env=LAUNCH_ENV)
    saved = wait_for("a sealed checkpoint", lambda: sealed_checkpoints(out, store_env))
    deleted = kubectl("-n", NAMESPACE, "delete", "pod", f"{name}-worker-0", "--wait=false")
    assert deleted.returncode == 0, deleted.stderr
    print(f"deleted {name}-worker-0 after checkpoint {saved[-1]}")
    stdout, stderr = launcher.communicate(timeout=1800)
    assert launcher.returncode == 0, stderr[-3000:]
    metrics = artifact(out, store_env)
    print(f"PPO with a deleted worker: resumed from step {metrics['resumed_from_step']}; {compared(metrics)}")
    assert metrics["resumed_from_step"] >= saved[-1]
    assert compared(metrics) == compared(pytorchjob_run["ppo"])


def test_a_killed_launcher_started_again_reattaches(pytorchjob_run, settings, store_env):
    name, out = f"{RUN}-pj-ppo-kill", f"{uri('pytorchjob', 'ppo')}-relaunched"
    cmd = launch_cmd("ppo", "pytorchjob", settings, name, f"output_dir={out}")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                env=LAUNCH_ENV)
    wait_for("the job's pods", lambda: kubectl("-n", NAMESPACE, "get", "pod", f"{name}-master-0").returncode == 0)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800, env=LAUNCH_ENV)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "re-attach" in second.stderr.lower()
    metrics = artifact(out, store_env)
    print(f"PPO with a killed launcher: {compared(metrics)}")
    assert compared(metrics) == compared(pytorchjob_run["ppo"])


def test_the_launchers_account_can_run_jobs_and_nothing_else():
    account = f"system:serviceaccount:{NAMESPACE}:kuberlhf-launcher"

    def can(*args: str) -> bool:
        proc = kubectl("auth", "can-i", "--as", account, "-n", NAMESPACE, *args)
        return proc.stdout.strip() == "yes"

    assert can("create", "pytorchjobs.kubeflow.org") and can("watch", "trainjobs.trainer.kubeflow.org")
    assert can("get", "pods", "--subresource=log") and can("list", "events")
    assert not can("create", "pods") and not can("get", "secrets") and not can("delete", "pods")
    assert not can("create", "pytorchjobs.kubeflow.org", "-n", "default")
