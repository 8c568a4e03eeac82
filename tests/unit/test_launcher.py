"""The launcher against a fake Kubernetes API at the client boundary.

The fake stands in for ``CustomObjectsApi`` and ``CoreV1Api``; the watch is the real
``kubernetes.watch.Watch`` reading the fake's HTTP stream, so 410 Gone and broken connections
reach the launcher exactly as they do from a cluster. The clock is fake: nothing waits.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import urllib3
from k8schecks import crd_errors, load_documents, pss_restricted_errors
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from kuberlhf.errors import ConfigError, KuberlhfError
from kuberlhf.k8s.launcher import KubeApis, LaunchError, job_name, launch_stage

REPO = Path(__file__).resolve().parents[2]
STAGE = dict(stage="ppo", config="configs/ppo/demo.yaml", overrides=["output_dir=s3://b/ppo"])
FAST = {"retry_backoff_s": 2.0, "retry_backoff_max_s": 60.0, "timeout_s": 3600, "watch_timeout_s": 300}


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("KUBERLHF_CLUSTER_CONFIG", str(tmp_path / "absent.yaml"))


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
    """A namespace of PyTorchJobs with resource versions, pod logs, and a scripted watch."""

    def __init__(self, watches: list | None = None, logs: dict | None = None) -> None:
        self.jobs: dict[str, dict] = {}
        self.rv = 100
        self.now = 0.0
        self.sleeps: list[float] = []
        self.watches = list(watches or [])  # one entry per watch request: a list of steps, or an exception
        self.watch_calls: list[dict] = []
        self.create_calls = 0
        self.create_errors: list[Exception] = []
        self.deleted: list[tuple[str, str]] = []
        self.logs = logs or {}

    # ------------------------------------------------ CustomObjectsApi
    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("kubeflow.org", "v1", "pytorchjobs")
        self.create_calls += 1
        if self.create_errors:
            raise self.create_errors.pop(0)
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="Conflict")
        self.jobs[name] = self._bump(copy.deepcopy(body))
        return copy.deepcopy(self.jobs[name])

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
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
    def read_namespaced_pod_log(self, name, namespace, container=None, tail_lines=None):
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
        for cond in conditions:
            cond["status"] = "False" if ctype in ("Succeeded", "Failed") and cond["type"] == "Running" else cond["status"]
        conditions.append({"type": ctype, "status": "True", "reason": reason or f"PyTorchJob{ctype}",
                           "message": message or f"PyTorchJob {name} is {ctype.lower()}."})
        return copy.deepcopy(self._bump(obj))

    def apis(self) -> KubeApis:
        def sleep(seconds):
            self.sleeps.append(seconds)
            self.now += seconds

        return KubeApis(custom=self, core=self, watch=watch.Watch, sleep=sleep, clock=lambda: self.now)


def launch(api: FakeApi, run_id="run-1", task="ppo", cluster=None, **kwargs):
    return launch_stage(**STAGE, run_id=run_id, task=task, cluster={**FAST, **(cluster or {})}, apis=api.apis(),
                        **kwargs)


NAME = job_name("run-1", "ppo")


def test_creates_the_job_waits_and_saves_the_manifest(tmp_path):
    api = FakeApi(watches=[[("state", NAME, "Created"), ("state", NAME, "Running"), ("sleep", 120),
                            ("state", NAME, "Succeeded")]])
    manifest = tmp_path / "out" / "job.yaml"
    result = launch(api, manifest_out=manifest)
    assert result == {"name": NAME, "namespace": "kuberlhf", "state": "Succeeded", "created": True}
    assert api.create_calls == 1 and list(api.jobs) == [NAME]
    assert api.watch_calls == [{"field_selector": f"metadata.name={NAME}", "resource_version": "101",
                                "timeout_seconds": 300}]
    saved = load_documents(manifest.read_text())
    created = copy.deepcopy(api.jobs[NAME])
    del created["status"], created["metadata"]["resourceVersion"]
    assert saved == [created]  # the artifact is exactly what was created
    assert crd_errors(saved[0]) == [] and pss_restricted_errors(saved[0]) == []
    assert api.sleeps == []


def test_second_call_for_the_same_run_and_task_creates_no_second_job():
    api = FakeApi(watches=[[("state", NAME, "Running"), ("state", NAME, "Succeeded")]])
    assert launch(api)["created"] is True
    again = launch(api)  # a retried launcher: 409, re-attach, already done
    assert again == {"name": NAME, "namespace": "kuberlhf", "state": "Succeeded", "created": False}
    assert api.create_calls == 2 and list(api.jobs) == [NAME]
    assert len(api.watch_calls) == 1  # nothing left to wait for
    other = FakeApi(watches=[[("state", job_name("run-2", "ppo"), "Succeeded")]])
    other.jobs = copy.deepcopy(api.jobs)
    assert launch(other, run_id="run-2")["created"] is True and len(other.jobs) == 2  # another run: its own job


def test_preempted_launcher_reattaches_to_the_running_job():
    first = FakeApi(watches=[[("state", NAME, "Running"), ("raise", KeyboardInterrupt())]])
    with pytest.raises(KeyboardInterrupt):  # the launcher pod is killed while the job runs
        launch(first)
    second = FakeApi(watches=[[("state", NAME, "Restarting"), ("state", NAME, "Running"), ("state", NAME, "Succeeded")]])
    second.jobs, second.rv = first.jobs, first.rv
    running_rv = first.jobs[NAME]["metadata"]["resourceVersion"]
    assert launch(second) == {"name": NAME, "namespace": "kuberlhf", "state": "Succeeded", "created": False}
    assert second.watch_calls[0]["resource_version"] == running_rv  # watches on from the job as it was found
    assert second.create_calls == 1 and len(second.jobs) == 1


def test_refuses_a_job_of_the_same_name_from_another_run():
    api = FakeApi()
    api.jobs["shared"] = {"metadata": {"name": "shared", "annotations": {"kuberlhf.io/run-id": "someone-else"}}}
    with pytest.raises(LaunchError, match="belongs to run 'someone-else', not 'run-1'") as err:
        launch(api, name="shared")
    assert err.value.reason == "NameTaken" and api.watch_calls == []


def test_watch_reconnects_after_errors_and_relists_after_410():
    api = FakeApi(watches=[
        [("state", NAME, "Running"), ("raise", urllib3.exceptions.ProtocolError("Connection broken"))],
        ApiException(status=500, reason="Internal Server Error"),
        [("gone",)],  # resourceVersion too old: re-read the job and watch from its version
        [("state", NAME, "Succeeded")],
    ])
    assert launch(api)["state"] == "Succeeded"
    assert len(api.watch_calls) == 4
    assert api.sleeps == [2.0, 4.0]  # exponential backoff; a 410 re-lists at once
    rv_after_gone = api.watch_calls[3]["resource_version"]
    assert int(rv_after_gone) == api.rv - 1  # the version read after the 410, not the stale one


def test_watch_gives_up_after_consecutive_errors():
    api = FakeApi(watches=[ApiException(status=503, reason="Service Unavailable")] * 10)
    with pytest.raises(LaunchError, match=r"watch failed 3 times in a row; last: HTTP 503"):
        launch(api, cluster={"max_api_errors": 3})
    assert api.sleeps == [2.0, 4.0] and NAME in api.jobs  # the job is left running for a retried launcher


def test_failed_job_raises_its_reason_and_the_masters_log_tail():
    log = "".join(f"step {i}\n" for i in range(200)) + "RuntimeError: CUDA out of memory\n"
    api = FakeApi(watches=[[("state", NAME, "Running"),
                            ("state", NAME, "Failed", "PyTorchJobFailed", "job failed: master-0 exited with code 1")]],
                  logs={f"{NAME}-master-0": log})
    with pytest.raises(LaunchError) as err:
        launch(api)
    text = str(err.value)
    assert text.splitlines()[0] == f"PyTorchJob kuberlhf/{NAME} failed: PyTorchJobFailed: job failed: master-0 exited with code 1"
    assert err.value.reason == "PyTorchJobFailed" and isinstance(err.value, KuberlhfError)
    tail = err.value.log_tail.splitlines()
    assert tail[0] == f"--- last 50 lines of pod {NAME}-master-0 ---" and len(tail) == 51
    assert tail[-1] == "RuntimeError: CUDA out of memory" and tail[1] == "step 151"
    assert NAME in api.jobs  # a failed job is kept for inspection (ttlSecondsAfterFinished cleans it)
    with pytest.raises(LaunchError, match="failed: PyTorchJobFailed") as again:  # a retried launcher: same verdict
        launch(api)
    assert again.value.log_tail == err.value.log_tail and api.create_calls == 2 and len(api.jobs) == 1


def test_failed_elastic_job_reads_worker_0_and_survives_a_missing_log():
    api = FakeApi(watches=[[("state", NAME, "Failed", "PyTorchJobFailed", "")]])
    with pytest.raises(LaunchError) as err:
        launch(api, cluster={"elastic_min_nodes": 1, "elastic_max_nodes": 2})
    assert f"(log of pod {NAME}-worker-0 unavailable: 404 Not Found)" in str(err.value)


def test_timeout_deletes_the_job():
    api = FakeApi(watches=[[("state", NAME, "Running")]])  # then silence: each window passes with no event
    with pytest.raises(LaunchError, match="did not finish within cluster.timeout_s=900s; the job was deleted") as err:
        launch(api, cluster={"timeout_s": 900})
    assert err.value.reason == "Timeout"
    assert api.deleted == [(NAME, "Background")] and api.jobs == {}
    assert [c["timeout_seconds"] for c in api.watch_calls] == [300, 300, 300, 300]  # 0 s, then 3 idle windows
    assert api.now >= 900


def test_job_deleted_by_someone_else_fails_the_step():
    api = FakeApi(watches=[[("state", NAME, "Running"), ("delete", NAME)]])
    with pytest.raises(LaunchError, match="was deleted before it finished"):
        launch(api)


def test_create_retries_transient_errors_and_stops_on_refusal():
    api = FakeApi(watches=[[("state", NAME, "Succeeded")]])
    api.create_errors = [ApiException(status=503, reason="Service Unavailable")]
    assert launch(api)["created"] is True and api.sleeps == [2.0] and api.create_calls == 2
    denied = FakeApi()
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
    with pytest.raises(ConfigError, match="backend 'trainjob'"):
        launch_stage(**STAGE, run_id="r", task="ppo", backend="trainjob", apis=api.apis())
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
