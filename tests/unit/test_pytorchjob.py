"""The PyTorchJob builder and `kuberlhf launch --dry-run`: every job it renders passes the real
PyTorchJob CRD schema strictly and the restricted Pod Security Standard; credentials only by Secret."""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import os
import re
from pathlib import Path

import pytest
import yaml
from k8schecks import K8S_VERSIONS, builtin_errors, crd_errors, load_documents, pss_restricted_errors

from kuberlhf.cli import main
from kuberlhf.errors import ConfigError
from kuberlhf.k8s.launcher import job_name, render
from kuberlhf.k8s.pytorchjob import build_pytorchjob
from kuberlhf.k8s.spec import ClusterConfig, load_cluster

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "pytorchjob-ppo.yaml"


pytestmark = pytest.mark.usefixtures("hermetic_cluster")


def containers(job):
    for kind, replica in job["spec"]["pytorchReplicaSpecs"].items():
        for c in replica["template"]["spec"]["containers"]:
            yield kind, replica, c


# ---------------------------------------------------------------- the option matrix
GPU = {"cpu": {}, "a100": {"gpus_per_node": 8, "procs_per_node": 8, "gpu_product": "a100"},
       "h100": {"gpus_per_node": 8, "procs_per_node": 8, "gpu_product": "h100"}}
ZONE_AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                                                 "values": ["zone-a"]}]}]}}}
LAUNCHER = {"torchrun": {}, "accelerate": {"launcher": "accelerate"},
            "deepspeed": {"launcher": "deepspeed", "deepspeed_config": "configs/deepspeed/zero3.json"}}
BASE = [(f"nodes{n}-{g}-{launcher}", {"nodes": n, **GPU[g], **LAUNCHER[launcher]})
        for n, g, launcher in itertools.product((1, 2, 4), GPU, LAUNCHER)]
EXTRA = []
for i, (restart, elastic, kueue, secrets, clean) in enumerate(
        itertools.product(("OnFailure", "ExitCode"), (False, True), (False, True), (False, True),
                          ("Running", "All", "None"))):
    opts = {"nodes": (1, 2, 4)[i % 3], **list(GPU.values())[i % 3], "restart_policy": restart,
            "clean_pod_policy": clean, "launcher": "torchrun" if i % 2 else "deepspeed",
            "deepspeed_config": "" if i % 2 else "configs/deepspeed/zero2.json"}
    if elastic:
        opts.update(elastic_min_nodes=1, elastic_max_nodes=opts["nodes"] + 2, elastic_max_restarts=5)
    if kueue:
        opts.update(kueue_queue="team-a", priority_class="high", gang_scheduling=True)
    if secrets:
        opts.update(storage_secret="s3-creds", wandb_secret="kuberlhf-wandb", storage_endpoint="http://minio:9000",
                    image_pull_secret="regcred", env={"NCCL_DEBUG": "INFO", "LOG_LEVEL": 3})
    else:
        opts.update(storage_secret="", wandb_secret="", config_map="")
    if i % 4 == 0:
        opts.update(active_deadline_seconds=3600, cpu_limit=8, memory_limit="16Gi", shm_size="",
                    node_selector={"pool": "train"}, tolerations=[{"key": "spot", "operator": "Exists"}],
                    affinity=ZONE_AFFINITY)
    EXTRA.append((f"{restart}-{'elastic' if elastic else 'fixed'}-{'kueue' if kueue else 'nokueue'}-"
                  f"{'secrets' if secrets else 'nosecrets'}-{clean}", opts))


