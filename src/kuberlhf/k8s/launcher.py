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

import copy
import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kuberlhf.config import to_dict
from kuberlhf.errors import ConfigError, KuberlhfError
from kuberlhf.k8s import problems, pytorchjob, taskconfig, trainjob
from kuberlhf.k8s.pytorchjob import ANNOTATION_PREFIX, to_yaml
from kuberlhf.k8s.spec import BACKENDS, ClusterConfig, split_overrides

log = logging.getLogger(__name__)
# job names leave room for the operator's pod and service names, <job>-worker-<index>, within 63
MAX_NAME = 47
ATTEMPTS = 9  # the most cluster.max_attempts allows: the suffix -a<n> is 3 characters
MAX_BASE_NAME = MAX_NAME - len(f"-a{ATTEMPTS}")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class LaunchError(KuberlhfError):
    """The job failed, timed out, vanished, or the API refused the launcher."""

    def __init__(self, message: str, reason: str = "", log_tail: str = "") -> None:
        self.reason, self.log_tail = reason, log_tail
        super().__init__(message + (f"\n{log_tail}" if log_tail else ""))


@dataclasses.dataclass(frozen=True)
class Backend:
    """A job kind the launcher creates and watches."""

    name: str
    kind: str
    group: str
    version: str
    plural: str
    succeeded: str  # the condition that means success (Failed means failure for both)
    container: str  # the training container, whose log explains a failure

    @property
    def terminal(self) -> tuple[str, str]:
        return self.succeeded, "Failed"


BACKEND = {
    "pytorchjob": Backend("pytorchjob", pytorchjob.KIND, pytorchjob.GROUP, pytorchjob.VERSION, pytorchjob.PLURAL,
                          "Succeeded", pytorchjob.CONTAINER),
    "trainjob": Backend("trainjob", trainjob.KIND, trainjob.GROUP, trainjob.VERSION, trainjob.PLURAL, "Complete",
                        trainjob.NODE),
}


@dataclasses.dataclass
class KubeApis:
    """The Kubernetes clients the launcher uses, and its clock (tests pass fakes)."""

    custom: Any  # CustomObjectsApi: create/get/list/delete_namespaced_custom_object (get_cluster_custom_object)
    core: Any  # CoreV1Api: read_namespaced_pod_log, list_namespaced_pod
    watch: Callable[[], Any]  # -> kubernetes.watch.Watch()
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time  # compared with the job's creationTimestamp


def default_apis() -> KubeApis:
    """Real clients: in-cluster credentials (a KFP step's ServiceAccount), else the kubeconfig."""
    from kubernetes import client, config, watch

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as err:
            raise LaunchError(f"no Kubernetes credentials (not in a cluster, no usable kubeconfig): {err}") from None
    return KubeApis(custom=client.CustomObjectsApi(), core=client.CoreV1Api(), watch=watch.Watch)


def job_name(run_id: str, task: str) -> str:
    """A DNS-1035 name, at most 44 characters (room for ``-a9``), the same for the same (run id, task)."""
    digest = hashlib.sha256(f"{run_id}\0{task}".encode()).hexdigest()[:8]
    parts = [p for p in (_slug(task, 20), _slug(run_id, 12)) if p]
    name = "-".join([*parts, digest])
    return name if name[0].isalpha() else f"k-{name}"


