"""A training stage as a Kubeflow Trainer v2 TrainJob, and the TrainingRuntime it references.

Pure: no cluster, no I/O. Trainer v2 splits a job in two. The *runtime* (one per stage image,
installed by the chart: ``kuberlhf-sft``, ``-reward``, ``-ppo``, ``-dpo``) is the platform's part:
the pod template with the restricted Pod Security Standard (non-root, no privilege escalation, all
capabilities dropped, RuntimeDefault seccomp, read-only root with ``/tmp`` and ``/data``
emptyDirs, no API token), a memory-backed ``/dev/shm``, the object-store and W&B Secrets as env,
the training ServiceAccount, the restart rules and the TTL. The *TrainJob* is the run's part: the
image, the command, plain env, nodes, processes and resources per node, and (as ``runtimePatches``)
the node selectors, tolerations, ``/dev/shm`` size and the stage's pod labels.

Trainer's torch policy gives each pod the same ``PET_*`` variables the Training Operator does
(``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``/``PORT``), so the
pods run the command a PyTorchJob runs (:func:`kuberlhf.k8s.pytorchjob.stage_command`), DeepSpeed
included (``training.deepspeed=...`` under torchrun; no MPI, no sshd).

A PyTorchJob's ``restartPolicy: ExitCode`` (restart on exit codes 128-255, fail on 1-127) becomes
the Job's ``podFailurePolicy``: exit 1-127 fails the TrainJob at once (bad input exits 2), a
signal or a storage outage (exit 200) counts against ``backoffLimit``, and an eviction or
preemption (``DisruptionTarget``) does not count at all.

What a run cannot change in the runtime (its account, Secrets, UID, restart rules, TTL, pull
Secret, priority) the launcher compares with the cluster settings before it creates a TrainJob
(:func:`runtime_differences`), so both backends run the same pods.

$ kuberlhf launch sft --backend trainjob --dry-run      # prints what this module renders
"""

from __future__ import annotations

import copy
from typing import Any

from kuberlhf.errors import ConfigError
from kuberlhf.k8s.pytorchjob import (
    POD_LABELS,
    SHM_MOUNT,
    container_security_context,
    deployment_pod_spec,
    job_object,
    placement,
    plain_env,
    resources,
    secret_env,
    shm_volume,
    spec_hash,
    stage_command,
    stage_labels,
    volumes,
)
from kuberlhf.k8s.spec import ClusterConfig

GROUP, VERSION = "trainer.kubeflow.org", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND, PLURAL = "TrainJob", "trainjobs"
RUNTIME_KINDS = {"TrainingRuntime": "trainingruntimes", "ClusterTrainingRuntime": "clustertrainingruntimes"}
NODE = "node"  # Trainer's name of the trainer step's replicated job and of its training container
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
PATCH_MANAGER = "kuberlhf.io/launcher"  # owner of the TrainJob's runtimePatches entry
# what Trainer's torch policy sets in the node container: a TrainJob may not set them
RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
# exit codes that end a TrainJob at once under restart_policy=ExitCode, as the Training Operator reads them
PERMANENT_EXIT_CODES = list(range(1, 128))


def runtime_name(image: str) -> str:
    """``kuberlhf-<image>``: the runtime of a stage image (sft, reward, ppo, dpo)."""
    return f"kuberlhf-{image}"


def stage_runtime(stage: str) -> str:
    from kuberlhf.images import STAGE_IMAGE

    return runtime_name(STAGE_IMAGE[stage])


def training_images() -> list[str]:
    """The stage images a runtime is rendered for: every image a training stage runs in."""
    from kuberlhf.stages.registry import STAGES

    return sorted({s.image for s in STAGES.values()})