@pytest.mark.parametrize("opts", [o for _, o in BASE + EXTRA], ids=[i for i, _ in BASE + EXTRA])
def test_every_option_combination_is_a_valid_restricted_pytorchjob(opts):
    cluster = load_cluster(opts)
    job = build_pytorchjob("sft", "configs/sft/demo.yaml", ["output_dir=s3://b/sft"], cluster, "sft-run-1234abcd")
    assert crd_errors(job) == []
    assert pss_restricted_errors(job) == []

    kinds = job["spec"]["pytorchReplicaSpecs"]
    assert sum(r["replicas"] for r in kinds.values()) == cluster.nodes
    if cluster.elastic:
        assert set(kinds) == {"Worker"}
        assert job["spec"]["elasticPolicy"]["minReplicas"] <= cluster.nodes <= job["spec"]["elasticPolicy"]["maxReplicas"]
    else:
        assert kinds["Master"]["replicas"] == 1 and "elasticPolicy" not in job["spec"]
    assert job["spec"]["nprocPerNode"] == str(cluster.procs_per_node)
    run_policy = job["spec"]["runPolicy"]
    assert run_policy["backoffLimit"] == cluster.backoff_limit
    assert run_policy["cleanPodPolicy"] == cluster.clean_pod_policy
    assert ("schedulingPolicy" in run_policy) == cluster.gang_scheduling
    assert (job["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") or "") == cluster.kueue_queue
    for _, replica, c in containers(job):
        pod = replica["template"]["spec"]
        assert replica["restartPolicy"] == cluster.restart_policy
        assert c["name"] == "pytorch" and c["ports"][0]["name"] == "pytorchjob-port"
        gpus = c["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == (str(cluster.gpus_per_node) if cluster.gpus_per_node else None)
        if cluster.gpu_product:
            assert pod["nodeSelector"]["nvidia.com/gpu.product"].startswith(f"NVIDIA-{cluster.gpu_product.upper()}")
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod.get("affinity", {}) == cluster.affinity
        shm = [v for v in pod["volumes"] if v["name"] == "dshm"]
        assert shm == ([{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}}]
                       if cluster.shm_size else [])
        command = " ".join(c["command"])
        assert command.startswith({"accelerate": "accelerate launch"}.get(cluster.launcher, "python -m kuberlhf.torchrun"))
        assert ("training.deepspeed=configs/deepspeed/" in command) == (cluster.launcher == "deepspeed")
        assert_no_literal_credentials(c["env"])


def assert_no_literal_credentials(env):
    for var in env:
        if re.search(r"KEY|SECRET|TOKEN|PASSWORD", var["name"]):
            assert "value" not in var, f"{var['name']} has a literal value"
            assert set(var["valueFrom"]) == {"secretKeyRef"}


