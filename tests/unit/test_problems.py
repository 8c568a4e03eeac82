"""kuberlhf.k8s.problems: the cluster's reasons a job's pods do not run, one line each."""

from __future__ import annotations

from kuberlhf.k8s import problems


def pod(name: str, waiting: str, message: str = "", init: bool = False) -> dict:
    field = "init_container_statuses" if init else "container_statuses"
    return {"metadata": {"name": name},
            "status": {field: [{"name": "c", "state": {"waiting": {"reason": waiting, "message": message}}}]}}


def test_a_pull_that_flips_between_errimagepull_and_backoff_is_one_problem():
    first = problems.pod_problems({"items": [pod("p", "ErrImagePull", "no such host", init=True)]})
    later = problems.pod_problems({"items": [pod("p", "ImagePullBackOff", "Back-off pulling", init=True)]})
    assert [k for k, _ in first] == [k for k, _ in later]
    assert first[0][1] == "pod p, init container c: ErrImagePull: no such host"


def test_waiting_that_passes_is_no_problem_and_unschedulable_is_one():
    assert problems.pod_problems({"items": [pod("p", "ContainerCreating"), pod("q", "PodInitializing")]}) == []
    unschedulable = {"metadata": {"name": "p"}, "status": {"conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/1 nodes are available: 1 Insufficient cpu."}]}}
    assert [line for _, line in problems.pod_problems({"items": [unschedulable]})] == [
        "pod p: Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."]


def test_only_warning_events_about_the_jobs_objects():
    events = {"items": [
        {"type": "Warning", "reason": "FailedCreatePod", "message": "forbidden",
         "involved_object": {"kind": "PyTorchJob", "name": "j"}},
        {"type": "Normal", "reason": "SuccessfulCreatePod", "message": "ok",
         "involved_object": {"kind": "PyTorchJob", "name": "j"}},
        {"type": "Warning", "reason": "FailedCreatePod", "message": "other",
         "involved_object": {"kind": "PyTorchJob", "name": "j2"}}]}
    assert [line for _, line in problems.event_problems(events, {"j"})] == ["PyTorchJob j: FailedCreatePod: forbidden"]


def test_selectors_are_the_operators_labels():
    assert problems.pod_selector("pytorchjob", "j") == "training.kubeflow.org/job-name=j"
    assert problems.pod_selector("trainjob", "j") == "jobset.sigs.k8s.io/jobset-name=j"


def test_events_that_repeat_a_waiting_container_or_themselves_are_said_once():
    events = {"items": [
        {"type": "Warning", "reason": "Failed", "message": "Failed to pull image", "involved_object": {"name": "p"}},
        {"type": "Warning", "reason": "ErrImagePull", "message": "pull", "involved_object": {"name": "j"}},
        {"type": "Warning", "reason": "FailedScheduling", "message": "0/1 nodes: disk-pressure",
         "involved_object": {"kind": "Pod", "name": "p"}},
        {"type": "Warning", "reason": "FailedScheduling", "message": "0/1 nodes: disk-pressure (again)",
         "involved_object": {"kind": "Pod", "name": "p"}}]}
    found = problems.event_problems(events, {"j", "p"})
    assert len({key for key, _ in found}) == 1 and found[0][1] == "Pod p: FailedScheduling: 0/1 nodes: disk-pressure"
