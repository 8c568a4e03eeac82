"""The TrainJob backend (Kubeflow Trainer v2.3): every TrainJob and TrainingRuntime it renders passes the
v2.3 CRD schemas strictly, the pods they make pass the restricted Pod Security Standard, and a TrainJob's
pods run the same image, command, env and resources as the PyTorchJob the same stage renders."""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import os
from pathlib import Path

import helpers
import pytest
import yaml
from k8schecks import K8S_VERSIONS, builtin_errors, crd_errors, load_documents, pss_restricted_errors

from kuberlhf.errors import ConfigError
from kuberlhf.k8s import trainjob
from kuberlhf.k8s.launcher import render
from kuberlhf.k8s.pytorchjob import build_pytorchjob
from kuberlhf.k8s.spec import load_cluster

REPO = Path(__file__).resolve().parents[2]
GOLDEN_JOB = REPO / "tests" / "golden" / "trainjob-ppo.yaml"
GOLDEN_RUNTIME = REPO / "tests" / "golden" / "trainingruntime-ppo.yaml"
STAGES = ("sft", "reward", "ppo", "dpo", "rloo", "grpo")


pytestmark = pytest.mark.usefixtures("hermetic_cluster")


def pod_of(pod_template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **pod_template.get("metadata", {})},
            "spec": pod_template["spec"]}


# ---------------------------------------------------------------- the option matrix
GPU = {"cpu": {}, "a100": {"gpus_per_node": 8, "procs_per_node": 8, "gpu_product": "a100"},
       "h100": {"gpus_per_node": 4, "procs_per_node": 2, "gpu_product": "h100"}}
ZONE_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                                                 "values": ["zone-a"]}]}]}}}
LAUNCHER = {"torchrun": {}, "accelerate": {"launcher": "accelerate"},
            "deepspeed": {"launcher": "deepspeed", "deepspeed_config": "configs/deepspeed/zero3.json"}}
MATRIX = []
for i, (nodes, gpu, launcher, restart, kueue) in enumerate(
        itertools.product((1, 2, 4), GPU, LAUNCHER, ("OnFailure", "ExitCode"), (False, True))):
    opts = {"nodes": nodes, **GPU[gpu], **LAUNCHER[launcher], "restart_policy": restart}
    if kueue:
        opts.update(kueue_queue="team-a", priority_class="high", gang_scheduling=True)
    if i % 3 == 0:
        opts.update(storage_secret="s3-creds", wandb_secret="kuberlhf-wandb", storage_endpoint="http://minio:9000",
                    image_pull_secret="regcred", env={"NCCL_DEBUG": "INFO", "LOG_LEVEL": 3})
    elif i % 3 == 1:
        opts.update(storage_secret="", wandb_secret="", config_map="", shm_size="")
    if i % 4 == 0:
        opts.update(active_deadline_seconds=3600, cpu_limit=8, memory_limit="16Gi",
                    node_selector={"pool": "train"}, tolerations=[{"key": "spot", "operator": "Exists"}],
                    affinity=ZONE_AFFINITY)
    MATRIX.append((f"nodes{nodes}-{gpu}-{launcher}-{restart}-{'kueue' if kueue else 'nokueue'}", opts))
IDS, OPTS = [i for i, _ in MATRIX], [o for _, o in MATRIX]


@pytest.mark.parametrize("opts", OPTS, ids=IDS)
def test_every_option_combination_is_a_valid_trainjob_on_a_valid_restricted_runtime(opts):
    cluster = load_cluster(opts)
    runtime = trainjob.build_runtime("sft", cluster)
    job = trainjob.build_trainjob("sft", "configs/sft/demo.yaml", ["output_dir=s3://b/sft"], cluster,
                                  "sft-run-1234abcd", {"run-id": "r", "task": "sft"})
    assert crd_errors(runtime) == [] and crd_errors(job) == []
    assert pss_restricted_errors(runtime) == []
    pod = trainjob.effective_pod(runtime, job)
    assert pss_restricted_errors(pod_of(pod)) == []
    for version in K8S_VERSIONS:  # the pod Trainer makes is a valid Pod for the oldest and newest Kubernetes
        assert builtin_errors(pod_of(pod), version) == []

    spec = job["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": "kuberlhf-sft"}
    assert spec["trainer"]["numNodes"] == cluster.nodes and spec["trainer"]["numProcPerNode"] == cluster.procs_per_node
    assert spec.get("suspend", False) == bool(cluster.kueue_queue)
    assert (job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") or "") == cluster.kueue_queue
    assert spec.get("activeDeadlineSeconds", 0) == cluster.active_deadline_seconds
    assert ("podGroupPolicy" in runtime["spec"]) == cluster.gang_scheduling
    node_job = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert node_job["backoffLimit"] == cluster.backoff_limit
    assert ("podFailurePolicy" in node_job) == (cluster.restart_policy == "ExitCode")
    assert node_job["template"]["spec"]["restartPolicy"] == ("Never" if cluster.restart_policy == "ExitCode"
                                                             else "OnFailure")
    assert not {e["name"] for e in spec["trainer"]["env"]} & set(trainjob.RESERVED_ENV)
    shm = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
    assert shm == ([{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}}]
                   if cluster.shm_size else [])


