"""A training stage as a Kubeflow PyTorchJob (kubeflow.org/v1): config in, manifest out.

Pure: no cluster, no I/O. The Master and the Workers run the stage's image with the same
command; the Training Operator gives each pod its place through ``PET_*`` variables
(``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``/``PORT``, or the rendezvous of an
elastic job), which torchrun reads as its defaults:

    torchrun --nproc_per_node=8 -m kuberlhf.cli sft --config configs/sft/demo.yaml key=value ...

Pods meet the "restricted" Pod Security Standard (non-root, no privilege escalation, all
capabilities dropped, RuntimeDefault seccomp) with a read-only root filesystem (they write only
to the ``/tmp`` and ``/data`` emptyDirs), mount no API token, get credentials only through
``secretKeyRef``, and carry ``kuberlhf.io/role: train``, the label the chart's NetworkPolicy
``kuberlhf-training`` selects them by.

$ kuberlhf launch sft --config configs/sft/demo.yaml --dry-run      # prints what this module renders
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from kuberlhf.distributed import GRACE_ENV
from kuberlhf.images import DATA_DIR
from kuberlhf.k8s.spec import GPU_PRODUCTS, ClusterConfig
from kuberlhf.stages.registry import stage_argv

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
CONTAINER = "pytorch"  # the operator finds the training container by this name
PORT_NAME, PORT = "pytorchjob-port", 23456  # the operator's defaults, set explicitly
CONFIG_MOUNT = "/etc/kuberlhf"
ANNOTATION_PREFIX = "kuberlhf.io/"
SHM_MOUNT = {"name": "dshm", "mountPath": "/dev/shm"}
POD_LABELS = {"kuberlhf.io/role": "train"}  # selected by the chart's kuberlhf-training NetworkPolicy


def stage_command(stage: str, config: str | None, overrides: list[str], cluster: ClusterConfig) -> list[str]:
    """The container's command: a launcher around ``kuberlhf.cli <stage> --config ... overrides``."""
    stage_args = stage_argv(stage, config, overrides)
    if cluster.launcher == "deepspeed":
        stage_args.append(f"training.deepspeed={cluster.deepspeed_config}")
    if cluster.launcher == "accelerate":
        world = cluster.nodes * cluster.procs_per_node
        cmd = ["accelerate", "launch", f"--num_processes={world}"]
        if world > 1:
            cmd.append("--multi_gpu")  # also the flag that starts several gloo processes on CPU
        if cluster.nodes > 1:  # $(VAR) is expanded by the kubelet from the operator's env
            cmd += [f"--num_machines={cluster.nodes}", "--machine_rank=$(PET_NODE_RANK)",
                    "--main_process_ip=$(PET_MASTER_ADDR)", "--main_process_port=$(PET_MASTER_PORT)"]
        return [*cmd, "-m", "kuberlhf.cli", *stage_args]
    # kuberlhf.torchrun: torchrun that exits with the failed worker's code (restartPolicy ExitCode reads it)
    return ["python", "-m", "kuberlhf.torchrun", f"--nproc_per_node={cluster.procs_per_node}", "-m", "kuberlhf.cli",
            *stage_args]


def container_env(cluster: ClusterConfig) -> list[dict]:
    """Plain settings, then credentials from Secrets; ``cluster.env`` replaces a default of the same name."""
    return plain_env(cluster) + secret_env(cluster)


