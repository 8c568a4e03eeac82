"""The launcher against a fake Kubernetes API at the client boundary, for both backends.

The fake stands in for ``CustomObjectsApi`` and ``CoreV1Api``; the watch is the real
``kubernetes.watch.Watch`` reading the fake's HTTP stream, so 410 Gone and broken connections
reach the launcher exactly as they do from a cluster. The clock is fake: nothing waits. Tests
taking ``backend`` run once with PyTorchJobs and once with TrainJobs (whose namespace also holds
the stage's TrainingRuntime, as the chart installs it).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
import urllib3
import yaml
from k8schecks import crd_errors, load_documents, pss_restricted_errors
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from kuberlhf.errors import ConfigError, KuberlhfError
from kuberlhf.k8s import trainjob
from kuberlhf.k8s.kubeapi import BACKEND
from kuberlhf.k8s.launcher import KubeApis, LaunchError, job_name, launch_stage
from kuberlhf.k8s.spec import load_cluster

REPO = Path(__file__).resolve().parents[2]
STAGE = dict(stage="ppo", config="configs/ppo/demo.yaml", overrides=["output_dir=s3://b/ppo"])
FAST = {"retry_backoff_s": 2.0, "retry_backoff_max_s": 60.0, "timeout_s": 3600, "watch_timeout_s": 300,
        "problem_check_s": 300}
EPOCH = 1_800_000_000.0  # the fake cluster's wall clock at fake time 0


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("KUBERLHF_CLUSTER_CONFIG", str(tmp_path / "absent.yaml"))


@pytest.fixture(params=list(BACKEND))
def backend(request) -> str:
    return request.param


def done(backend: str) -> str:
    """The condition of a job that succeeded."""
    return BACKEND[backend].succeeded


def failed_reason(backend: str) -> str:
    return {"pytorchjob": "PyTorchJobFailed", "trainjob": "FailedJobs"}[backend]


def node0_pod(backend: str, name: str) -> str:
    """The pod whose log the launcher shows: the master's, or a TrainJob's node-0 pod (a generated name)."""
    return f"{name}-master-0" if backend == "pytorchjob" else f"{name}-node-0-0-x7k2p"


class FakeResponse:
    """What ``watch.stream`` reads: chunks of JSON lines; script steps run as the stream is read."""

    def __init__(self, api: FakeApi, steps: list) -> None:
        self.api, self.steps, self.closed = api, steps, False

    def stream(self, amt=None, decode_content=False):
        for step in self.steps:
            kind = step[0]
            if kind == "raise":
                raise step[1]
            if kind == "sleep":
                self.api.now += step[1]
            elif kind == "state":
                obj = self.api.set_condition(*step[1:])
                yield (json.dumps({"type": "MODIFIED", "object": obj}) + "\n").encode()
            elif kind == "gone":
                status = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
                yield (json.dumps({"type": "ERROR", "object": status}) + "\n").encode()
            elif kind == "delete":
                obj = self.api.jobs.pop(step[1])
                yield (json.dumps({"type": "DELETED", "object": obj}) + "\n").encode()

    def close(self):
        self.closed = True

    def release_conn(self):
        pass


class FakeApi:
    """A namespace of PyTorchJobs or TrainJobs with resource versions, pod logs, and a scripted watch;
    for TrainJobs, the TrainingRuntimes the chart installs and the pods JobSet labels."""

    def __init__(self, backend: str = "pytorchjob", watches: list | None = None, logs: dict | None = None,
                 runtimes: dict | None = None) -> None:
        self.backend = BACKEND[backend]
        self.jobs: dict[str, dict] = {}
        self.runtimes = runtimes if runtimes is not None else default_runtimes(backend)
        self.runtime_reads: list[str] = []
        self.rv = 100
        self.now = 0.0
        self.sleeps: list[float] = []
        self.watches = list(watches or [])  # one entry per watch request: a list of steps, or an exception
        self.watch_calls: list[dict] = []
        self.create_calls = 0
        self.create_errors: list[Exception] = []
        self.deleted: list[tuple[str, str]] = []
        self.logs = logs or {}
        self.pods: list[dict] = []  # pods with a status, for the launcher's problem report (snake_case)
        self.events: list[dict] = []
        self.event_reads: list[tuple[float, str]] = []

    # ------------------------------------------------ CustomObjectsApi
    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == (self.backend.group, self.backend.version, self.backend.plural)
        self.create_calls += 1
        if self.create_errors:
            raise self.create_errors.pop(0)
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="Conflict")
        obj = copy.deepcopy(body)
        obj["metadata"]["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH + self.now))
        self.jobs[name] = self._bump(obj)
        return copy.deepcopy(self.jobs[name])

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if plural == "trainingruntimes":
            self.runtime_reads.append(name)
            if isinstance(self.runtimes, Exception):
                raise self.runtimes
            if name not in self.runtimes:
                raise ApiException(status=404, reason="Not Found")
            return copy.deepcopy(self.runtimes[name])
        assert (group, version, plural) == (self.backend.group, self.backend.version, self.backend.plural)
        if name not in self.jobs:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.jobs[name])

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, propagation_policy=None):
        if self.jobs.pop(name, None) is None:
            raise ApiException(status=404, reason="Not Found")
        self.deleted.append((name, propagation_policy))

    def list_namespaced_custom_object(self, group, version, namespace, plural, watch=False, _preload_content=True,
                                      field_selector=None, resource_version=None, timeout_seconds=None):
        assert watch and not _preload_content
        self.watch_calls.append({"field_selector": field_selector, "resource_version": resource_version,
                                 "timeout_seconds": timeout_seconds})
        if not self.watches:  # nothing happens for a whole window
            self.now += timeout_seconds
            return FakeResponse(self, [])
        script = self.watches.pop(0)
        if isinstance(script, Exception):
            raise script
        return FakeResponse(self, script)

    # ------------------------------------------------ CoreV1Api
    def list_namespaced_pod(self, namespace, label_selector=None):
        """The pods of ``self.logs`` the selector matches: JobSet names them <jobset>-<replicated job>-<job
        index>-<completion index>-<suffix> and labels them with those; newer pods come later in ``self.logs``."""
        labels = dict(part.split("=") for part in label_selector.split(","))
        if len(labels) == 1:  # every pod of one job (the problem report): by the operator's or JobSet's label
            (key, job), = labels.items()
            assert key in ("training.kubeflow.org/job-name", "jobset.sigs.k8s.io/jobset-name")
            return type("PodList", (), {"items": [p for p in self.pods if p["metadata"]["labels"].get(key) == job]})()
        prefix = f"{labels['jobset.sigs.k8s.io/jobset-name']}-{labels['jobset.sigs.k8s.io/replicatedjob-name']}-"
        index = labels["batch.kubernetes.io/job-completion-index"]
        pods = [{"metadata": {"name": n, "creationTimestamp": f"2027-01-01T00:00:0{i}Z"}}
                for i, n in enumerate(self.logs) if n.startswith(prefix) and n[len(prefix):].split("-")[1:2] == [index]]
        return type("PodList", (), {"items": pods})()

    def list_namespaced_event(self, namespace, field_selector=None):
        assert field_selector == "type=Warning"
        self.event_reads.append((self.now, field_selector))
        return type("EventList", (), {"items": [e for e in self.events if e["type"] == "Warning"]})()

    def read_namespaced_pod_log(self, name, namespace, container=None, tail_lines=None):
        assert container == self.backend.container
        if name not in self.logs:
            raise ApiException(status=404, reason="Not Found")
        return "\n".join(self.logs[name].splitlines()[-tail_lines:]) + "\n"

    # ------------------------------------------------ the cluster's side
    def _bump(self, obj: dict) -> dict:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return obj

    def set_condition(self, name: str, ctype: str, reason: str = "", message: str = "") -> dict:
        obj = self.jobs[name]
        conditions = obj.setdefault("status", {}).setdefault("conditions", [])
        kind = self.backend.kind
        for cond in conditions:
            cond["status"] = "False" if ctype in self.backend.terminal and cond["type"] == "Running" else cond["status"]
        conditions.append({"type": ctype, "status": "True", "reason": reason or f"{kind}{ctype}",
                           "message": message or f"{kind} {name} is {ctype.lower()}."})
        return copy.deepcopy(self._bump(obj))

    def apis(self) -> KubeApis:
        def sleep(seconds):
            self.sleeps.append(seconds)
            self.now += seconds

        apis = KubeApis(custom=self, core=self, watch=watch.Watch, sleep=sleep, clock=lambda: self.now)
        apis.wall = lambda: EPOCH + self.now  # the launcher's wall clock, which creationTimestamp is compared to
        return apis


def default_runtimes(backend: str) -> dict:
    """The runtimes a chart with its default values installs (what the launcher compares with)."""
    if backend != "trainjob":
        return {}
    cluster = load_cluster(FAST)
    return {trainjob.runtime_name(i): trainjob.build_runtime(i, cluster) for i in trainjob.training_images()}


def launch(api: FakeApi, run_id="run-1", task="ppo", cluster=None, **kwargs):
    cluster = {**FAST, **(cluster or {})}
    if api.backend.name == "trainjob":
        cluster["backend"] = "trainjob"
    return launch_stage(**STAGE, run_id=run_id, task=task, cluster=cluster, apis=api.apis(), **kwargs)


def result_of(backend: str, name: str, created: bool, attempt: int = 1) -> dict:
    return {"name": name, "namespace": "kuberlhf", "kind": BACKEND[backend].kind, "state": "Succeeded",
            "created": created, "attempt": attempt}


NAME = job_name("run-1", "ppo")


def test_creates_the_job_waits_and_saves_the_manifest(tmp_path, backend):
    api = FakeApi(backend, watches=[[("state", NAME, "Created"), ("state", NAME, "Running"), ("sleep", 120),
                            ("state", NAME, done(backend))]])
    manifest = tmp_path / "out" / "job.yaml"
    result = launch(api, manifest_out=manifest)
    assert result == result_of(backend, NAME, True)
    assert api.create_calls == 1 and list(api.jobs) == [NAME]
    assert api.watch_calls == [{"field_selector": f"metadata.name={NAME}", "resource_version": "101",
                                "timeout_seconds": 300}]
    saved = load_documents(manifest.read_text())
    created = copy.deepcopy(api.jobs[NAME])
    del created["status"], created["metadata"]["resourceVersion"], created["metadata"]["creationTimestamp"]
    assert saved == [created]  # the artifact is exactly what was created
    assert crd_errors(saved[0]) == []
    if backend == "trainjob":  # the pods are the runtime's template with the TrainJob's changes
        assert api.runtime_reads == ["kuberlhf-ppo"]
        pod = trainjob.effective_pod(api.runtimes["kuberlhf-ppo"], saved[0])
        assert pss_restricted_errors({"kind": "Pod", "spec": pod["spec"]}) == []
    else:
        assert pss_restricted_errors(saved[0]) == []
    assert api.sleeps == []


def test_second_call_for_the_same_run_and_task_creates_no_second_job(backend):
    api = FakeApi(backend, watches=[[("state", NAME, "Running"), ("state", NAME, done(backend))]])
    assert launch(api)["created"] is True
    again = launch(api)  # a retried launcher: finds the job, re-attaches, already done
    assert again == result_of(backend, NAME, False)
    assert api.create_calls == 1 and list(api.jobs) == [NAME]
    assert len(api.watch_calls) == 1  # nothing left to wait for
    other = FakeApi(backend, watches=[[("state", job_name("run-2", "ppo"), done(backend))]])
    other.jobs = copy.deepcopy(api.jobs)
    assert launch(other, run_id="run-2")["created"] is True and len(other.jobs) == 2  # another run: its own job


def test_preempted_launcher_reattaches_to_the_running_job(backend):
    first = FakeApi(backend, watches=[[("state", NAME, "Running"), ("raise", KeyboardInterrupt())]])
    with pytest.raises(KeyboardInterrupt):  # the launcher pod is killed while the job runs
        launch(first)
    second = FakeApi(backend, watches=[[("state", NAME, "Restarting"), ("state", NAME, "Running"), ("state", NAME, done(backend))]])
    second.jobs, second.rv = first.jobs, first.rv
    running_rv = first.jobs[NAME]["metadata"]["resourceVersion"]
    assert launch(second) == result_of(backend, NAME, False)
    assert second.watch_calls[0]["resource_version"] == running_rv  # watches on from the job as it was found
    assert second.create_calls == 0 and len(second.jobs) == 1


def test_refuses_a_job_of_the_same_name_from_another_run(backend):
    api = FakeApi(backend)
    api.jobs["shared"] = {"metadata": {"name": "shared", "annotations": {"kuberlhf.io/run-id": "someone-else"}}}
    with pytest.raises(LaunchError, match="belongs to run 'someone-else', not 'run-1'") as err:
        launch(api, name="shared")
    assert err.value.reason == "NameTaken" and api.watch_calls == []


def test_watch_reconnects_after_errors_and_relists_after_410(backend):
    api = FakeApi(backend, watches=[
        [("state", NAME, "Running"), ("raise", urllib3.exceptions.ProtocolError("Connection broken"))],
        ApiException(status=500, reason="Internal Server Error"),
        [("gone",)],  # resourceVersion too old: re-read the job and watch from its version
        [("state", NAME, done(backend))],
    ])
    assert launch(api)["state"] == "Succeeded"
    assert len(api.watch_calls) == 4
    assert api.sleeps == [2.0, 4.0]  # exponential backoff; a 410 re-lists at once
    rv_after_gone = api.watch_calls[3]["resource_version"]
    assert int(rv_after_gone) == api.rv - 1  # the version read after the 410, not the stale one


def test_watch_gives_up_after_consecutive_errors(backend):
    api = FakeApi(backend, watches=[ApiException(status=503, reason="Service Unavailable")] * 10)
    with pytest.raises(LaunchError, match=r"watch failed 3 times in a row; last: HTTP 503"):
        launch(api, cluster={"max_api_errors": 3})
    assert api.sleeps == [2.0, 4.0] and NAME in api.jobs  # the job is left running for a retried launcher


def test_failed_job_raises_its_reason_and_the_masters_log_tail(backend):
    log = "".join(f"step {i}\n" for i in range(200)) + "RuntimeError: CUDA out of memory\n"
    api = FakeApi(backend, watches=[[("state", NAME, "Running"),
                            ("state", NAME, "Failed", failed_reason(backend), "job failed: master-0 exited with code 1")]],
                  logs={node0_pod(backend, NAME): log})
    with pytest.raises(LaunchError) as err:
        launch(api)
    text = str(err.value)
    assert text.splitlines()[0] == f"{BACKEND[backend].kind} kuberlhf/{NAME} failed: {failed_reason(backend)}: job failed: master-0 exited with code 1"
    assert err.value.reason == failed_reason(backend) and isinstance(err.value, KuberlhfError)
    tail = err.value.log_tail.splitlines()
    assert tail[0] == f"--- last 50 lines of pod {node0_pod(backend, NAME)} ---" and len(tail) == 51
    assert tail[-1] == "RuntimeError: CUDA out of memory" and tail[1] == "step 151"
    assert NAME in api.jobs  # a failed job is kept for inspection (ttlSecondsAfterFinished cleans it)


def test_failed_elastic_job_reads_worker_0_and_survives_a_missing_log():
    api = FakeApi(watches=[[("state", NAME, "Failed", "PyTorchJobFailed", "")]])
    with pytest.raises(LaunchError) as err:
        launch(api, cluster={"elastic_min_nodes": 1, "elastic_max_nodes": 2})
    assert f"(log of pod {NAME}-worker-0 unavailable: 404 Not Found)" in str(err.value)


def test_timeout_deletes_the_job(backend):
    api = FakeApi(backend, watches=[[("state", NAME, "Running")]])  # then silence: each window passes with no event
    with pytest.raises(LaunchError, match="did not finish within cluster.timeout_s=900s; the job was deleted") as err:
        launch(api, cluster={"timeout_s": 900})
    assert err.value.reason == "Timeout"
    assert api.deleted == [(NAME, "Background")] and api.jobs == {}
    assert [c["timeout_seconds"] for c in api.watch_calls] == [300, 300, 300, 300]  # 0 s, then 3 idle windows
    assert api.now >= 900


def test_job_deleted_by_someone_else_fails_the_step(backend):
    api = FakeApi(backend, watches=[[("state", NAME, "Running"), ("delete", NAME)]])
    with pytest.raises(LaunchError, match="was deleted before it finished"):
        launch(api)


def test_create_retries_transient_errors_and_stops_on_refusal(backend):
    api = FakeApi(backend, watches=[[("state", NAME, done(backend))]])
    api.create_errors = [ApiException(status=503, reason="Service Unavailable")]
    assert launch(api)["created"] is True and api.sleeps == [2.0] and api.create_calls == 2
    denied = FakeApi(backend)
    denied.create_errors = [ApiException(status=403, reason="Forbidden")]
    with pytest.raises(LaunchError, match="create refused: HTTP 403 Forbidden"):
        launch(denied)
    assert denied.jobs == {} and denied.watch_calls == []


def test_a_bad_config_key_fails_before_anything_is_created(tmp_path):
    api = FakeApi()
    manifest = tmp_path / "job.yaml"
    with pytest.raises(ConfigError, match="training.max_stepz"):
        launch_stage(**{**STAGE, "overrides": ["training.max_stepz=3"]}, run_id="r", task="ppo", apis=api.apis(),
                     manifest_out=manifest)
    with pytest.raises(ConfigError, match="cluster.nodes"):
        launch_stage(**STAGE, run_id="r", task="ppo", cluster={"nodes": 0}, apis=api.apis())
    with pytest.raises(ConfigError, match="backend 'bogus'"):
        launch_stage(**STAGE, run_id="r", task="ppo", backend="bogus", apis=api.apis())
    with pytest.raises(ConfigError, match="'cluster.elastic_max_nodes': the trainjob backend has no elastic"):
        launch_stage(**STAGE, run_id="r", task="ppo", backend="trainjob", apis=api.apis(),
                     cluster={"elastic_min_nodes": 1, "elastic_max_nodes": 2})
    assert api.create_calls == 0 and not manifest.exists()


def test_cluster_overrides_in_the_stage_overrides_are_applied():
    api = FakeApi(watches=[[("state", NAME, "Succeeded")]])
    launch_stage(stage="ppo", config="configs/ppo/demo.yaml", overrides=["output_dir=s3://b/p", "cluster.nodes=3"],
                 run_id="run-1", task="ppo", cluster=FAST, apis=api.apis())
    job = api.jobs[NAME]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert "output_dir=s3://b/p" in command and not any(a.startswith("cluster.") for a in command)


def test_launch_without_dry_run_needs_credentials(monkeypatch, tmp_path, capsys):
    from kuberlhf.cli import main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "no-kubeconfig"))
    assert main(["launch", "ppo", "output_dir=s3://b/p"]) == 2
    err = capsys.readouterr().err
    assert "kuberlhf launch: error: no Kubernetes credentials" in err


def test_a_watch_that_ends_at_once_backs_off_instead_of_spinning():
    api = FakeApi(watches=[[], [], [("state", NAME, "Succeeded")]])  # two empty streams, closed immediately
    assert launch(api)["state"] == "Succeeded"
    assert api.sleeps == [2.0, 4.0] and len(api.watch_calls) == 3


# ---------------------------------------------------------------- retries of the launcher step (KFP set_retry)
def test_a_retry_after_a_failure_starts_the_next_attempt_and_a_lost_launcher_reattaches(backend):
    api = FakeApi(backend, watches=[[("state", NAME, "Failed", failed_reason(backend), "master-0 exited with code 1")],
                           [("state", f"{NAME}-a2", "Running"), ("raise", KeyboardInterrupt())],
                           [("state", f"{NAME}-a2", done(backend))]])
    with pytest.raises(LaunchError, match=f"failed: {failed_reason(backend)}"):
        launch(api)
    with pytest.raises(KeyboardInterrupt):  # the KFP retry: a new attempt, whose launcher is then lost
        launch(api)
    assert sorted(api.jobs) == [NAME, f"{NAME}-a2"]
    assert api.jobs[f"{NAME}-a2"]["metadata"]["annotations"]["kuberlhf.io/attempt"] == "2"
    # the next retry finds attempt 2 running: it re-attaches rather than starting a third
    assert launch(api) == result_of(backend, f"{NAME}-a2", False, 2)
    assert sorted(api.jobs) == [NAME, f"{NAME}-a2"]
    # and once it succeeded, yet another launcher reports it
    assert launch(api)["name"] == f"{NAME}-a2" and len(api.jobs) == 2


def test_the_newest_attempt_decides_even_when_an_older_one_is_gone(backend):
    api = FakeApi(backend, watches=[[("state", NAME, "Failed")], [("state", f"{NAME}-a2", "Running")],
                           [("state", f"{NAME}-a2", done(backend))]])
    with pytest.raises(LaunchError):
        launch(api)
    api.watches.insert(1, [("raise", KeyboardInterrupt())])
    with pytest.raises(KeyboardInterrupt):
        launch(api)
    del api.jobs[NAME]  # attempt 1 reached its ttlSecondsAfterFinished while attempt 2 ran
    assert launch(api)["name"] == f"{NAME}-a2" and list(api.jobs) == [f"{NAME}-a2"]


def test_attempts_are_bounded_by_max_attempts(backend):
    api = FakeApi(backend, watches=[[("state", NAME, "Failed", failed_reason(backend), "oom")],
                           [("state", f"{NAME}-a2", "Failed", failed_reason(backend), "oom again")]],
                  logs={node0_pod(backend, f"{NAME}-a2"): "RuntimeError: CUDA out of memory\n"})
    for _ in range(2):
        with pytest.raises(LaunchError, match=f"failed: {failed_reason(backend)}"):
            launch(api, cluster={"max_attempts": 2})
    with pytest.raises(LaunchError) as err:
        launch(api, cluster={"max_attempts": 2})
    first = str(err.value).splitlines()[0]
    assert first == (f"{BACKEND[backend].kind} kuberlhf/{NAME}-a2 failed: {failed_reason(backend)}: oom again; "
                     "all 2 attempts of cluster.max_attempts=2 are spent")
    assert err.value.reason == "AttemptsSpent" and "CUDA out of memory" in err.value.log_tail
    assert sorted(api.jobs) == [NAME, f"{NAME}-a2"] and api.watch_calls[2:] == []


def test_the_timeout_counts_from_the_jobs_creation_not_from_the_reattach(backend):
    first = FakeApi(backend, watches=[[("state", NAME, "Running"), ("sleep", 600), ("raise", KeyboardInterrupt())]])
    with pytest.raises(KeyboardInterrupt):
        launch(first, cluster={"timeout_s": 900})
    second = FakeApi(backend)  # the retried launcher, 600 s after the job was created: 300 s are left
    second.jobs, second.rv, second.now = first.jobs, first.rv, first.now
    with pytest.raises(LaunchError, match="did not finish within cluster.timeout_s=900s"):
        launch(second, cluster={"timeout_s": 900})
    assert [c["timeout_seconds"] for c in second.watch_calls] == [300]
    assert second.now == 900 and second.deleted == [(NAME, "Background")]


# ---------------------------------------------------------------- what a run's overrides may do
@pytest.mark.parametrize("override, key", [
    ("training.run_name=$(WANDB_API_KEY)", "training.run_name"),
    ("output_dir=s3://b/$(AWS_SECRET_ACCESS_KEY)", "output_dir"),
    ("training.run_name=$$(AWS_SECRET_ACCESS_KEY)", "training.run_name"),
])
def test_an_override_the_kubelet_would_expand_is_refused(override, key):
    api = FakeApi(watches=[[("state", NAME, "Succeeded")]])
    with pytest.raises(ConfigError) as err:
        launch_stage(**{**STAGE, "overrides": [*STAGE["overrides"], override]}, run_id="run-1", task="ppo",
                     cluster=FAST, apis=api.apis())
    text = str(err.value)
    assert len(text.splitlines()) == 1 and f"'{key}'" in text and "$(" in text
    assert api.create_calls == 0


@pytest.mark.parametrize("key, value", [
    ("image", "evil.example/kuberlhf-ppo:1"), ("service_account", "cluster-admin"), ("storage_secret", "other-team"),
    ("wandb_secret", "other-wandb"), ("namespace", "kube-system"), ("env.HF_ENDPOINT", "https://evil.example"),
    ("storage_endpoint", "https://evil.example"), ("run_as_user", "1"), ("config_map", "other"),
    ("kueue_queue", "other-team"), ("priority_class", "system-cluster-critical"), ("max_attempts", "9"),
])
def test_a_run_may_not_set_deployment_keys(key, value):
    api = FakeApi(watches=[[("state", NAME, "Succeeded")]])
    with pytest.raises(ConfigError) as err:
        launch_stage(**{**STAGE, "overrides": [*STAGE["overrides"], f"cluster.{key}={value}"]}, run_id="run-1",
                     task="ppo", cluster=FAST, apis=api.apis())
    text = str(err.value)
    top = key.split(".")[0]
    assert len(text.splitlines()) == 1 and f"'cluster.{top}'" in text and "cluster.yaml" in text
    assert api.create_calls == 0


def test_a_run_may_size_its_job_and_the_cluster_file_may_set_the_rest(monkeypatch, tmp_path):
    mounted = tmp_path / "cluster.yaml"  # what the chart's kuberlhf-config ConfigMap mounts
    mounted.write_text("image: registry.example/kuberlhf-ppo:1.0\nservice_account: team-train\n"
                       "storage_secret: team-s3\nenv: {LOG_LEVEL: debug}\n")
    monkeypatch.setenv("KUBERLHF_CLUSTER_CONFIG", str(mounted))
    api = FakeApi(watches=[[("state", NAME, "Succeeded")]])
    run = ["cluster.nodes=2", "cluster.gpus_per_node=4", "cluster.procs_per_node=4", "cluster.gpu_product=h100",
           "cluster.memory=64Gi", "cluster.cpu=16", "cluster.timeout_s=7200", "cluster.active_deadline_seconds=7000",
           "cluster.node_selector={pool: train}", "cluster.tolerations=[{key: spot, operator: Exists}]",
           "cluster.launcher=deepspeed", "cluster.deepspeed_config=configs/deepspeed/zero3.json"]
    launch_stage(**{**STAGE, "overrides": [*STAGE["overrides"], *run]}, run_id="run-1", task="ppo", cluster=None,
                 apis=api.apis())
    pod = api.jobs[NAME]["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/kuberlhf-ppo:1.0" and pod["serviceAccountName"] == "team-train"
    assert container["resources"]["requests"]["memory"] == "64Gi" and pod["nodeSelector"]["pool"] == "train"
    assert "training.deepspeed=configs/deepspeed/zero3.json" in container["command"]


def test_the_default_run_id_is_a_hash_of_the_resolved_configs_not_of_their_paths(tmp_path, capsys):
    from kuberlhf.cli import main

    def run_id(config, *overrides):
        assert main(["launch", "ppo", "--dry-run", "--config", str(config), *overrides]) == 0
        return load_documents(capsys.readouterr().out)[0]["metadata"]["annotations"]["kuberlhf.io/run-id"]

    text = (REPO / "configs/ppo/demo.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    same = run_id(tmp_path / "a.yaml")
    assert same == run_id(tmp_path / "b.yaml")  # the same content at another path: the same run
    data = yaml.safe_load(text)
    data["training"]["max_steps"] = 7
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(data))
    assert run_id(tmp_path / "a.yaml") != same  # the file edited in place: another run, not a re-attach
    assert run_id(tmp_path / "b.yaml", "training.max_steps=7") == run_id(tmp_path / "a.yaml")  # resolved, not spelt
    assert run_id(tmp_path / "b.yaml", "cluster.nodes=2") != same


def test_two_launchers_of_one_step_racing_share_the_job(backend):
    class Racing(FakeApi):
        """The other launcher's create lands between this one's look for attempts and its own create."""

        hidden = 9  # the reads of attempts 1..9 see nothing

        def get_namespaced_custom_object(self, group, version, namespace, plural, name):
            if self.hidden and plural == self.backend.plural:
                self.hidden -= 1
                raise ApiException(status=404, reason="Not Found")
            return super().get_namespaced_custom_object(group, version, namespace, plural, name)

    other = FakeApi(backend, watches=[[("state", NAME, "Running"), ("raise", KeyboardInterrupt())]])
    with pytest.raises(KeyboardInterrupt):
        launch(other)
    api = Racing(backend, watches=[[("state", NAME, done(backend))]])
    api.jobs, api.rv = other.jobs, other.rv
    assert launch(api)["created"] is False and api.create_calls == 1 and list(api.jobs) == [NAME]


def test_a_runs_deepspeed_config_stays_under_configs_deepspeed():
    api = FakeApi(watches=[[("state", NAME, "Succeeded")]])
    escape = ["cluster.launcher=deepspeed", "cluster.deepspeed_config=configs/deepspeed/../deepspeed/zero2.json"]
    with pytest.raises(ConfigError, match="'cluster.deepspeed_config': must be a configs/deepspeed/"):
        launch_stage(**{**STAGE, "overrides": [*STAGE["overrides"], *escape]}, run_id="run-1", task="ppo",
                     cluster=FAST, apis=api.apis())
    assert api.create_calls == 0


# ---------------------------------------------------------------- the TrainJob's runtime
def test_a_missing_runtime_fails_before_anything_is_created():
    api = FakeApi("trainjob", runtimes={})
    with pytest.raises(LaunchError, match=r"TrainingRuntime kuberlhf/kuberlhf-ppo not found: install Kubeflow Trainer "
                                          r"v2 and the chart's runtimes") as err:
        launch(api)
    assert err.value.reason == "RuntimeNotFound" and api.create_calls == 0 and api.jobs == {}


def test_a_runtime_unlike_the_cluster_settings_is_refused_naming_the_keys():
    api = FakeApi("trainjob")
    with pytest.raises(LaunchError) as err:  # a run asking for more restarts than the runtime's Job allows
        launch(api, cluster={"backoff_limit": 7})
    text = str(err.value)
    assert err.value.reason == "RuntimeMismatch" and api.create_calls == 0
    assert "TrainingRuntime kuberlhf/kuberlhf-ppo does not match the cluster settings" in text
    assert "backoff_limit: the runtime has 3, the cluster settings want 7" in text
    stale = FakeApi("trainjob")  # a runtime of an older chart: another account, no W&B Secret
    runtime = stale.runtimes["kuberlhf-ppo"]
    trainjob.runtime_pod(runtime)["spec"]["serviceAccountName"] = "default"
    with pytest.raises(LaunchError, match="service_account: the runtime has 'default', the cluster settings want "
                                          "'kuberlhf-train'"):
        launch(stale)
    with pytest.raises(LaunchError, match=r"secrets: the runtime has \[\('AWS_ACCESS_KEY_ID'"):
        launch(FakeApi("trainjob"), cluster={"wandb_secret": "kuberlhf-wandb"})


def test_the_runtime_check_retries_transient_errors_and_stops_on_refusal():
    api = FakeApi("trainjob", watches=[[("state", NAME, "Complete")]])
    runtimes, calls = api.runtimes, []

    class Flaky(dict):
        def __contains__(self, name):
            calls.append(name)
            if len(calls) == 1:
                raise ApiException(status=503, reason="Service Unavailable")
            return name in runtimes

        def __getitem__(self, name):
            return runtimes[name]

    api.runtimes = Flaky()
    assert launch(api)["state"] == "Succeeded" and api.sleeps == [2.0]
    reads = len(api.runtime_reads)
    api.runtimes = {}  # the runtime is gone meanwhile: a re-attach to the job does not need it
    assert launch(api)["created"] is False and len(api.runtime_reads) == reads
    denied = FakeApi("trainjob", runtimes=ApiException(status=403, reason="Forbidden"))
    with pytest.raises(LaunchError, match="TrainingRuntime kuberlhf/kuberlhf-ppo: get refused: HTTP 403 Forbidden"):
        launch(denied)
    assert denied.create_calls == 0


def test_a_failed_trainjob_shows_the_newest_node_0_pod():
    api = FakeApi("trainjob", watches=[[("state", NAME, "Failed", "FailedJobs", "ReplicatedJob node failed")]],
                  logs={f"{NAME}-node-0-0-aaaaa": "first pod, restarted\n", f"{NAME}-node-0-0-bbbbb": "exit 2: bad row\n",
                        f"{NAME}-node-0-1-ccccc": "node 1\n"})
    with pytest.raises(LaunchError) as err:
        launch(api)
    assert str(err.value).splitlines()[0] == f"TrainJob kuberlhf/{NAME} failed: FailedJobs: ReplicatedJob node failed"
    assert err.value.log_tail.splitlines() == [f"--- last 50 lines of pod {NAME}-node-0-0-bbbbb ---", "exit 2: bad row"]
    gone = FakeApi("trainjob", watches=[[("state", NAME, "Failed", "DeadlineExceeded", "")]])
    with pytest.raises(LaunchError, match=r"DeadlineExceeded.*\n\(no pod of node 0 is left to show a log\)"):
        launch(gone)


def test_a_suspended_trainjob_waits_for_kueue():
    api = FakeApi("trainjob", watches=[[("state", NAME, "Suspended", "Suspended", "waiting for quota"), ("sleep", 600),
                                        ("state", NAME, "Complete")]])
    assert launch(api)["state"] == "Succeeded"


def test_a_reattach_warns_when_the_spec_differs_but_not_for_kueues_suspend(backend, caplog):
    api = FakeApi(backend, watches=[[("state", NAME, "Running"), ("raise", KeyboardInterrupt())]])
    with pytest.raises(KeyboardInterrupt):
        launch(api, cluster={"kueue_queue": "team-a"})
    if backend == "trainjob":  # Kueue admitted the job: it unsuspended it
        assert api.jobs[NAME]["spec"]["suspend"] is True
        api.jobs[NAME]["spec"]["suspend"] = False
    api.watches = [[("state", NAME, done(backend))]]
    with caplog.at_level("WARNING", logger="kuberlhf.k8s.launcher"):
        assert launch(api, cluster={"kueue_queue": "team-a"})["created"] is False
    assert "spec differs" not in caplog.text
    api.jobs[NAME]["metadata"]["annotations"]["kuberlhf.io/spec-hash"] = "0" * 16  # rendered by other settings
    with caplog.at_level("WARNING", logger="kuberlhf.k8s.launcher"):
        launch(api, cluster={"kueue_queue": "team-a"})
    assert "re-attaching to a job whose spec differs from the one rendered now" in caplog.text


def warning_event(name: str, kind: str, reason: str, message: str, type_: str = "Warning") -> dict:
    return {"type": type_, "reason": reason, "message": message, "involved_object": {"kind": kind, "name": name}}


def test_refused_and_stuck_pods_are_shown_within_a_minute_in_the_clusters_own_words(backend, caplog):
    """Seen on a real cluster: a Worker refused by PodSecurity and an init container whose image cannot be
    pulled change nothing in the job's status; the launcher says so, once each, and keeps waiting."""
    quiet = [("sleep", 30)]
    api = FakeApi(backend, watches=[[("state", NAME, "Created"), ("sleep", 30)], quiet, quiet,
                                    [("state", NAME, done(backend))]])
    refused = (f'Error creating: pods "{NAME}-worker-0" is forbidden: violates PodSecurity "restricted:latest": '
               'allowPrivilegeEscalation != false (container "init-pytorch" must set '
               'securityContext.allowPrivilegeEscalation=false)')
    owner, kind = (NAME, "PyTorchJob") if backend == "pytorchjob" else (f"{NAME}-node-0", "Job")
    label = "training.kubeflow.org/job-name" if backend == "pytorchjob" else "jobset.sigs.k8s.io/jobset-name"
    api.events = [warning_event(owner, kind, "FailedCreatePod", refused),
                  warning_event("someone-elses-job", kind, "FailedCreatePod", "not this job's"),
                  warning_event(owner, kind, "SuccessfulCreatePod", "created", type_="Normal")]
    api.pods = [{"metadata": {"name": f"{NAME}-master-0", "labels": {label: NAME}},
                 "status": {"init_container_statuses": [{"name": "init-pytorch", "state": {"waiting": {
                     "reason": "ErrImagePull", "message": 'failed to pull image "alpine:3.10": dial tcp: i/o timeout'}}}],
                            "container_statuses": [{"name": "pytorch", "state": {"waiting": {"reason": "PodInitializing"}}}]}},
                {"metadata": {"name": "unrelated", "labels": {label: "another"}},
                 "status": {"container_statuses": [{"name": "x", "state": {"waiting": {"reason": "ErrImagePull"}}}]}}]
    with caplog.at_level("WARNING", logger="kuberlhf.k8s.launcher"):
        result = launch(api, cluster={"problem_check_s": 30})
    assert result == result_of(backend, NAME, True)
    shown = [r.getMessage() for r in caplog.records if "FailedCreatePod" in r.getMessage()
             or "ErrImagePull" in r.getMessage() or "PodInitializing" in r.getMessage()]
    where = f"{BACKEND[backend].kind} kuberlhf/{NAME}"
    assert shown == [f'{where}: pod {NAME}-master-0, init container init-pytorch: ErrImagePull: failed to pull image '
                     '"alpine:3.10": dial tcp: i/o timeout',
                     f"{where}: {kind} {owner}: FailedCreatePod: {refused}"]  # once each, over three windows
    assert api.event_reads and api.event_reads[0][0] <= 60  # the first look within a minute of the start
    assert {call["timeout_seconds"] for call in api.watch_calls} == {30}