@pytest.mark.parametrize("opts", OPTS, ids=IDS)
def test_a_trainjob_runs_what_the_pytorchjob_of_the_same_stage_runs(opts):
    """Image, command, env, resources (and placement, account, security, volumes) of the pod Trainer makes from
    the runtime and the TrainJob equal those of the PyTorchJob's pods; Trainer adds only its PET_* and port."""
    cluster = load_cluster(opts)
    for stage in STAGES:
        args = (stage, f"configs/{stage}/demo.yaml", [f"output_dir=s3://b/{stage}", "training.max_steps=3"], cluster,
                f"{stage}-run-1234abcd", {"run-id": "run-1", "task": stage})
        torch_pod = build_pytorchjob(*args)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
        runtime = trainjob.build_runtime(trainjob.stage_runtime(stage).removeprefix("kuberlhf-"), cluster)
        pod = trainjob.effective_pod(runtime, trainjob.build_trainjob(*args))
        ours, theirs = trainjob._node_container(pod["spec"]), torch_pod["spec"]["containers"][0]
        for key in ("image", "command", "resources", "imagePullPolicy", "securityContext"):
            assert ours[key] == theirs[key], (stage, key)
        assert {e["name"]: e for e in ours["env"]} == {e["name"]: e for e in theirs["env"]}, stage
        assert sorted(ours["volumeMounts"], key=str) == sorted(theirs["volumeMounts"], key=str)
        for key in ("serviceAccountName", "automountServiceAccountToken", "securityContext", "nodeSelector",
                    "tolerations", "affinity", "priorityClassName", "imagePullSecrets", "terminationGracePeriodSeconds"):
            assert pod["spec"].get(key) == torch_pod["spec"].get(key), (stage, key)
        assert sorted(pod["spec"]["volumes"], key=str) == sorted(torch_pod["spec"]["volumes"], key=str)
        assert pod["metadata"]["labels"] == torch_pod["metadata"]["labels"]
        assert pod["metadata"]["annotations"] == torch_pod["metadata"]["annotations"]


def test_the_comparison_sees_a_difference():
    cluster = load_cluster(OPTS[0])
    args = ("ppo", "configs/ppo/demo.yaml", [], cluster, "ppo-x")
    job = trainjob.build_trainjob(*args)
    job["spec"]["trainer"]["env"].append({"name": "EXTRA", "value": "1"})
    pod = trainjob.effective_pod(trainjob.build_runtime("ppo", cluster), job)
    theirs = build_pytorchjob(*args)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in trainjob._node_container(pod["spec"])["env"]} - {e["name"] for e in theirs["env"]} \
        == {"EXTRA"}


def test_runtime_patches_merge_as_trainer_merges_them():
    cluster = load_cluster({"shm_size": "1Gi", "tolerations": [{"key": "spot", "operator": "Exists"}],
                            "node_selector": {"pool": "a"}})
    runtime = trainjob.build_runtime("ppo", load_cluster({"shm_size": "8Gi"}))
    trainjob.runtime_pod(runtime)["spec"]["nodeSelector"] = {"zone": "z1"}
    trainjob.runtime_pod(runtime)["spec"]["tolerations"] = [{"key": "old", "operator": "Exists"}]
    pod = trainjob.effective_pod(runtime, trainjob.build_trainjob("ppo", None, [], cluster, "ppo-x"))["spec"]
    assert pod["nodeSelector"] == {"zone": "z1", "pool": "a"}  # maps merge
    assert pod["tolerations"] == [{"key": "spot", "operator": "Exists"}]  # a list without a merge key is replaced
    assert [v for v in pod["volumes"] if v["name"] == "dshm"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]  # by name: the run's size
    mounts = trainjob._node_container(pod)["volumeMounts"]
    assert [m for m in mounts if m["name"] == "dshm"] == [{"name": "dshm", "mountPath": "/dev/shm"}]  # once


def test_what_trainer_v2_cannot_run_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="'cluster.elastic_max_nodes': the trainjob backend has no elastic"):
        render("sft", "configs/sft/demo.yaml", [], "r", "sft", {"elastic_min_nodes": 1, "elastic_max_nodes": 2},
               backend="trainjob")
    with pytest.raises(ConfigError, match="'cluster.env': PET_NNODES is set by Kubeflow Trainer's torch policy"):
        render("sft", "configs/sft/demo.yaml", [], "r", "sft", {"env": {"PET_NNODES": "2"}}, backend="trainjob")
    with pytest.raises(ConfigError, match="runtime kind 'Runtime'"):
        trainjob.build_runtime("sft", load_cluster({}), "Runtime")
    # the same settings are a PyTorchJob's business
    assert render("sft", "configs/sft/demo.yaml", [], "r", "sft", {"elastic_min_nodes": 1, "elastic_max_nodes": 2})


