"""Cluster settings of a training job: where it runs, on what, with which credentials.

One flat YAML section (``cluster.yaml``), built like the stage configs: defaults <
``/etc/kuberlhf/cluster.yaml`` (the ``kuberlhf-config`` ConfigMap, when mounted) < a
``--cluster FILE`` < ``cluster.key=value`` overrides. Every key is checked before anything
is rendered, and an error names it (``cluster.nodes``).

Two kinds of keys. The deployment's (image, ServiceAccount, Secrets, namespace, object-store
endpoint, environment, UID, queue, priority, pod and retry policies) come only from files: the
chart's ConfigMap or ``--cluster FILE``. A run's ``cluster.key=value`` overrides (a pipeline
parameter, the ``kuberlhf launch`` command line) may set only :data:`RUN_KEYS`, the size and shape of
its job: whoever may start a pipeline run may not thereby pick the image, the credentials or the
account its pods run under. A pipeline step puts its KFP task's settings (resources, placement, plain env)
between the files and the overrides, checked the same way (:mod:`kuberlhf.k8s.taskconfig`).

$ kuberlhf launch sft --config configs/sft/demo.yaml --cluster configs/cluster/a100.yaml cluster.nodes=4
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from kuberlhf.config import deep_merge, from_dict, merge_overrides, option, read_yaml, require, to_dict
from kuberlhf.errors import ConfigError
from kuberlhf.images import USER_ID

# the ConfigMap file read first, when present; KUBERLHF_CLUSTER_CONFIG points elsewhere
DEFAULT_CLUSTER_FILE = "/etc/kuberlhf/cluster.yaml"
# gpu_product -> value of the NVIDIA GPU feature discovery label ``nvidia.com/gpu.product``
GPU_PRODUCTS = {"a100": "NVIDIA-A100-SXM4-80GB", "h100": "NVIDIA-H100-80GB-HBM3"}
# credentials reach pods only from Secrets: plain env may not carry them
CREDENTIAL_ENV = re.compile(r"(SECRET|PASSWORD|TOKEN|API_KEY|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)
TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
AFFINITY_KEYS = {"nodeAffinity", "podAffinity", "podAntiAffinity"}
# what a run's cluster.* overrides may set: the size, placement and duration of its job; the rest only from files
RUN_KEYS = frozenset({
    "backend", "nodes", "procs_per_node", "gpus_per_node", "gpu_product", "node_selector", "tolerations",
    "affinity", "cpu", "memory", "cpu_limit", "memory_limit", "shm_size",
    "launcher", "deepspeed_config", "elastic_min_nodes", "elastic_max_nodes", "elastic_max_restarts",
    "timeout_s", "active_deadline_seconds", "backoff_limit",
})

# job kinds the launcher creates: Training Operator v1 PyTorchJobs, Kubeflow Trainer v2 TrainJobs
BACKENDS = ("pytorchjob", "trainjob")

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIXES = {"": Decimal(1), "m": Decimal("0.001"), **{p: Decimal(1000) ** (i + 1) for i, p in enumerate("kMGTPE")},
             **{f"{p}i": Decimal(1024) ** (i + 1) for i, p in enumerate("KMGTPE")}}


@dataclass
class ClusterConfig:
    backend: Literal["pytorchjob", "trainjob"] = option(
        "pytorchjob", "job kind: pytorchjob (Training Operator v1) or trainjob (Kubeflow Trainer v2, on the stage's "
        "TrainingRuntime kuberlhf-<image>)"
    )
    runtime_kind: Literal["TrainingRuntime", "ClusterTrainingRuntime"] = option(
        "TrainingRuntime", "kind of the runtimes TrainJobs reference (backend trainjob): the namespace's "
        "TrainingRuntime or a ClusterTrainingRuntime"
    )
    namespace: str = option("kuberlhf", "namespace of the job")
    image: str = option("", "training image; '' = the stage's release image (kuberlhf.images.image_ref)")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = option("IfNotPresent", "image pull policy")
    image_pull_secret: str = option("", "Secret of type dockerconfigjson for a private registry; '' = none")
    service_account: str = option("kuberlhf-train", "ServiceAccount of the training pods (no API token is mounted)")
    launcher: Literal["torchrun", "accelerate", "deepspeed"] = option(
        "torchrun", "process launcher in each pod; deepspeed = torchrun with training.deepspeed=<deepspeed_config>"
    )
    deepspeed_config: str = option("", "DeepSpeed JSON under configs/deepspeed/ (required with launcher=deepspeed)")
    nodes: int = option(1, "pods (Master + nodes-1 Workers; all Workers when elastic)")
    procs_per_node: int = option(1, "training processes per pod (nprocPerNode); at most gpus_per_node with GPUs")
    gpus_per_node: int = option(0, "nvidia.com/gpu per pod; 0 = CPU only")
    gpu_product: Literal["", "a100", "h100"] = option(
        "", "GPU model: node selector nvidia.com/gpu.product and a toleration of the nvidia.com/gpu taint"
    )
    node_selector: dict[str, str] = option({}, "extra node selector labels (override the gpu_product label too)")
    tolerations: list[dict] = option([], "extra tolerations (key, operator, value, effect, tolerationSeconds)")
    affinity: dict[str, Any] = option(
        {}, "affinity of the pods, as in a pod spec (nodeAffinity, podAffinity, podAntiAffinity); {} = none")
    cpu: str | int | float = option("2", "CPU request per pod")
    memory: str = option("8Gi", "memory request per pod")
    cpu_limit: str | int | float = option("", "CPU limit per pod; '' = none (no throttling)")
    memory_limit: str = option("", "memory limit per pod; '' = the memory request")
    shm_size: str = option("2Gi", "size of the in-memory /dev/shm (NCCL, data loader workers); '' = no volume")
    restart_policy: Literal["OnFailure", "ExitCode"] = option(
        "OnFailure", "pod restarts: OnFailure, or ExitCode (restart only on retryable exit codes 128+)"
    )
    backoff_limit: int = option(3, "restarts before the job is Failed (0-20)")
    ttl_seconds_after_finished: int = option(86400, "delete the finished job (and its pods) after this long")
    active_deadline_seconds: int = option(0, "fail the job after this long; 0 = no deadline")
    termination_grace_period_seconds: int = option(
        300, "how long a pod that is deleted, preempted or drained has after SIGTERM: a stage saves a checkpoint "
        "at its next step and exits 143; one that cannot fit in what is left exits without starting one"
    )
    clean_pod_policy: Literal["Running", "All", "None"] = option(
        "Running", "pods deleted when the job ends: Running (keeps failed pods' logs), All, None"
    )
    elastic_min_nodes: int = option(0, "elastic training: fewest pods (0 = not elastic)")
    elastic_max_nodes: int = option(0, "elastic training: most pods (0 = not elastic)")
    elastic_max_restarts: int = option(3, "elastic training: restarts of the worker group (torchrun --max-restarts)")
    kueue_queue: str = option("", "Kueue LocalQueue (label kueue.x-k8s.io/queue-name; Kueue admits all pods at once)")
    priority_class: str = option("", "PriorityClass of the pods; '' = none")
    gang_scheduling: bool = option(
        False, "runPolicy.schedulingPolicy.minAvailable = all pods (Volcano or scheduler-plugins gang scheduling)"
    )
    storage_secret: str = option("kuberlhf-s3", "Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; '' = none")
    storage_endpoint: str = option("", "S3 endpoint URL (env AWS_ENDPOINT_URL_S3); '' = AWS")
    wandb_secret: str = option("", "Secret with WANDB_API_KEY (optional in the pod); '' = none")
    env: dict[str, Any] = option({}, "extra plain environment of the training container (no credentials)")
    config_map: str = option("kuberlhf-config", "ConfigMap mounted read-only at /etc/kuberlhf (optional); '' = none")
    run_as_user: int = option(USER_ID, "UID (and GID) of the training container (the images' user); never 0")
    timeout_s: int = option(86400, "the launcher deletes the job and fails after this long")
    watch_timeout_s: int = option(300, "seconds per watch request before the launcher re-reads the job")
    problem_check_s: int = option(
        30, "while waiting, every this many seconds show the job's Warning events and stuck pods (once each)")
    retry_backoff_s: float = option(2.0, "first wait after a Kubernetes API error (doubles each time)")
    retry_backoff_max_s: float = option(60.0, "longest wait between retries after API errors")
    max_api_errors: int = option(20, "consecutive Kubernetes API errors before the launcher gives up")
    log_tail_lines: int = option(50, "lines of the master's log shown when the job fails")
    max_attempts: int = option(
        3, "PyTorchJobs one step may create (1-9): a retried launcher whose newest job Failed creates <name>-a2, ..."
    )

    def __post_init__(self) -> None:
        self.cpu, self.cpu_limit = str(self.cpu), str(self.cpu_limit)
        check_name(self.namespace, "cluster.namespace", _DNS1123_LABEL, required=True)
        for key in ("service_account", "image_pull_secret", "priority_class", "storage_secret", "wandb_secret",
                    "config_map"):
            check_name(getattr(self, key), f"cluster.{key}", _DNS1123_SUBDOMAIN, required=key == "service_account")
        check_name(self.kueue_queue, "cluster.kueue_queue", _LABEL_VALUE)
        for key in ("cpu", "memory", "cpu_limit", "memory_limit", "shm_size"):
            value = getattr(self, key)
            required = key in ("cpu", "memory")
            require(bool(value) or not required, f"cluster.{key}", "required (a Kubernetes quantity such as 2 or 8Gi)")
            require(not value or bool(_QUANTITY.match(value)), f"cluster.{key}",
                    f"not a Kubernetes quantity: {value!r}")
        for request, limit in (("cpu", "cpu_limit"), ("memory", "memory_limit")):
            low, high = getattr(self, request), getattr(self, limit)
            require(not high or quantity(low) <= quantity(high), f"cluster.{limit}",
                    f"{high} is below the request cluster.{request}={low} (Kubernetes refuses such a pod)")
        require(self.nodes >= 1, "cluster.nodes", f"must be at least 1, got {self.nodes}")
        require(self.procs_per_node >= 1, "cluster.procs_per_node", f"must be at least 1, got {self.procs_per_node}")
        require(self.gpus_per_node >= 0, "cluster.gpus_per_node", f"must be 0 or more, got {self.gpus_per_node}")
        require(self.gpus_per_node == 0 or self.procs_per_node <= self.gpus_per_node, "cluster.procs_per_node",
                f"{self.procs_per_node} processes for {self.gpus_per_node} GPUs per pod: at most one per GPU")
        require(not self.gpu_product or self.gpus_per_node > 0, "cluster.gpu_product",
                f"{self.gpu_product!r} needs cluster.gpus_per_node > 0")
        if self.launcher == "deepspeed":
            require(bool(self.deepspeed_config), "cluster.deepspeed_config", "required with cluster.launcher=deepspeed")
        if self.deepspeed_config:
            path = self.deepspeed_config
            require(path.startswith("configs/deepspeed/") and path.endswith(".json") and ".." not in path.split("/"),
                    "cluster.deepspeed_config", f"must be a configs/deepspeed/*.json path, got {path!r}")
            require(self.launcher == "deepspeed", "cluster.deepspeed_config", "is used only with launcher=deepspeed")
        require(0 <= self.backoff_limit <= 20, "cluster.backoff_limit", f"must be in 0..20, got {self.backoff_limit}")
        for key in ("ttl_seconds_after_finished", "active_deadline_seconds", "termination_grace_period_seconds"):
            require(getattr(self, key) >= 0, f"cluster.{key}", "must be 0 or more")
        self._check_elastic()
        self._check_env()
        for i, toleration in enumerate(self.tolerations):
            unknown = sorted(set(toleration) - TOLERATION_KEYS)
            require(not unknown, f"cluster.tolerations[{i}]",
                    f"unknown field(s) {unknown}; use {sorted(TOLERATION_KEYS)}")
        require(all(isinstance(v, str) for v in self.node_selector.values()), "cluster.node_selector",
                "values must be strings (quote them in YAML)")
        unknown = sorted(set(self.affinity) - AFFINITY_KEYS)
        require(not unknown, "cluster.affinity", f"unknown field(s) {unknown}; use {sorted(AFFINITY_KEYS)}")
        require(all(isinstance(v, dict) for v in self.affinity.values()), "cluster.affinity",
                "each field must be a mapping, as in a pod spec")
        require(self.run_as_user > 0, "cluster.run_as_user", "must be a non-root UID (> 0)")
        for key in ("timeout_s", "watch_timeout_s", "problem_check_s", "max_api_errors", "log_tail_lines"):
            require(getattr(self, key) > 0, f"cluster.{key}", "must be positive")
        require(0 < self.retry_backoff_s <= self.retry_backoff_max_s, "cluster.retry_backoff_s",
                "must be positive and at most cluster.retry_backoff_max_s")
        require(1 <= self.max_attempts <= 9, "cluster.max_attempts", f"must be in 1..9, got {self.max_attempts}")

    def _check_elastic(self) -> None:
        lo, hi = self.elastic_min_nodes, self.elastic_max_nodes
        if not (lo or hi):
            return
        require(1 <= lo <= self.nodes <= hi, "cluster.elastic_min_nodes",
                f"elastic needs 1 <= elastic_min_nodes <= nodes <= elastic_max_nodes, got {lo} <= {self.nodes} <= {hi}")
        require(self.launcher != "accelerate", "cluster.launcher", "accelerate cannot run elastic jobs; use torchrun")
        require(self.elastic_max_restarts >= 0, "cluster.elastic_max_restarts", "must be 0 or more")

    def _check_env(self) -> None:
        for name, value in list(self.env.items()):
            problem = env_problem(name, value)
            require(problem is None, "cluster.env", str(problem))
            self.env[name] = str(value).lower() if isinstance(value, bool) else str(value)

    @property
    def elastic(self) -> bool:
        return self.elastic_max_nodes > 0


def env_problem(name: Any, value: Any) -> str | None:
    """Why ``name=value`` may not be a plain variable of the training container; None when it may."""
    if not _ENV_NAME.match(str(name)):
        return f"{name!r} is not a valid variable name"
    if CREDENTIAL_ENV.search(str(name)):
        return f"{name!r} looks like a credential: put it in a Secret (cluster.storage_secret, cluster.wandb_secret)"
    if not isinstance(value, str | int | float | bool):
        return f"{name!r} must be a plain value"
    return None


def quantity(text: str) -> Decimal:
    """The number a Kubernetes quantity stands for (``500m`` -> 0.5, ``8Gi`` -> 8589934592), to compare two."""
    match = _QUANTITY.match(str(text))
    if not match:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = Decimal(match.group(1)), match.group(3) or ""
    return number * _SUFFIXES[suffix] if suffix in _SUFFIXES else number.scaleb(int(suffix[1:]))  # or e<exponent>


def check_name(value: str, key: str, pattern: re.Pattern, required: bool = False) -> None:
    require(bool(value) or not required, key, "required")
    require(not value or (len(value) <= 253 and bool(pattern.match(value))), key,
            f"{value!r} is not a valid Kubernetes name")


def cluster_file() -> str:
    return os.environ.get("KUBERLHF_CLUSTER_CONFIG", DEFAULT_CLUSTER_FILE)


def load_cluster(source: ClusterConfig | str | Path | dict | None = None,
                 overrides: list[str] | None = None) -> ClusterConfig:
    """A ClusterConfig from the defaults, the mounted cluster.yaml, ``source`` and ``key=value`` overrides.

    ``source`` is a file, a dict of keys, or a finished ClusterConfig (then only ``overrides``
    apply). Overrides may carry the ``cluster.`` prefix of the ``kuberlhf launch`` command line; they
    are a run's, and may set only :data:`RUN_KEYS`.
    """
    return with_overrides(cluster_data(source), overrides)


def with_overrides(data: dict, overrides: list[str] | None) -> ClusterConfig:
    """A ClusterConfig from cluster keys ``data`` and a run's ``key=value`` overrides (only :data:`RUN_KEYS`)."""
    overrides = [o.removeprefix("cluster.") for o in overrides or []]
    check_run_overrides(overrides)
    return from_dict(ClusterConfig, merge_overrides(data, overrides), prefix="cluster.")


