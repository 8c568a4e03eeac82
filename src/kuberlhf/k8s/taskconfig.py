"""A KFP task's settings, forwarded to the job its step launches (KFP's task config passthrough, KFP >= 2.15).

A KFP user shapes a step with ``task.set_cpu_limit("8")``, ``set_memory_request/limit``,
``set_accelerator_type("nvidia.com/gpu")`` with ``set_accelerator_limit(4)``, ``set_env_variable``, and
kfp-kubernetes' ``add_node_selector``, ``add_toleration`` and ``add_node_affinity``. The launching components
declare ``task_config_passthroughs`` (:mod:`kuberlhf.workflow.components.passthrough`), so KFP applies the
resources and the placement not to the step's own pod (a launcher needs no GPU) but hands them, with the env,
to the step as a ``dsl.TaskConfig``; in the cluster modes they become cluster settings of the job:

=============================================  =====================================  =============================
KFP task setting                               task config field                      cluster key
=============================================  =====================================  =============================
``set_cpu_request`` / ``set_cpu_limit``        ``resources.requests/limits.cpu``      ``cpu`` / ``cpu_limit``
``set_memory_request`` / ``set_memory_limit``  ``resources.requests/limits.memory``   ``memory`` / ``memory_limit``
``set_accelerator_type/limit``                 ``resources.limits.nvidia.com/gpu``    ``gpus_per_node``, and
                                                                                      ``procs_per_node``: one per GPU
``kubernetes.add_node_selector``               ``nodeSelector``                       ``node_selector``: merged
``kubernetes.add_toleration``                  ``tolerations``                        ``tolerations``: appended
``kubernetes.add_node_affinity``               ``affinity``                           ``affinity``: merged
``set_env_variable``                           ``env`` (plain values)                 ``env``: merged by name
=============================================  =====================================  =============================

Which wins, lowest first: the defaults < ``cluster.yaml`` (the chart's ConfigMap; ``--cluster FILE``) < the
task's settings < the run's ``cluster.*`` overrides. A task setting is the pipeline's choice for that step,
more specific than the cluster-wide defaults, and takes effect as it would on a plain KFP step's own pod; a
run's override is the latest choice, made for this one run. Merged keys keep the file's entries: a task's
label, variable or affinity kind replaces only the file's one of the same name.

Checked like ``cluster.*`` (quantities, toleration and affinity fields, variable names, no credentials in plain
env); a task's env may also not set the names the deployment, the operators or kuberlhf set
(:data:`RESERVED_ENV_PREFIXES`: the object store's endpoint and keys, W&B's, torchrun's ``PET_*``), nor hold
``$(``, which the kubelet would expand from the pod's other variables, Secrets included. An error
names the field (``task config resources.limits.cpu``). Not forwarded: env from Secrets, ConfigMaps or pod
fields (``valueFrom``: a job's Secrets are the deployment's), volumes (a job mounts its own), and accelerators
other than ``nvidia.com/gpu``, which are refused.

The dict is what the KFP driver hands the step: its ``TaskConfig`` struct (kubeflow/pipelines
``backend/src/v2/driver/driver.go``), filled by ``initPodSpecPatch`` (driver.go) and ``extendPodSpecPatch``
(k8s.go) and marshalled to JSON by ``driver.Container``: keys ``affinity``, ``tolerations``, ``nodeSelector``,
``env``, ``volumes``, ``volumeMounts``, ``resources``, each in the Kubernetes API's shape (quantities as
strings), unset ones null. ``kfp.dsl.executor`` reads it into ``dsl.TaskConfig``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kuberlhf.errors import ConfigError
from kuberlhf.k8s.spec import (
    AFFINITY_KEYS,
    TOLERATION_KEYS,
    ClusterConfig,
    cluster_data,
    env_problem,
    quantity,
    with_overrides,
)

log = logging.getLogger(__name__)

GPU = "nvidia.com/gpu"
# what a task's plain env may not set: the object store's client and keys and W&B's (the deployment's:
# cluster.storage_endpoint, storage_secret, wandb_secret), torchrun's PET_* (the operators') and kuberlhf's own
RESERVED_ENV_PREFIXES = ("AWS_", "WANDB_", "PET_", "KUBERLHF_")
RESOURCE_KEYS = {("requests", "cpu"): "cpu", ("limits", "cpu"): "cpu_limit", ("requests", "memory"): "memory",
                 ("limits", "memory"): "memory_limit"}
# the KFP call that sets a field, for error messages
SETTERS = {"resources.requests.cpu": "set_cpu_request", "resources.limits.cpu": "set_cpu_limit",
           "resources.requests.memory": "set_memory_request", "resources.limits.memory": "set_memory_limit",
           "nodeSelector": "kubernetes.add_node_selector",
           "tolerations": "kubernetes.add_toleration", "affinity": "kubernetes.add_node_affinity",
           "env": "set_env_variable"}
ACCELERATOR = "set_accelerator_type/limit"


def cluster_settings(source: ClusterConfig | str | Path | dict | None, overrides: list[str] | None,
                     task_config: Mapping | None) -> ClusterConfig:
    """The job's cluster settings: the deployment's (``source`` over the mounted cluster.yaml), a KFP task's
    settings over them, the run's ``cluster.*`` overrides over both. Checked once, at the end."""
    data = cluster_data(source)
    values = cluster_values(task_config, data)
    if not values:
        return with_overrides(data, overrides)
    try:
        return with_overrides(layer(data, values), overrides)
    except ConfigError as err:
        keys = ", ".join(f"cluster.{k}" for k in values)
        raise ConfigError(f"{err} (the step's KFP task config set {keys})") from None