def plain_env(cluster: ClusterConfig) -> list[dict]:
    plain = {"HOME": "/tmp",  # any UID can write there (an emptyDir): caches of HF, torch, triton
             GRACE_ENV: str(cluster.termination_grace_period_seconds)}  # what a stage has after SIGTERM
    if cluster.gpus_per_node:
        plain["NCCL_DEBUG"] = "WARN"
        plain["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"  # a hung collective ends the process, the pod restarts
    if cluster.storage_endpoint:
        plain["AWS_ENDPOINT_URL_S3"] = cluster.storage_endpoint
    plain.update(cluster.env)
    return [{"name": k, "value": v} for k, v in plain.items()]


def secret_env(cluster: ClusterConfig) -> list[dict]:
    """Credentials, only as ``secretKeyRef``: the object store's and, optionally, W&B's."""
    env = []
    if cluster.storage_secret:
        env += [_secret_env(key, cluster.storage_secret, key) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    if cluster.wandb_secret:  # optional: without it W&B runs offline
        env.append(_secret_env("WANDB_API_KEY", cluster.wandb_secret, "WANDB_API_KEY", optional=True))
    return env


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict:
    ref = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def resources(cluster: ClusterConfig) -> dict:
    requests = {"cpu": cluster.cpu, "memory": cluster.memory}
    limits = {"memory": cluster.memory_limit or cluster.memory}
    if cluster.cpu_limit:
        limits["cpu"] = cluster.cpu_limit
    if cluster.gpus_per_node:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(cluster.gpus_per_node)
    return {"requests": requests, "limits": limits}


def container_security_context(cluster: ClusterConfig) -> dict:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,  # HOME=/tmp; the images' caches are under /data
        "runAsNonRoot": True,
        "runAsUser": cluster.run_as_user,
        "runAsGroup": cluster.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def volumes(cluster: ClusterConfig) -> tuple[list[dict], list[dict]]:
    """(volumes, volume mounts): the images write only under /tmp and /data (caches, run work dirs), node-local
    scratch space; a memory-backed /dev/shm; the kuberlhf-config ConfigMap read-only at /etc/kuberlhf."""
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "data", "mountPath": DATA_DIR}]
    vols: list[dict] = [{"name": "tmp", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]
    if cluster.shm_size:
        mounts.append(dict(SHM_MOUNT))
        vols.append(shm_volume(cluster))
    if cluster.config_map:  # stage configs and cluster.yaml of the deployment; optional
        mounts.append({"name": "kuberlhf-config", "mountPath": CONFIG_MOUNT, "readOnly": True})
        vols.append({"name": "kuberlhf-config", "configMap": {"name": cluster.config_map, "optional": True}})
    return vols, mounts


def shm_volume(cluster: ClusterConfig) -> dict:
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}}