def test_credentials_come_only_from_secret_refs(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak-1234")
    monkeypatch.setenv("WANDB_API_KEY", "do-not-leak-5678")
    cluster = load_cluster({"wandb_secret": "kuberlhf-wandb", "storage_endpoint": "http://minio:9000"})
    job = build_pytorchjob("ppo", "configs/ppo/demo.yaml", [], cluster, "ppo-x")
    text = yaml.safe_dump(job)
    assert "do-not-leak" not in text
    env = {e["name"]: e for e in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "kuberlhf-s3", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["AWS_ENDPOINT_URL_S3"] == {"name": "AWS_ENDPOINT_URL_S3", "value": "http://minio:9000"}
    assert_no_literal_credentials(env.values())
    with pytest.raises(AssertionError, match="literal value"):  # the check itself catches a literal credential
        assert_no_literal_credentials([{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}])
    for name in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "wandb_api_key"):  # plain env may not carry credentials
        with pytest.raises(ConfigError, match=f"'cluster.env': '{name}' looks like a credential"):
            load_cluster({"env": {name: "x"}})


def test_validators_catch_broken_manifests():
    job = build_pytorchjob("sft", "configs/sft/demo.yaml", [], load_cluster({"nodes": 2}), "sft-x")
    assert crd_errors(job) == [] and pss_restricted_errors(job) == []

    typo = copy.deepcopy(job)
    typo["spec"]["runPolicy"]["restartPolicy"] = "OnFailure"  # belongs on the replica
    assert any("restartPolicy" in e for e in crd_errors(typo))
    unknown = copy.deepcopy(job)
    unknown["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["gpus"] = 8
    assert any("gpus" in e for e in crd_errors(unknown))
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["nprocPerNode"] = 8
    assert crd_errors(wrong_type)
    long_name = copy.deepcopy(job)
    long_name["metadata"]["name"] = "x" * 64
    assert any("metadata.name" in e for e in crd_errors(long_name))

    insecure = copy.deepcopy(job)
    for replica in insecure["spec"]["pytorchReplicaSpecs"].values():
        del replica["template"]["spec"]["securityContext"]
        del replica["template"]["spec"]["containers"][0]["securityContext"]
    errors = pss_restricted_errors(insecure)
    assert any("allowPrivilegeEscalation" in e for e in errors) and any("runAsNonRoot" in e for e in errors)
    root = copy.deepcopy(job)
    root["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["securityContext"]["runAsUser"] = 0
    root["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUser"] = 0
    assert any("runAsUser must not be 0" in e for e in pss_restricted_errors(root))


def test_golden_ppo_job():
    """UPDATE_GOLDEN=1 rewrites tests/golden/pytorchjob-ppo.yaml; otherwise the rendering must match it."""
    deployment = {"kueue_queue": "gpu-h100", "storage_endpoint": "http://minio.kuberlhf:9000",
                  "wandb_secret": "kuberlhf-wandb", "restart_policy": "ExitCode"}  # the chart's cluster.yaml
    _, job = render("ppo", "configs/ppo/demo.yaml",
                    ["output_dir=s3://kuberlhf/runs/ppo", "training.max_steps=200", "cluster.nodes=2",
                     "cluster.gpus_per_node=8", "cluster.procs_per_node=8", "cluster.gpu_product=h100"],
                    run_id="run-7f3c2a", task="ppo", cluster=deployment)
    text = yaml.safe_dump(job, sort_keys=False, width=1000)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text("# Rendered by tests/unit/test_pytorchjob.py::test_golden_ppo_job (UPDATE_GOLDEN=1 rewrites it)\n"
                          + text)
    golden = load_documents(GOLDEN.read_text())[0]
    assert job == golden, "rendered job differs from tests/golden/pytorchjob-ppo.yaml (UPDATE_GOLDEN=1 to accept)"
    assert crd_errors(golden) == [] and pss_restricted_errors(golden) == []
    # the pod template is also a valid Pod for the oldest and newest Kubernetes supported
    template = golden["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **template["metadata"]}, "spec": template["spec"]}
    for version in K8S_VERSIONS:
        assert builtin_errors(pod, version) == []
    broken = copy.deepcopy(pod)
    broken["spec"]["containers"][0]["resource"] = {}
    assert builtin_errors(broken, K8S_VERSIONS[0])


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_launch_ppo_dry_run_prints_a_valid_restricted_job(tmp_path):
    manifest = tmp_path / "job.yaml"
    code, out, _ = run_cli("launch", "ppo", "--dry-run", "--manifest-out", str(manifest))
    assert code == 0
    docs = load_documents(out)
    assert len(docs) == 1 and docs[0]["kind"] == "PyTorchJob"
    assert crd_errors(docs[0]) == [] and pss_restricted_errors(docs[0]) == []
    assert load_documents(manifest.read_text()) == docs
    command = docs[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert command[-3:] == ["ppo", "--config", "configs/ppo/demo.yaml"]
    # the same command names the same job (a relaunch re-attaches); flags may follow the stage and overrides
    assert run_cli("launch", "ppo", "--dry-run")[1] == out
    code, out2, _ = run_cli("launch", "ppo", "output_dir=s3://b/p", "--dry-run", "cluster.nodes=2")
    job2 = load_documents(out2)[0]
    assert code == 0 and job2["metadata"]["name"] != docs[0]["metadata"]["name"]
    assert job2["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert "output_dir=s3://b/p" in job2["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]


@pytest.mark.parametrize("argv, key", [
    (["cluster.nodez=2"], "unknown config key 'cluster.nodez' (did you mean 'cluster.nodes'?)"),
    (["cluster.nodes=0"], "cluster.nodes"),
    (["cluster.gpu_product=v100"], "cluster.gpu_product"),
    (["cluster.memory=lots"], "cluster.memory"),
    (["cluster.memory_limit=4Gi"], "cluster.memory_limit"),  # below the request (8Gi)
    (["cluster.cpu=4", "cluster.cpu_limit=500m"], "cluster.cpu_limit"),
    (["cluster.affinity={nodeAfinity: {}}"], "cluster.affinity"),
    (["cluster.launcher=deepspeed"], "cluster.deepspeed_config"),
    (["cluster.launcher=deepspeed", "cluster.deepspeed_config=configs/deepspeed/zero9.json"], "training.deepspeed"),
    (["training.max_stepz=3"], "training.max_stepz"),
    (["--name", "Bad_Name"], "job name 'Bad_Name'"),
])
def test_bad_keys_fail_on_one_line_naming_the_key(argv, key):
    code, out, err = run_cli("launch", "ppo", "--dry-run", *argv)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and key in lines[0], err


def test_cluster_settings_layer_file_over_mount_over_defaults(tmp_path, monkeypatch):
    mounted = tmp_path / "cluster.yaml"
    mounted.write_text("namespace: team-a\nnodes: 2\ncpu: 4\n")
    given = tmp_path / "given.yaml"
    given.write_text("nodes: 3\n")
    monkeypatch.setenv("KUBERLHF_CLUSTER_CONFIG", str(mounted))
    cfg = load_cluster(str(given), ["cluster.memory=16Gi"])
    assert (cfg.namespace, cfg.nodes, cfg.cpu, cfg.memory, cfg.shm_size) == ("team-a", 3, "4", "16Gi", "2Gi")
    assert load_cluster({"nodes": 4}).nodes == 4 and load_cluster().nodes == 2
    assert load_cluster(ClusterConfig(nodes=5), ["nodes=6"]).nodes == 6  # an instance ignores the mounted file
    assert load_cluster(ClusterConfig(nodes=5)).namespace == "kuberlhf"


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "cluster").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_cluster_configs_render_valid_jobs(path):
    assert path.read_text().splitlines()[1].startswith("# $ kuberlhf launch")
    for stage in ("sft", "ppo"):
        cluster = load_cluster(path)
        _, job = render(stage, f"configs/{stage}/demo.yaml", ["output_dir=s3://b/x"], "run-1", stage, cluster)
        assert crd_errors(job) == [] and pss_restricted_errors(job) == []


def test_deepspeed_passes_its_config_to_the_stage_and_needs_a_stage_that_has_it(monkeypatch):
    ds = {"launcher": "deepspeed", "deepspeed_config": "configs/deepspeed/zero2.json"}
    for stage in ("sft", "ppo"):
        _, job = render(stage, f"configs/{stage}/demo.yaml", [], "r", stage, ds)
        command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
        assert command[:3] == ["python", "-m", "kuberlhf.torchrun"]
        assert "training.deepspeed=configs/deepspeed/zero2.json" in command
        assert command[command.index("kuberlhf.cli") : command.index("kuberlhf.cli") + 2] == ["kuberlhf.cli", stage]
        assert crd_errors(job) == [] and pss_restricted_errors(job) == []
    import dataclasses

    from kuberlhf.stages.registry import STAGES

    # every shipped stage runs under DeepSpeed; a stage the registry marks otherwise is refused
    monkeypatch.setitem(STAGES, "ppo", dataclasses.replace(STAGES["ppo"], deepspeed=False))
    with pytest.raises(ConfigError, match="'cluster.launcher': stage 'ppo' does not run under DeepSpeed"):
        render("ppo", "configs/ppo/demo.yaml", [], "r", "ppo", ds)


def test_accelerate_multi_node_takes_rank_from_the_operator():
    cluster = load_cluster({"launcher": "accelerate", "nodes": 2, "procs_per_node": 4, "gpus_per_node": 4})
    job = build_pytorchjob("dpo", "configs/dpo/demo.yaml", [], cluster, "dpo-x")
    command = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["accelerate", "launch", "--num_processes=8", "--multi_gpu"]
    assert "--machine_rank=$(PET_NODE_RANK)" in command and "--num_machines=2" in command
    with pytest.raises(ConfigError, match="'cluster.launcher': accelerate cannot run elastic"):
        load_cluster({"launcher": "accelerate", "elastic_min_nodes": 1, "elastic_max_nodes": 2})
    with pytest.raises(ConfigError, match="cluster.procs_per_node"):
        load_cluster({"procs_per_node": 8, "gpus_per_node": 4})


def test_job_names_are_deterministic_dns1035_labels():
    name = job_name("2f1c9a7e-4b1d-4e8f-9c3a-5d6e7f8a9b0c", "ppo")
    assert name == job_name("2f1c9a7e-4b1d-4e8f-9c3a-5d6e7f8a9b0c", "ppo")
    assert name != job_name("2f1c9a7e-4b1d-4e8f-9c3a-5d6e7f8a9b0c", "sft")
    assert name != job_name("2f1c9a7e-4b1d-4e8f-9c3a-5d6e7f8a9b0d", "ppo")  # same slug, other run
    for run_id, task in [("R" * 200, "Reward_Model.Train" * 5), ("123", "9task"), ("", "x"), ("--", "--")]:
        name = job_name(run_id, task)
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47, name


# ---------------------------------------------------------------- hardening
def _image_writable_env(image: str) -> dict[str, str]:
    """The cache and config directories an image's Dockerfile points its libraries at (ENV lines)."""
    text = (REPO / "images" / image / "Dockerfile").read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r"([A-Z_]+)=(\S+)", line):
                if re.search(r"CACHE|CONFIG|_HOME$|_DIR$", key) and value.startswith("/") and key != "VIRTUAL_ENV":
                    found[key] = value
    return found


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo", "dpo", "rloo", "grpo"])
def test_training_containers_have_a_read_only_root_and_write_only_to_mounts(stage):
    from kuberlhf.images import STAGE_IMAGE

    job = build_pytorchjob(stage, f"configs/{stage}/demo.yaml", [], load_cluster({"nodes": 2}), f"{stage}-run-1")
    image_env = _image_writable_env(STAGE_IMAGE[stage])
    assert {"HF_HOME", "XDG_CACHE_HOME", "TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR"} <= set(image_env)
    for _, _, c in containers(job):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
        env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        for key, path in {"HOME": env["HOME"], **image_env}.items():
            assert any(path == w or path.startswith(w + "/") for w in writable), f"{key}={path} not on {writable}"


def test_training_pods_carry_the_network_policy_label():
    job = build_pytorchjob("ppo", "configs/ppo/demo.yaml", [], load_cluster({"nodes": 3}), "ppo-run-1")
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        assert replica["template"]["metadata"]["labels"]["kuberlhf.io/role"] == "train"
    assert "kuberlhf.io/role" not in job["metadata"]["labels"]  # the job object is no pod: no policy selects it


def test_a_digest_image_reference_is_used_as_given():
    ref = "ghcr.io/kuberlhf/kuberlhf-sft@sha256:" + "ab" * 32
    job = build_pytorchjob("sft", "configs/sft/demo.yaml", [], load_cluster({"image": ref}), "sft-run-1")
    assert {c["image"] for _, _, c in containers(job)} == {ref}


def test_pods_get_the_grace_period_a_stage_needs_to_checkpoint_after_sigterm():
    """terminationGracePeriodSeconds (Kubernetes' 30 s default is short for a checkpoint of a large model) and
    the same figure in KUBERLHF_GRACE_PERIOD_S, where a stage reads how long it has; a runtime differing in it
    is named."""
    from kuberlhf.distributed import GRACE_ENV
    from kuberlhf.k8s import trainjob

    for seconds, cluster in ((300, load_cluster({})), (900, load_cluster({"termination_grace_period_seconds": 900}))):
        job = build_pytorchjob("sft", "configs/sft/demo.yaml", [], cluster, "sft-run-1234abcd")
        for replica in job["spec"]["pytorchReplicaSpecs"].values():
            assert replica["template"]["spec"]["terminationGracePeriodSeconds"] == seconds
            (container,) = replica["template"]["spec"]["containers"]
            assert {"name": GRACE_ENV, "value": str(seconds)} in container["env"]
        runtime = trainjob.build_runtime("sft", cluster)
        assert trainjob.runtime_pod(runtime)["spec"]["terminationGracePeriodSeconds"] == seconds
    assert trainjob.runtime_differences(trainjob.build_runtime("sft", cluster), trainjob.build_runtime("sft", load_cluster({}))) == [
        "termination_grace_period_seconds: the runtime has 300, the cluster settings want 900"]
    with pytest.raises(ConfigError, match="cluster.termination_grace_period_seconds"):
        load_cluster({"termination_grace_period_seconds": -1})
