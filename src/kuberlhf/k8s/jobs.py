"""A training job on the Kubernetes API: the clients, the two job kinds, and :class:`JobWatch`, which creates
or re-attaches to a run's job, watches it to its end and explains a failure (:mod:`kuberlhf.k8s.launcher`
decides what to create; this module talks to the API).

Every API call is retried with exponential backoff on transient errors (HTTP 429 and 5xx, network
errors); the count of consecutive errors resets only on progress. The watch reconnects after API errors
and re-reads the job after a 410 Gone. The ``kubernetes`` package is imported only when real clients are
built, so tests pass fakes (:class:`KubeApis`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from kuberlhf.k8s import kubeapi, problems, pytorchjob, trainjob
from kuberlhf.k8s.kubeapi import Backend, KubeApis, LaunchError
from kuberlhf.k8s.pytorchjob import ANNOTATION_PREFIX
from kuberlhf.k8s.spec import ClusterConfig

log = logging.getLogger(__name__)
ATTEMPTS = 9  # the most cluster.max_attempts allows: the suffix -a<n> is 3 characters


def attempt_name(base: str, attempt: int) -> str:
    """The name of attempt ``attempt`` of a job: the base name, then ``<base>-a2``, ``<base>-a3``, ..."""
    return base if attempt == 1 else f"{base}-a{attempt}"



def job_state(obj: dict, terminal: tuple[str, ...] = ("Succeeded", "Complete", "Failed")) -> tuple[str, dict]:
    """(state, condition): the newest true condition; the terminal ones win over the others."""
    conditions = [c for c in ((obj.get("status") or {}).get("conditions") or []) if c.get("status") == "True"]
    for cond in reversed(conditions):
        if cond.get("type") in terminal:
            return cond["type"], cond
    return (conditions[-1]["type"], conditions[-1]) if conditions else ("Pending", {})


class JobWatch:
    """One job of a run and task on the API: finds its newest attempt, creates or re-attaches, watches it to
    its end, shows its problems as they happen and explains a failure."""

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
                if not kubeapi.transient(err):
                    raise
                self._retry(what, f"HTTP {err.status} {err.reason}")
            except kubeapi.network_errors() as err:
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
        return LaunchError(f"{self.where}: {what} refused: HTTP {err.status} {err.reason}: {kubeapi.body_message(err)}",
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
            raise LaunchError(f"{where}: get refused: HTTP {err.status} {err.reason}: {kubeapi.body_message(err)}",
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
        created = kubeapi.timestamp((obj.get("metadata") or {}).get("creationTimestamp"))
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
                elif kubeapi.transient(err):
                    self._retry("watch", f"HTTP {err.status} {err.reason}")
                else:
                    raise self._refused("watch", err) from None
            except kubeapi.network_errors() as err:
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