def cluster_values(task_config: Mapping | None, data: Mapping | None = None) -> dict[str, Any]:
    """The cluster keys a task config sets (``{"gpus_per_node": 4, "cpu_limit": "8", ...}``), each checked;
    ``data`` (the deployment's keys) only tells which of its volumes the job mounts anyway."""
    if not task_config:
        return {}
    if not isinstance(task_config, Mapping):
        raise ConfigError(f"task config: expected a mapping (KFP's TaskConfig), got {type(task_config).__name__}")
    values = _resources(task_config.get("resources"))
    if selector := task_config.get("nodeSelector"):
        values["node_selector"] = _node_selector(selector)
    if tolerations := task_config.get("tolerations"):
        values["tolerations"] = _tolerations(tolerations)
    if affinity := task_config.get("affinity"):
        values["affinity"] = _affinity(affinity)
    if env := _env(task_config.get("env")):
        values["env"] = env
    _note_volumes(task_config.get("volumes"), (data or {}).get("config_map", ClusterConfig().config_map))
    return values


def layer(data: dict, values: dict[str, Any]) -> dict:
    """The deployment's cluster keys ``data`` with a task's ``values`` over them: node selector labels, env and
    affinity kinds merged (the task's win), tolerations appended, the rest replaced."""
    data = dict(data)
    for key, value in values.items():
        if key in ("node_selector", "env", "affinity"):
            data[key] = {**(data.get(key) or {}), **value}
        elif key == "tolerations":
            old = list(data.get(key) or [])
            data[key] = old + [t for t in value if t not in old]
        else:
            data[key] = value
    return data


def _fail(field: str, message: str, setter: str = "") -> ConfigError:
    setter = setter or SETTERS.get(field) or SETTERS.get(field.split(".")[0].split("[")[0], "")
    return ConfigError(f"task config {field}{f' ({setter})' if setter else ''}: {message}")