def pod_security_context(cluster: ClusterConfig) -> dict:
    return {
        "runAsNonRoot": True,
        "runAsUser": cluster.run_as_user,
        "runAsGroup": cluster.run_as_user,
        "fsGroup": cluster.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def placement(cluster: ClusterConfig) -> dict:
    """``nodeSelector``, ``tolerations`` and ``affinity`` of the pods (each only when there is one)."""
    selector = dict(cluster.node_selector)
    tolerations = [dict(t) for t in cluster.tolerations]
    if cluster.gpu_product:
        selector = {"nvidia.com/gpu.product": GPU_PRODUCTS[cluster.gpu_product], **selector}
    if cluster.gpus_per_node:
        tolerations.insert(0, {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    fields = (("nodeSelector", selector), ("tolerations", tolerations), ("affinity", copy.deepcopy(cluster.affinity)))
    return {k: v for k, v in fields if v}


def deployment_pod_spec(cluster: ClusterConfig) -> dict:
    """The pod fields the deployment decides: account, no API token, security context, priority, pull Secret."""
    spec: dict[str, Any] = {
        "serviceAccountName": cluster.service_account,
        "automountServiceAccountToken": False,  # training pods talk to object storage, never to the API
        "securityContext": pod_security_context(cluster),
        "terminationGracePeriodSeconds": cluster.termination_grace_period_seconds,
    }
    if cluster.priority_class:
        spec["priorityClassName"] = cluster.priority_class
    if cluster.image_pull_secret:
        spec["imagePullSecrets"] = [{"name": cluster.image_pull_secret}]
    return spec


def pod_spec(stage: str, config: str | None, overrides: list[str], cluster: ClusterConfig, image: str) -> dict:
    vols, mounts = volumes(cluster)
    container = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": cluster.image_pull_policy,
        "command": stage_command(stage, config, overrides, cluster),
        "env": container_env(cluster),
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": resources(cluster),
        "securityContext": container_security_context(cluster),
        "volumeMounts": mounts,
    }
    spec = deployment_pod_spec(cluster)
    spec.update(containers=[container], volumes=vols)
    where = placement(cluster)
    spec.update(where)
    # keep the order of earlier releases: placement before priority and pull Secret
    for key in ("priorityClassName", "imagePullSecrets"):
        if key in spec:
            spec[key] = spec.pop(key)
    return spec


def stage_labels(stage: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "kuberlhf", "app.kubernetes.io/component": stage,
            "app.kubernetes.io/managed-by": "kuberlhf", "kuberlhf.io/stage": stage}


def build_pytorchjob(stage: str, config: str | None, overrides: list[str] | None, cluster: ClusterConfig,
                     name: str, annotations: dict[str, str] | None = None) -> dict:
    """The PyTorchJob (a plain dict, camelCase) that runs ``stage`` with ``config`` and ``overrides``."""
    from kuberlhf.images import image_ref

    overrides = list(overrides or [])
    image = cluster.image or image_ref(stage)
    labels = stage_labels(stage)
    template = {
        # Istio sidecars (Kubeflow profile namespaces) would keep a finished pod running
        "metadata": {"labels": {**labels, **POD_LABELS}, "annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": pod_spec(stage, config, overrides, cluster, image),
    }
    if run_id := (annotations or {}).get("run-id"):  # the output_dir's lease names the run (artifacts.lease)
        for container in template["spec"]["containers"]:
            container["env"].insert(0, {"name": "KUBERLHF_RUN_ID", "value": str(run_id)})

    def replica(count: int) -> dict:
        return {"replicas": count, "restartPolicy": cluster.restart_policy, "template": copy.deepcopy(template)}

    if cluster.elastic:  # all Workers: the rendezvous runs on worker-0
        replicas = {"Worker": replica(cluster.nodes)}
    else:
        replicas = {"Master": replica(1)}
        if cluster.nodes > 1:
            replicas["Worker"] = replica(cluster.nodes - 1)
    run_policy: dict[str, Any] = {
        "backoffLimit": cluster.backoff_limit,
        "cleanPodPolicy": cluster.clean_pod_policy,
        "ttlSecondsAfterFinished": cluster.ttl_seconds_after_finished,
    }
    if cluster.active_deadline_seconds:
        run_policy["activeDeadlineSeconds"] = cluster.active_deadline_seconds
    if cluster.gang_scheduling:
        policy: dict[str, Any] = {"minAvailable": cluster.nodes}
        if cluster.priority_class:
            policy["priorityClass"] = cluster.priority_class
        run_policy["schedulingPolicy"] = policy
    spec: dict[str, Any] = {"nprocPerNode": str(cluster.procs_per_node), "pytorchReplicaSpecs": replicas,
                            "runPolicy": run_policy}
    if cluster.elastic:
        spec["elasticPolicy"] = {"rdzvBackend": "c10d", "minReplicas": cluster.elastic_min_nodes,
                                 "maxReplicas": cluster.elastic_max_nodes, "maxRestarts": cluster.elastic_max_restarts}
    return job_object(API_VERSION, KIND, name, cluster, labels, annotations, spec, spec_hash(spec))


def job_object(api_version: str, kind: str, name: str, cluster: ClusterConfig, labels: dict[str, str],
               annotations: dict[str, str] | None, spec: dict, digest: str) -> dict:
    """A job: its labels (and Kueue's queue label), the ``kuberlhf.io/`` annotations with the spec's digest."""
    job_labels = dict(labels)
    if cluster.kueue_queue:
        job_labels["kueue.x-k8s.io/queue-name"] = cluster.kueue_queue
    meta_annotations = {f"{ANNOTATION_PREFIX}{k}": str(v) for k, v in (annotations or {}).items()}
    meta_annotations[f"{ANNOTATION_PREFIX}spec-hash"] = digest
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": cluster.namespace, "labels": job_labels,
                     "annotations": meta_annotations},
        "spec": spec,
    }


def spec_hash(spec: dict) -> str:
    """A short digest of a job spec: a re-attached job whose spec differs is reported."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def primary_pod(job: dict) -> str:
    """Name of the pod whose log explains a failure: master-0, or worker-0 of an elastic job."""
    kinds = (job.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    role = "master" if "Master" in kinds else "worker"
    return f"{job['metadata']['name']}-{role}-0"


def to_yaml(job: dict) -> str:
    """Block-style YAML in the builder's key order; a list of numbers (exit codes) on one line."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def numbers(dumper, data):
        flow = bool(data) and all(isinstance(v, int) and not isinstance(v, bool) for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow or None)

    Dumper.add_representer(list, numbers)
    return yaml.dump(job, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=1000)


__all__ = ["build_pytorchjob", "stage_command", "primary_pod", "to_yaml", "GROUP", "VERSION", "PLURAL"]