def check_backend(cluster: ClusterConfig) -> None:
    """Refuse what Trainer v2.3's torch policy cannot run, naming the key."""
    if cluster.elastic:
        raise ConfigError("config key 'cluster.elastic_max_nodes': the trainjob backend has no elastic training "
                          "(Trainer v2.3's torch policy); use backend pytorchjob or set elastic_* to 0")
    reserved = sorted(set(cluster.env) & set(RESERVED_ENV))
    if reserved:
        raise ConfigError(f"config key 'cluster.env': {', '.join(reserved)} is set by Kubeflow Trainer's torch policy "
                          "in every TrainJob pod; remove it")


# ---------------------------------------------------------------- the runtime (the platform's part)
def build_runtime(image: str, cluster: ClusterConfig, kind: str = "TrainingRuntime") -> dict:
    """The TrainingRuntime (or ClusterTrainingRuntime) ``kuberlhf-<image>`` for the cluster settings."""
    from kuberlhf.images import image_ref

    if kind not in RUNTIME_KINDS:
        raise ConfigError(f"runtime kind {kind!r}: one of {', '.join(RUNTIME_KINDS)}")
    vols, mounts = volumes(cluster)
    container: dict[str, Any] = {
        "name": NODE,
        "image": image_ref(image),
        "imagePullPolicy": cluster.image_pull_policy,
        "securityContext": container_security_context(cluster),
        "volumeMounts": mounts,
    }
    if env := secret_env(cluster):
        container["env"] = env
    pod = deployment_pod_spec(cluster)
    pod.update(restartPolicy="Never" if cluster.restart_policy == "ExitCode" else "OnFailure",
               containers=[container], volumes=vols)
    job_spec: dict[str, Any] = {"backoffLimit": cluster.backoff_limit}
    if cluster.restart_policy == "ExitCode":
        job_spec["podFailurePolicy"] = {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": NODE, "operator": "In",
                                                  "values": PERMANENT_EXIT_CODES}},
        ]}
    job_spec["template"] = {
        # Istio sidecars (Kubeflow profile namespaces) would keep a finished pod running
        "metadata": {"labels": {"app.kubernetes.io/name": "kuberlhf", "app.kubernetes.io/managed-by": "kuberlhf",
                                **POD_LABELS},
                     "annotations": {"sidecar.istio.io/inject": "false"}},
        "spec": pod,
    }
    spec: dict[str, Any] = {
        "mlPolicy": {"numNodes": 1, "torch": {}},
        "template": {"spec": {
            "ttlSecondsAfterFinished": cluster.ttl_seconds_after_finished,
            "replicatedJobs": [{"name": NODE, "template": {"metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
                                                          "spec": job_spec}}],
        }},
    }
    if cluster.gang_scheduling:  # scheduler-plugins' coscheduling: all nodes of a job or none
        spec["podGroupPolicy"] = {"coscheduling": {"scheduleTimeoutSeconds": 60}}
    metadata: dict[str, Any] = {"name": runtime_name(image)}
    if kind == "TrainingRuntime":
        metadata["namespace"] = cluster.namespace
    metadata["labels"] = {"trainer.kubeflow.org/framework": "torch", "app.kubernetes.io/name": "kuberlhf",
                          "app.kubernetes.io/component": "runtime", "app.kubernetes.io/part-of": "kuberlhf",
                          "kuberlhf.io/image": image}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "spec": spec}


def runtime_pod(runtime: dict) -> dict:
    """The trainer step's pod template of a runtime (metadata and spec)."""
    for job in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        if job["name"] == NODE:
            return job["template"]["spec"]["template"]
    raise KeyError(f"{runtime['metadata']['name']}: no replicated job {NODE!r}")


def _node_container(pod_spec: dict) -> dict:
    return next(c for c in pod_spec.get("containers") or [] if c.get("name") == NODE)