def _slug(text: str, limit: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")


def attempt_name(base: str, attempt: int) -> str:
    """The name of attempt ``attempt`` of a job: the base name, then ``<base>-a2``, ``<base>-a3``, ..."""
    return base if attempt == 1 else f"{base}-a{attempt}"


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
        job = pytorchjob.build_pytorchjob(stage, config, stage_overrides, cluster_cfg, name, annotations)
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
    launcher = _Launcher(apis, cluster_cfg, job, BACKEND[cluster_cfg.backend])
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


def job_state(obj: dict, terminal: tuple[str, ...] = ("Succeeded", "Complete", "Failed")) -> tuple[str, dict]:
    """(state, condition): the newest true condition; the terminal ones win over the others."""
    conditions = [c for c in ((obj.get("status") or {}).get("conditions") or []) if c.get("status") == "True"]
    for cond in reversed(conditions):
        if cond.get("type") in terminal:
            return cond["type"], cond
    return (conditions[-1]["type"], conditions[-1]) if conditions else ("Pending", {})


class _Launcher:
    def __init__(self, apis: KubeApis, cluster: ClusterConfig, job: dict, backend: Backend) -> None:
        self.apis, self.cluster, self.first, self.backend = apis, cluster, job, backend
        self.group, self.version, self.plural = backend.group, backend.version, backend.plural
        self.base, self.namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        self.errors, self.backoff = 0, cluster.retry_backoff_s
        self.shown: set[str] = set()  # problems already shown (problems.py's keys)
        self._use(1)

    def _use(self, attempt: int) -> None:
        """Aim at attempt ``attempt``: its name, and the manifest that creates it."""
        self.attempt, self.name = attempt, attempt_name(self.base, attempt)
        self.where = f"{self.backend.kind} {self.namespace}/{self.name}"
        self.job = copy.deepcopy(self.first)
        self.job["metadata"]["name"] = self.name
        if attempt > 1:
            self.job["metadata"]["annotations"][f"{ANNOTATION_PREFIX}attempt"] = str(attempt)

    # ---------------------------------------------------------------- API calls with retries
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, retried with exponential backoff on transient API errors.

        The count of consecutive errors is reset only by progress (a create, a watch event, a
        clean watch window), so a watch that always fails ends the wait even if reads succeed.
        """
        from kubernetes.client.exceptions import ApiException

        while True:
            try:
                return fn()
            except ApiException as err:
                if not _transient(err):
                    raise
                self._retry(what, f"HTTP {err.status} {err.reason}")
            except _network_errors() as err:
                self._retry(what, f"{type(err).__name__}: {err}")

    def _retry(self, what: str, problem: str, wait: bool = True) -> None:
        self.errors += 1
        if self.errors >= self.cluster.max_api_errors:
            raise LaunchError(f"{self.where}: {what} failed {self.errors} times in a row; last: {problem}")
        log.warning("%s: %s failed (%s); retrying (%d/%d)", self.where, what, problem, self.errors,
                    self.cluster.max_api_errors)
        if wait:
            self.apis.sleep(self.backoff)
            self.backoff = min(self.backoff * 2, self.cluster.retry_backoff_max_s)

    def _progress(self) -> None:
        self.errors, self.backoff = 0, self.cluster.retry_backoff_s

    def _get(self) -> dict:
        obj = self._read(self.name)
        if obj is None:
            raise LaunchError(f"{self.where} was deleted before it finished", reason="Deleted")
        return obj

    def _read(self, name: str) -> dict | None:
        """The job ``name``, or None when there is none."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self._call("get", lambda: self.apis.custom.get_namespaced_custom_object(
                self.group, self.version, self.namespace, self.plural, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise self._refused("get", err) from None

    def _refused(self, what: str, err: Any) -> LaunchError:
        return LaunchError(f"{self.where}: {what} refused: HTTP {err.status} {err.reason}: {_body_message(err)}",
                           reason=str(err.reason or err.status))

    def state(self, obj: dict) -> tuple[str, dict]:
        return job_state(obj, self.backend.terminal)

    # ---------------------------------------------------------------- the TrainJob's runtime
    def check_runtime(self, stage: str) -> None:
        """The stage's TrainingRuntime exists and fixes what the cluster settings say (account, Secrets, ...);
        else :class:`LaunchError` naming the keys, before anything is created."""
        from kubernetes.client.exceptions import ApiException

        kind = self.cluster.runtime_kind
        name = trainjob.stage_runtime(stage)
        image = name.removeprefix("kuberlhf-")
        where = f"{kind} {name}" if kind == "ClusterTrainingRuntime" else f"{kind} {self.namespace}/{name}"
        plural = trainjob.RUNTIME_KINDS[kind]
        if kind == "ClusterTrainingRuntime":
            def read():
                return self.apis.custom.get_cluster_custom_object(trainjob.GROUP, trainjob.VERSION, plural, name)
        else:
            def read():
                return self.apis.custom.get_namespaced_custom_object(trainjob.GROUP, trainjob.VERSION,
                                                                     self.namespace, plural, name)
        try:
            live = self._call(f"get {kind}", read)
        except ApiException as err:
            if err.status == 404:
                raise LaunchError(f"{where} not found: install Kubeflow Trainer v2 and the chart's runtimes "
                                  "(trainer.runtimes=true), or use backend pytorchjob",
                                  reason="RuntimeNotFound") from None
            raise LaunchError(f"{where}: get refused: HTTP {err.status} {err.reason}: {_body_message(err)}",
                              reason=str(err.reason or err.status)) from None
        differences = trainjob.runtime_differences(trainjob.build_runtime(image, self.cluster, kind), live)
        if differences:
            raise LaunchError(f"{where} does not match the cluster settings (upgrade the chart with the same "
                              f"cluster values, or use backend pytorchjob): {'; '.join(differences)}",
                              reason="RuntimeMismatch")
        self._progress()

    # ---------------------------------------------------------------- create or re-attach
    def attach_or_start(self, run_id: str) -> tuple[dict, bool]:
        """The newest attempt of the run if it is not Failed (re-attach), else a new attempt: (job, created)."""
        newest = None
        for attempt in range(1, ATTEMPTS + 1):  # every slot: an older attempt may be gone (ttlSecondsAfterFinished)
            obj = self._read(attempt_name(self.base, attempt))
            if obj is not None:
                newest = (attempt, obj)
        if newest is None:
            return self.get_or_create(run_id)
        attempt, obj = newest
        self._use(attempt)
        self._check_owner(obj, run_id)
        if self.state(obj)[0] != "Failed":
            return self._reattach(obj), False
        if attempt >= self.cluster.max_attempts:
            self.raise_if_failed(obj, spent=True)
        log.warning("%s failed (%s): starting attempt %d of %d", self.where, self.state(obj)[1].get("reason"),
                    attempt + 1, self.cluster.max_attempts)
        self._use(attempt + 1)
        return self.get_or_create(run_id)

    def _check_owner(self, obj: dict, run_id: str) -> None:
        owner = (obj.get("metadata", {}).get("annotations") or {}).get(f"{ANNOTATION_PREFIX}run-id")
        if owner != run_id:
            raise LaunchError(f"{self.where} exists but belongs to run {owner!r}, not {run_id!r}: "
                              "choose another name or delete it", reason="NameTaken")

    def _reattach(self, obj: dict) -> dict:
        annotations = obj.get("metadata", {}).get("annotations") or {}
        key = f"{ANNOTATION_PREFIX}spec-hash"  # the builder's digest (a TrainJob's leaves out Kueue's suspend)
        if annotations.get(key) != self.job["metadata"]["annotations"][key]:
            log.warning("%s: re-attaching to a job whose spec differs from the one rendered now", self.where)
        log.info("%s exists (state %s): re-attaching", self.where, self.state(obj)[0])
        self._progress()
        return obj

    def deadline(self, obj: dict) -> float:
        """When the timeout ends on ``apis.clock``: ``timeout_s`` after the job was created."""
        created = _timestamp((obj.get("metadata") or {}).get("creationTimestamp"))
        elapsed = max(0.0, self.apis.wall() - created) if created is not None else 0.0
        return self.apis.clock() + self.cluster.timeout_s - elapsed

    def get_or_create(self, run_id: str) -> tuple[dict, bool]:
        from kubernetes.client.exceptions import ApiException

        if self.backend.name == "trainjob":  # before a TrainJob is created; a re-attach does not need it
            self.check_runtime(self.first["metadata"]["labels"]["kuberlhf.io/stage"])
        try:
            obj = self._call("create", lambda: self.apis.custom.create_namespaced_custom_object(
                self.group, self.version, self.namespace, self.plural, self.job))
            log.info("%s created", self.where)
            self._progress()
            return obj, True
        except ApiException as err:
            if err.status != 409:
                raise self._refused("create", err) from None
        obj = self._get()  # created meanwhile by another launcher of the same step
        self._check_owner(obj, run_id)
        return self._reattach(obj), False

    # ---------------------------------------------------------------- wait
    def wait(self, obj: dict, deadline: float) -> dict | None:
        """Watch the job until Succeeded/Failed (-> the job) or the deadline (-> None)."""
        from kubernetes.client.exceptions import ApiException

        state = self._report(obj, None)
        while state not in self.backend.terminal:
            remaining = deadline - self.apis.clock()
            if remaining <= 0:
                return None
            started, events = self.apis.clock(), 0
            try:
                stream = self.apis.watch().stream(
                    self.apis.custom.list_namespaced_custom_object, self.group, self.version, self.namespace,
                    self.plural,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=obj.get("metadata", {}).get("resourceVersion"),
                    timeout_seconds=max(1, int(min(self.cluster.watch_timeout_s, self.cluster.problem_check_s,
                                                   remaining))))
                try:
                    for event in stream:
                        if event.get("type") == "DELETED":
                            raise LaunchError(f"{self.where} was deleted before it finished", reason="Deleted")
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            obj, events = event["object"], events + 1
                            state = self._report(obj, state)
                            self._progress()
                            if state in self.backend.terminal or self.apis.clock() >= deadline:
                                break
                finally:
                    getattr(stream, "close", lambda: None)()  # ends the HTTP request of a stream left early
                if events or self.apis.clock() - started >= 1:
                    self._progress()
                else:  # closed at once with nothing to say: back off rather than hammer the API server
                    self._retry("watch", "the stream ended at once")
            except ApiException as err:
                if err.status == 410:  # our resourceVersion is too old: re-read the job, watch from there
                    self._retry("watch", "410 Gone", wait=False)
                elif _transient(err):
                    self._retry("watch", f"HTTP {err.status} {err.reason}")
                else:
                    raise self._refused("watch", err) from None
            except _network_errors() as err:
                self._retry("watch", f"{type(err).__name__}: {err}")
            # a window ended or the stream broke: re-list, a transition may be missed
            if state not in self.backend.terminal:
                self.show_problems()
                obj = self._get()
                state = self._report(obj, state)
        return obj

    def show_problems(self) -> None:
        """Say, once each, why the job's pods are refused or stuck: Warning events and waiting containers,
        in the cluster's words. Only informs: the operator keeps retrying, and so does the wait."""
        try:
            pods = self.apis.core.list_namespaced_pod(
                self.namespace, label_selector=problems.pod_selector(self.backend.name, self.name))
            names = {self.name, f"{self.name}-{trainjob.NODE}-0", *problems.pod_names(pods)}
            events = self.apis.core.list_namespaced_event(self.namespace, field_selector="type=Warning")
            found = problems.pod_problems(pods) + problems.event_problems(events, names)
        except Exception as err:  # a hint only: never let reading it end the wait
            found = [("unreadable", f"events and pods unreadable ({getattr(err, 'status', '')} "
                                    f"{getattr(err, 'reason', err)}); waiting without them")]
        for key, line in found:
            if key not in self.shown:
                self.shown.add(key)
                log.warning("%s: %s", self.where, line)

    def _report(self, obj: dict, previous: str | None) -> str:
        state, cond = self.state(obj)
        if state != previous:
            log.info("%s: %s%s", self.where, state, f" ({cond.get('reason')})" if cond.get("reason") else "")
        return state

    # ---------------------------------------------------------------- endings
    def raise_if_failed(self, obj: dict, spent: bool = False) -> None:
        state, cond = self.state(obj)
        if state == self.backend.succeeded:
            return
        reason, message = cond.get("reason") or "Failed", cond.get("message") or ""
        text = f"{self.where} failed: {reason}: {message}".rstrip(": ")
        if spent:
            text += f"; all {self.attempt} attempts of cluster.max_attempts={self.cluster.max_attempts} are spent"
            reason = "AttemptsSpent"
        raise LaunchError(text, reason=reason, log_tail=self.log_tail(obj))

    def primary_pod(self, obj: dict) -> str | None:
        """The pod whose log explains a failure: a PyTorchJob's master-0 (worker-0 when elastic); a TrainJob's
        newest node-0 pod (Job pods have generated names: found by JobSet's labels)."""
        if self.backend.name == "pytorchjob":
            return pytorchjob.primary_pod(obj if obj.get("spec") else self.job)
        pods = self._call("list pods", lambda: self.apis.core.list_namespaced_pod(
            self.namespace, label_selector=trainjob.trainer_pod_selector(self.name)))
        items = [p.to_dict() if hasattr(p, "to_dict") else p for p in (getattr(pods, "items", None) or [])]
        if not items:
            return None
        newest = max(items, key=lambda p: str((p.get("metadata") or {}).get("creation_timestamp")
                                              or (p.get("metadata") or {}).get("creationTimestamp") or ""))
        return newest["metadata"]["name"]

    def log_tail(self, obj: dict) -> str:
        lines = self.cluster.log_tail_lines
        pod = "(unknown)"
        try:
            pod = self.primary_pod(obj)
            if pod is None:
                return "(no pod of node 0 is left to show a log)"
            text = self.apis.core.read_namespaced_pod_log(pod, self.namespace, container=self.backend.container,
                                                          tail_lines=lines)
        except Exception as err:  # the log only explains the failure; any error here must not hide it
            return f"(log of pod {pod} unavailable: {getattr(err, 'status', '')} {getattr(err, 'reason', err)})"
        return f"--- last {lines} lines of pod {pod} ---\n{(text or '').rstrip()}"

    def delete_after_timeout(self) -> None:
        from kubernetes.client.exceptions import ApiException

        outcome = "the job was deleted"
        try:
            self._call("delete", lambda: self.apis.custom.delete_namespaced_custom_object(
                self.group, self.version, self.namespace, self.plural, self.name, propagation_policy="Background"))
        except ApiException as err:
            if err.status != 404:
                outcome = f"deleting the job failed (HTTP {err.status} {err.reason}): delete it by hand"
        except LaunchError as err:
            outcome = f"deleting the job failed ({err}): delete it by hand"
        log.warning("%s: timed out; %s", self.where, outcome)
        raise LaunchError(f"{self.where} did not finish within cluster.timeout_s={self.cluster.timeout_s}s; "
                          f"{outcome}", reason="Timeout")


def _timestamp(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (``2026-11-03T10:00:00Z``); None when absent or unreadable."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() if text else None
    except ValueError:
        return None


def _transient(err: Any) -> bool:
    return not err.status or err.status == 429 or err.status >= 500


def _network_errors() -> tuple[type[BaseException], ...]:
    import urllib3

    return (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def _body_message(err: Any) -> str:
    import json

    try:
        return json.loads(err.body).get("message", "") if err.body else ""
    except (ValueError, AttributeError):
        return str(err.body)[:300]


__all__ = ["launch_stage", "render", "job_name", "attempt_name", "content_run_id", "LaunchError", "KubeApis",
           "job_state", "Backend", "BACKEND"]
