"""Run a stage as a PyTorchJob or a TrainJob and wait for it: idempotent, so a retried launcher re-attaches.

    from kuberlhf.k8s.launcher import launch_stage
    launch_stage(stage="ppo", config="configs/ppo/demo.yaml", overrides=["output_dir=s3://b/x"],
                 run_id="<kfp run id>", task="ppo", manifest_out="job.yaml", backend="trainjob")

Two backends (``cluster.backend``, or ``backend=``): ``pytorchjob`` (Training Operator v1, the
default) and ``trainjob`` (Kubeflow Trainer v2: a TrainJob on the stage's TrainingRuntime
``kuberlhf-<image>``, which the launcher first reads and compares with the cluster settings). Both
behave the same way here; they differ only in the kind, how a job reports its end (``Succeeded`` or
``Complete``; ``Failed``) and where its first node's pod is.

The job's name is a function of (run id, task) and the attempt: ``<name>`` first, then
``<name>-a2``, ``<name>-a3`` (at most ``cluster.max_attempts``). A launcher reads the newest attempt
of its run and task: none yet, it creates the first; running or succeeded (a launcher that was lost
or preempted), it re-attaches; failed (a KFP retry after a failure), it creates the next attempt, or,
when they are spent, fails at once. The timeout counts from the attempt's ``creationTimestamp``, so a
re-attached launcher does not start the clock again. The wait is a watch that reconnects after API
errors and re-reads the job after a 410 Gone; ``Failed`` raises :class:`LaunchError` with the job's
reason and the tail of the master's log; a timeout deletes the job. Without a run id (``kuberlhf
launch`` without ``--run-id``) the run id is a hash of the resolved stage and cluster configs.

Overrides reach the container's command, where the kubelet expands ``$(VAR)`` from the pod's
environment, Secrets included: an override holding ``$(`` is refused (rather than escaped as ``$$(``:
no config value needs it, and a refusal shows the user what happened). The Kubernetes clients are
injected (:class:`KubeApis`) so tests can pass fakes; the ``kubernetes`` package is imported only
when real clients are built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from kuberlhf.config import to_dict
from kuberlhf.errors import ConfigError
from kuberlhf.k8s import taskconfig, trainjob
from kuberlhf.k8s.jobs import ATTEMPTS, JobWatch
from kuberlhf.k8s.kubeapi import BACKEND, KubeApis, LaunchError, default_apis
from kuberlhf.k8s.pytorchjob import ANNOTATION_PREFIX, build_pytorchjob, to_yaml
from kuberlhf.k8s.spec import BACKENDS, ClusterConfig, split_overrides

log = logging.getLogger(__name__)
# job names leave room for the operator's pod and service names, <job>-worker-<index>, within 63
MAX_NAME = 47
MAX_BASE_NAME = MAX_NAME - len(f"-a{ATTEMPTS}")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def job_name(run_id: str, task: str) -> str:
    """A DNS-1035 name, at most 44 characters (room for ``-a9``), the same for the same (run id, task)."""
    digest = hashlib.sha256(f"{run_id}\0{task}".encode()).hexdigest()[:8]
    parts = [p for p in (_slug(task, 20), _slug(run_id, 12)) if p]
    name = "-".join([*parts, digest])
    return name if name[0].isalpha() else f"k-{name}"


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")


def check_job_name(name: str) -> str:
    if not (_DNS1035.match(name) and len(name) <= MAX_BASE_NAME):
        raise ConfigError(f"job name {name!r}: must be a DNS-1035 label (a-z, 0-9, '-'; starts with a letter) "
                          f"of at most {MAX_BASE_NAME} characters (retries append -a2 ... -a{ATTEMPTS})")
    return name


def content_run_id(stage: str, stage_cfg: Any, cluster: ClusterConfig) -> str:
    """A run id from what the run does, not from where its config lives: the same resolved configs give the
    same id (a relaunch re-attaches); an edited config, even at the same path, gives another."""
    text = json.dumps({"stage": stage, "config": to_dict(stage_cfg), "cluster": to_dict(cluster)}, sort_keys=True,
                      default=str)
    return "cli-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def check_no_expansion(config: str | None, overrides: list[str]) -> None:
    """Refuse ``$(`` where it would reach the container's command: the kubelet expands ``$(VAR)`` there from
    the pod's environment, so an override could copy a Secret into the model card, W&B and the logs."""
    if config and "$(" in config:
        raise ConfigError(f"config {config!r}: '$(' is expanded by the kubelet in the container's command; remove it")
    for text in overrides:
        if "$(" in text:
            key = text.partition("=")[0].strip()
            raise ConfigError(f"config key {key!r}: '$(' is expanded by the kubelet in the container's command "
                              "(it could copy a Secret of the pod into the run); remove it")


def validate_stage_config(stage: str, config: str | None, overrides: list[str], cluster: ClusterConfig) -> Any:
    """Load the stage's config as the pod will, so a bad key fails before anything is created."""
    from kuberlhf.stages.registry import get_stage, load_stage_config

    extra = []
    if cluster.launcher == "deepspeed":
        if not get_stage(stage).deepspeed:
            raise ConfigError(f"config key 'cluster.launcher': stage {stage!r} does not run under DeepSpeed "
                              "(training.deepspeed); use torchrun")
        extra.append(f"training.deepspeed={cluster.deepspeed_config}")
    cfg = load_stage_config(stage, config, [*overrides, *extra])
    if config and not (config.startswith("configs/") or config.startswith("/etc/kuberlhf/")):
        log.warning("config %r must exist in the image (configs/...) or the kuberlhf-config ConfigMap "
                    "(/etc/kuberlhf/...) for the pods to read it", config)
    output_dir = getattr(cfg, "output_dir", "")
    if output_dir and "://" not in output_dir:
        log.warning("output_dir %r is inside the pod and is lost when it ends; use s3://bucket/prefix", output_dir)
    return cfg


def render(stage: str, config: str | None, overrides: list[str] | None, run_id: str, task: str,
           cluster: ClusterConfig | str | Path | dict | None = None, name: str | None = None,
           backend: str | None = None, task_config: dict | None = None) -> tuple[ClusterConfig, dict]:
    """Check everything, then build the job's first attempt: (cluster settings, manifest). No API call.

    ``backend`` (pytorchjob, trainjob) overrides ``cluster.backend``. An empty ``run_id`` is derived from the
    resolved configs (:func:`content_run_id`). ``task_config``: the KFP task's settings (a step's
    ``dsl.TaskConfig``), between the cluster settings and the run's overrides (:mod:`kuberlhf.k8s.taskconfig`)."""
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}: one of {', '.join(BACKENDS)}")
    check_no_expansion(config, list(overrides or []))
    stage_overrides, cluster_overrides = split_overrides(overrides)
    if backend:
        cluster_overrides = [*cluster_overrides, f"cluster.backend={backend}"]
    cluster_cfg = taskconfig.cluster_settings(cluster, cluster_overrides, task_config)
    if cluster_cfg.backend == "trainjob":
        trainjob.check_backend(cluster_cfg)
    stage_cfg = validate_stage_config(stage, config, stage_overrides, cluster_cfg)
    run_id = run_id or content_run_id(stage, stage_cfg, cluster_cfg)
    name = check_job_name(name) if name else job_name(run_id, task)
    annotations = {"run-id": run_id, "task": task}
    if cluster_cfg.backend == "trainjob":
        job = trainjob.build_trainjob(stage, config, stage_overrides, cluster_cfg, name, annotations,
                                      runtime_kind=cluster_cfg.runtime_kind)
    else:
        job = build_pytorchjob(stage, config, stage_overrides, cluster_cfg, name, annotations)
    return cluster_cfg, job