def runtime_settings(runtime: dict) -> dict[str, Any]:
    """What a runtime fixes for every TrainJob, by cluster key: the fields the launcher compares."""
    replicated = next(j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"] if j["name"] == NODE)
    job, pod = replicated["template"]["spec"], replicated["template"]["spec"]["template"]["spec"]
    container = _node_container(pod)
    security = pod.get("securityContext") or {}
    rules = (job.get("podFailurePolicy") or {}).get("rules") or []
    fails_fast = any(r.get("action") == "FailJob" for r in rules)
    return {
        "service_account": pod.get("serviceAccountName", ""),
        "automount_service_account_token": pod.get("automountServiceAccountToken"),
        "run_as_user": security.get("runAsUser"),
        "restart_policy": "ExitCode" if fails_fast else "OnFailure",
        "backoff_limit": job.get("backoffLimit"),
        "ttl_seconds_after_finished": runtime["spec"]["template"]["spec"].get("ttlSecondsAfterFinished"),
        "termination_grace_period_seconds": pod.get("terminationGracePeriodSeconds"),
        "priority_class": pod.get("priorityClassName", ""),
        "image_pull_secret": ",".join(s.get("name", "") for s in pod.get("imagePullSecrets") or []),
        "image_pull_policy": container.get("imagePullPolicy"),
        "gang_scheduling": bool((runtime["spec"].get("podGroupPolicy") or {}).get("coscheduling")),
        "secrets": sorted((e["name"], e["valueFrom"]["secretKeyRef"]["name"]) for e in container.get("env") or []
                          if "secretKeyRef" in (e.get("valueFrom") or {})),
        "config_map": next((v["configMap"]["name"] for v in pod.get("volumes") or [] if "configMap" in v), ""),
        # /dev/shm is the TrainJob's (runtimePatches); the others are the runtime's
        "volumes": sorted(v["name"] for v in pod.get("volumes") or [] if v["name"] != "dshm"),
        "security_context": (security, container.get("securityContext")),
    }


def runtime_differences(expected: dict, live: dict) -> list[str]:
    """``key: runtime has X, cluster settings want Y`` for each setting where ``live`` differs from ``expected``."""
    want, have = runtime_settings(expected), runtime_settings(live)
    return [f"{key}: the runtime has {have.get(key)!r}, the cluster settings want {value!r}"
            for key, value in want.items() if have.get(key) != value]


# ---------------------------------------------------------------- the TrainJob (the run's part)
def build_trainjob(stage: str, config: str | None, overrides: list[str] | None, cluster: ClusterConfig,
                   name: str, annotations: dict[str, str] | None = None,
                   runtime_kind: str = "TrainingRuntime") -> dict:
    """The TrainJob (a plain dict, camelCase) that runs ``stage`` on its runtime ``kuberlhf-<image>``."""
    from kuberlhf.images import image_ref

    check_backend(cluster)
    overrides = list(overrides or [])
    env = plain_env(cluster)
    if run_id := (annotations or {}).get("run-id"):  # the output_dir's lease names the run (artifacts.lease)
        env.insert(0, {"name": "KUBERLHF_RUN_ID", "value": str(run_id)})
    trainer = {
        "image": cluster.image or image_ref(stage),
        "command": stage_command(stage, config, overrides, cluster),
        "env": env,
        "numNodes": cluster.nodes,
        "numProcPerNode": cluster.procs_per_node,
        "resourcesPerNode": resources(cluster),
    }
    labels = stage_labels(stage)
    pod_patch: dict[str, Any] = dict(placement(cluster))
    if cluster.shm_size:  # the run's /dev/shm size (volumes merge by name, mounts by path)
        pod_patch["containers"] = [{"name": NODE, "volumeMounts": [SHM_MOUNT]}]
        pod_patch["volumes"] = [shm_volume(cluster)]
    patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": NODE, "template": {"spec": {"template": {"metadata": {"labels": dict(labels)},
                                                          "spec": pod_patch}}}}]}}}}
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": runtime_kind, "name": stage_runtime(stage)},
        "trainer": trainer,
        "runtimePatches": [patch],
    }
    if cluster.active_deadline_seconds:
        spec["activeDeadlineSeconds"] = cluster.active_deadline_seconds
    if cluster.kueue_queue:  # Kueue admits the job by unsuspending it, all nodes at once
        spec["suspend"] = True
    digest = spec_hash({k: v for k, v in spec.items() if k != "suspend"})  # Kueue changes suspend
    return job_object(API_VERSION, KIND, name, cluster, labels, annotations, spec, digest)