def _mapping(value: Any, field: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise _fail(field, f"expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _resources(resources: Any) -> dict[str, Any]:
    if not resources:
        return {}
    unknown = sorted(set(_mapping(resources, "resources")) - {"requests", "limits"})
    if unknown:
        raise _fail(f"resources.{unknown[0]}", "not forwarded; a task may set requests and limits")
    values: dict[str, Any] = {}
    for part in ("requests", "limits"):
        for name, amount in _mapping(resources.get(part) or {}, f"resources.{part}").items():
            field = f"resources.{part}.{name}"
            try:
                number = quantity(str(amount))
            except ValueError:
                raise _fail(field, f"not a Kubernetes quantity: {amount!r}") from None
            if (part, name) in RESOURCE_KEYS:
                values[RESOURCE_KEYS[part, name]] = str(amount)
            elif name == GPU:
                if number != int(number) or number < 0:
                    raise _fail(field, f"a whole number of GPUs, got {amount!r}", ACCELERATOR)
                if values.get("gpus_per_node", int(number)) != int(number):
                    raise _fail(field, f"differs from resources.requests.{GPU}: a pod's GPU request is its limit",
                                ACCELERATOR)
                values["gpus_per_node"] = int(number)
                if number:  # torchrun everywhere: one training process per GPU
                    values["procs_per_node"] = int(number)
            else:
                raise _fail(field, f"the job's pods take cpu, memory and {GPU} (cluster.gpus_per_node); "
                                   f"{name!r} is not forwarded", ACCELERATOR)
    return values


def _node_selector(selector: Any) -> dict[str, str]:
    labels = dict(_mapping(selector, "nodeSelector"))
    bad = [key for key, value in labels.items() if not isinstance(value, str)]
    if bad:
        raise _fail(f"nodeSelector.{bad[0]}", "values must be strings, as in cluster.node_selector")
    return labels


def _tolerations(tolerations: Any) -> list[dict]:
    if not isinstance(tolerations, list):
        raise _fail("tolerations", f"expected a list, got {type(tolerations).__name__}")
    checked = []
    for i, toleration in enumerate(tolerations):
        unknown = sorted(set(_mapping(toleration, f"tolerations[{i}]")) - TOLERATION_KEYS)
        if unknown:
            raise _fail(f"tolerations[{i}]", f"unknown field(s) {unknown}; use {sorted(TOLERATION_KEYS)}")
        checked.append(dict(toleration))
    return checked


def _affinity(affinity: Any) -> dict[str, Any]:
    kinds = dict(_mapping(affinity, "affinity"))
    unknown = sorted(set(kinds) - AFFINITY_KEYS)
    if unknown:
        raise _fail(f"affinity.{unknown[0]}", f"unknown field; use {sorted(AFFINITY_KEYS)}")
    for kind, value in kinds.items():
        if value is not None:
            _mapping(value, f"affinity.{kind}")
    return {kind: value for kind, value in kinds.items() if value}


def _env(env: Any) -> dict[str, str]:
    """The plain variables of the task's env, checked; those from Secrets, ConfigMaps or fields are left out."""
    if not env:
        return {}
    if not isinstance(env, list):
        raise _fail("env", f"expected a list of variables, got {type(env).__name__}")
    plain, left_out = {}, []
    for i, var in enumerate(env):
        name = _mapping(var, f"env[{i}]").get("name")
        if not isinstance(name, str):
            raise _fail(f"env[{i}]", f"a variable needs a name, got {name!r}")
        if var.get("valueFrom"):
            if not name.startswith(RESERVED_ENV_PREFIXES):  # those the job gets from the deployment anyway
                left_out.append(name)
            continue
        value = var.get("value", "")  # the driver leaves out an empty value
        problem = env_problem(name, value)
        if problem is None and name.startswith(RESERVED_ENV_PREFIXES):
            problem = (f"{name!r} is set by the deployment, the training operators or kuberlhf "
                       f"(names starting {', '.join(RESERVED_ENV_PREFIXES)}); a task may not set it")
        if problem is None and "$(" in str(value):  # a TrainJob's pod lists the runtime's Secrets before it
            problem = "'$(' is expanded by the kubelet from the variables before it, Secrets included; remove it"
        if problem:
            raise _fail(f"env.{name}", problem)
        plain[name] = str(value).lower() if isinstance(value, bool) else str(value)
    if left_out:
        log.warning("task config env: %s not forwarded to the job: it takes values from Secrets, ConfigMaps or pod "
                    "fields only from the cluster settings (storage_secret, wandb_secret)", ", ".join(left_out))
    return plain


def _note_volumes(volumes: Any, config_map: str) -> None:
    names = [str(v.get("name")) for v in volumes or [] if isinstance(v, Mapping) and v.get("name") != config_map]
    if names:
        log.warning("task config volumes: %s not forwarded to the job (its pods mount only the cluster settings' "
                    "volumes)", ", ".join(names))


__all__ = ["cluster_settings", "cluster_values", "layer", "GPU", "RESERVED_ENV_PREFIXES"]