def launch_stage(stage: str, config: str | None, overrides: list[str] | None, run_id: str, task: str,
                 cluster: ClusterConfig | str | Path | dict | None = None, manifest_out: str | Path | None = None,
                 backend: str | None = None, apis: KubeApis | None = None, name: str | None = None,
                 task_config: dict | None = None) -> dict:
    """Create (or re-attach to) the stage's PyTorchJob or TrainJob and wait for it to succeed.

    Returns ``{"name", "namespace", "kind", "state": "Succeeded", "created", "attempt"}``; raises
    :class:`LaunchError` when the job fails, times out (the job is then deleted), its attempts are
    spent, its TrainingRuntime is missing or differs from the cluster settings, or the API refuses
    the launcher.
    """
    cluster_cfg, job = render(stage, config, overrides, run_id, task, cluster, name, backend, task_config)
    run_id = job["metadata"]["annotations"][f"{ANNOTATION_PREFIX}run-id"]
    _write_manifest(manifest_out, job)
    apis = apis or default_apis()
    launcher = JobWatch(apis, cluster_cfg, job, BACKEND[cluster_cfg.backend])
    obj, created = launcher.attach_or_start(run_id)
    if launcher.attempt > 1:
        _write_manifest(manifest_out, launcher.job)
    final = launcher.wait(obj, launcher.deadline(obj))
    if final is None:
        launcher.delete_after_timeout()
    launcher.raise_if_failed(final)
    return {"name": launcher.name, "namespace": launcher.namespace, "kind": launcher.backend.kind,
            "state": "Succeeded", "created": created, "attempt": launcher.attempt}


def _write_manifest(path: str | Path | None, job: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(to_yaml(job))

__all__ = ["launch_stage", "render", "job_name", "content_run_id", "LaunchError", "KubeApis"]