def cluster_data(source: ClusterConfig | str | Path | dict | None = None) -> dict:
    """The keys the deployment gives (the mounted cluster.yaml, then ``source``), before a run's overrides."""
    if isinstance(source, ClusterConfig):
        return to_dict(source)
    data = read_yaml(cluster_file()) if os.path.isfile(cluster_file()) else {}
    if isinstance(source, str | Path):
        data = deep_merge(data, read_yaml(source))
    elif isinstance(source, dict):
        data = deep_merge(data, dict(source))
    elif source is not None:
        raise TypeError(f"cluster: expected None, a path, a dict or a ClusterConfig, got {type(source).__name__}")
    return data


def check_run_overrides(overrides: list[str]) -> None:
    """Refuse a ``key=value`` override of a deployment key (one outside :data:`RUN_KEYS`), naming it."""
    known = {f.name for f in fields(ClusterConfig)}
    for text in overrides:
        key = text.partition("=")[0].strip().removeprefix("cluster.").split(".")[0]
        if key in known and key not in RUN_KEYS:
            raise ConfigError(f"config key 'cluster.{key}': a run may not set it (it comes from the deployment: the "
                              "chart's cluster.yaml ConfigMap or --cluster FILE); a run may set cluster."
                              + ", cluster.".join(sorted(RUN_KEYS)))


def split_overrides(overrides: list[str] | None) -> tuple[list[str], list[str]]:
    """``key=value`` overrides -> (stage overrides, ``cluster.`` overrides)."""
    stage, cluster = [], []
    for text in overrides or []:
        (cluster if text.startswith("cluster.") else stage).append(text)
    return stage, cluster


__all__ = ["BACKENDS", "ClusterConfig", "GPU_PRODUCTS", "RUN_KEYS", "load_cluster", "split_overrides"]