def effective_pod(runtime: dict, trainjob: dict) -> dict:
    """The trainer node's pod template as Trainer v2.3 builds it from ``runtime`` and ``trainjob``.

    The TrainJob's image, command and args replace the node container's; its env is upserted by name; its
    ``resourcesPerNode`` are merged over the container's resources; each ``runtimePatches`` entry is a
    strategic merge of the pod template (labels and ``nodeSelector`` merge, ``tolerations`` are replaced,
    ``volumes`` merge by name). Trainer's own ``PET_*`` variables and port are left out. For checks
    and ``--dry-run`` explanations; Trainer's controller does this on the cluster.
    """
    pod = copy.deepcopy(runtime_pod(runtime))
    spec = pod["spec"]
    container = _node_container(spec)
    trainer = trainjob["spec"].get("trainer") or {}
    for key in ("image", "command", "args"):
        if key in trainer:
            container[key] = copy.deepcopy(trainer[key])
    env = {e["name"]: e for e in container.get("env") or []}
    env.update({e["name"]: copy.deepcopy(e) for e in trainer.get("env") or []})
    if env:
        container["env"] = list(env.values())
    if "resourcesPerNode" in trainer:
        merged = copy.deepcopy(container.get("resources") or {})
        for part, values in trainer["resourcesPerNode"].items():
            merged.setdefault(part, {}).update(values)
        container["resources"] = merged
    for patch in trainjob["spec"].get("runtimePatches") or []:
        for job in (((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {}).get(
                "replicatedJobs") or []:
            if job.get("name") != NODE:
                continue
            template = ((job.get("template") or {}).get("spec") or {}).get("template") or {}
            for key in ("labels", "annotations"):
                if key in (template.get("metadata") or {}):
                    pod.setdefault("metadata", {}).setdefault(key, {}).update(template["metadata"][key])
            _merge_pod_spec(spec, template.get("spec") or {})
    return pod


def _merge_pod_spec(spec: dict, patch: dict) -> None:
    for key, value in patch.items():
        if key == "nodeSelector":
            spec.setdefault(key, {}).update(value)
        elif key == "volumes":  # merge by name; a volume's source is replaced whole (its retainKeys strategy)
            spec[key] = _merge_list(spec.get(key), value, "name", lambda old, new: copy.deepcopy(new))
        elif key in ("containers", "initContainers"):
            spec[key] = _merge_list(spec.get(key), value, "name", _merge_container)
        else:  # tolerations, affinity, ...: replaced
            spec[key] = copy.deepcopy(value)


def _merge_container(old: dict, new: dict) -> dict:
    merged = copy.deepcopy(old)
    for key, value in new.items():
        if key == "volumeMounts":
            merged[key] = _merge_list(old.get(key), value, "mountPath", lambda a, b: {**a, **b})
        elif key == "env":
            merged[key] = _merge_list(old.get(key), value, "name", lambda a, b: copy.deepcopy(b))
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_list(old: list | None, new: list, key: str, merge) -> list:
    items = {item[key]: copy.deepcopy(item) for item in old or []}
    for item in new:
        items[item[key]] = merge(items[item[key]], item) if item[key] in items else copy.deepcopy(item)
    return list(items.values())


def trainer_pod_selector(name: str) -> str:
    """Label selector of the TrainJob's node-0 pods (JobSet's labels): the pod whose log explains a failure."""
    return (f"jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name={NODE},"
            "batch.kubernetes.io/job-completion-index=0")


__all__ = ["build_trainjob", "build_runtime", "effective_pod", "runtime_differences", "runtime_name",
           "stage_runtime", "training_images", "trainer_pod_selector", "GROUP", "VERSION", "PLURAL", "NODE"]