def test_exit_codes_follow_the_training_operators_exit_code_policy():
    """1-127 (bad input exits 2) fail at once; 128+ (signals, OOM kills) and a storage outage's 200 are retried;
    an eviction or a preemption does not count."""
    job = trainjob.build_runtime("ppo", load_cluster({"restart_policy": "ExitCode"}))
    rules = job["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    codes = set(rules[1]["onExitCodes"]["values"])
    assert rules[1]["action"] == "FailJob" and rules[1]["onExitCodes"]["operator"] == "In"
    assert {1, 2, 126, 127} <= codes and not codes & {0, 128, 137, 143, 200, 255}
    assert len(rules[1]["onExitCodes"]["values"]) <= 255  # the API's limit


def test_runtime_differences_name_what_a_run_cannot_change():
    runtime = trainjob.build_runtime("ppo", load_cluster({}))
    assert trainjob.runtime_differences(runtime, copy.deepcopy(runtime)) == []
    wanted = trainjob.build_runtime("ppo", load_cluster({"backoff_limit": 5, "run_as_user": 2000,
                                                         "restart_policy": "ExitCode"}))
    keys = [d.split(":")[0] for d in trainjob.runtime_differences(wanted, runtime)]
    assert keys == ["run_as_user", "restart_policy", "backoff_limit", "security_context"]
    # a run's /dev/shm size, placement and resources are the TrainJob's: they make no difference
    assert trainjob.runtime_differences(trainjob.build_runtime("ppo", load_cluster(
        {"shm_size": "16Gi", "gpus_per_node": 8, "procs_per_node": 8, "node_selector": {"a": "b"}})), runtime) == []


def test_golden_ppo_trainjob_and_runtime():
    """UPDATE_GOLDEN=1 rewrites tests/golden/trainjob-ppo.yaml and trainingruntime-ppo.yaml."""
    deployment = {"kueue_queue": "gpu-h100", "storage_endpoint": "http://minio.kuberlhf:9000",
                  "wandb_secret": "kuberlhf-wandb", "restart_policy": "ExitCode"}  # the chart's cluster.yaml
    cluster, job = render("ppo", "configs/ppo/demo.yaml",
                          ["output_dir=s3://kuberlhf/runs/ppo", "training.max_steps=200", "cluster.nodes=2",
                           "cluster.gpus_per_node=8", "cluster.procs_per_node=8", "cluster.gpu_product=h100"],
                          run_id="run-7f3c2a", task="ppo", cluster=deployment, backend="trainjob")
    runtime = trainjob.build_runtime("ppo", cluster)
    for obj, path in ((job, GOLDEN_JOB), (runtime, GOLDEN_RUNTIME)):
        if os.environ.get("UPDATE_GOLDEN"):
            path.write_text(f"# Rendered by tests/unit/test_trainjob.py::test_golden_ppo_trainjob_and_runtime "
                            f"(UPDATE_GOLDEN=1 rewrites it)\n{trainjob_yaml(obj)}")
        golden = load_documents(path.read_text())[0]
        assert obj == golden, f"rendered {obj['kind']} differs from {path.name} (UPDATE_GOLDEN=1 to accept)"
        assert crd_errors(golden) == []
    assert pss_restricted_errors(runtime) == []
    broken = copy.deepcopy(runtime)
    trainjob.runtime_pod(broken)["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    trainjob.runtime_pod(broken)["spec"]["restartPolicyy"] = "Never"
    assert pss_restricted_errors(broken) and crd_errors(broken)


def trainjob_yaml(obj: dict) -> str:
    from kuberlhf.k8s.pytorchjob import to_yaml

    return to_yaml(obj)


def run_cli(*argv):
    """(exit code, stdout, stderr) of ``kuberlhf ARGV`` in this process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code, err = helpers.run_cli(list(argv), capture=True)
    return code, out.getvalue(), err


def test_launch_dry_run_prints_a_trainjob_and_runtimes_prints_the_runtimes(tmp_path):
    manifest = tmp_path / "job.yaml"
    code, out, _ = run_cli("launch", "ppo", "--backend", "trainjob", "--dry-run", "--manifest-out", str(manifest))
    assert code == 0
    (job,) = load_documents(out)
    assert job["kind"] == "TrainJob" and crd_errors(job) == [] and manifest.read_text() == out
    assert job["spec"]["runtimeRef"]["name"] == "kuberlhf-ppo"
    code, out2, _ = run_cli("launch", "ppo", "--dry-run", "cluster.backend=trainjob")  # the same, from a run key
    assert code == 0 and load_documents(out2) == [job]
    code, text, _ = run_cli("runtimes", "cluster.gpus_per_node=8", "cluster.procs_per_node=8")
    runtimes = load_documents(text)
    assert code == 0 and [r["metadata"]["name"] for r in runtimes] == [
        "kuberlhf-dpo", "kuberlhf-ppo", "kuberlhf-reward", "kuberlhf-sft"]
    assert all(crd_errors(r) == [] and pss_restricted_errors(r) == [] for r in runtimes)
    assert yaml.safe_load(text.split("---")[1]) == runtimes[1]
    code, _, err = run_cli("runtimes", "training.max_steps=3")
    assert code == 2 and "only cluster.* overrides apply" in err
