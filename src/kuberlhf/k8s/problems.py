"""What keeps a job's pods from running, in the cluster's own words.

A job whose pods the apiserver refuses (PodSecurity, a quota) or whose images cannot be pulled
does not fail: its operator retries and its status may not change at all, so a launcher that
only watches the job waits in silence. The cluster says why in two places: Warning events (on
the job, its JobSet and Jobs, its pods) and the waiting reason of a pod's containers. This module
turns both into one line each; the launcher shows each line once while it waits.

Pure: the objects are the Kubernetes client's models (``to_dict()``, snake_case) or such dicts.
"""

from __future__ import annotations

from typing import Any

# container waiting reasons that do not go away by waiting (a pull still in progress is not one)
STUCK = frozenset({
    "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError",
    "CreateContainerError", "RunContainerError", "CrashLoopBackOff",
})


# event reasons whose news a container's waiting state already tells (a pull failing, a back-off)
SAID = STUCK | {"Failed", "BackOff"}


def pod_selector(backend: str, name: str) -> str:
    """Label selector of every pod of the job: the Training Operator's job-name label, or JobSet's."""
    if backend == "pytorchjob":
        return f"training.kubeflow.org/job-name={name}"
    return f"jobset.sigs.k8s.io/jobset-name={name}"


def _plain(obj: Any) -> dict:
    return obj.to_dict() if hasattr(obj, "to_dict") else (obj or {})


def _items(listing: Any) -> list[dict]:
    items = listing.get("items") if isinstance(listing, dict) else getattr(listing, "items", None)
    return [_plain(item) for item in items or []]


def pod_problems(pods: Any) -> list[tuple[str, str]]:
    """(key, line) for each pod that cannot be scheduled and each container stuck waiting."""
    found = []
    for pod in _items(pods):
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("message"):
                found.append((f"{name}/{cond.get('reason')}",
                              f"pod {name}: {cond.get('reason') or 'not scheduled'}: {cond['message']}"))
        for field in ("init_container_statuses", "container_statuses"):
            for container in status.get(field) or []:
                waiting = (container.get("state") or {}).get("waiting") or {}
                reason = waiting.get("reason") or ""
                if reason in STUCK:
                    kind = "init container" if field.startswith("init") else "container"
                    message = (waiting.get("message") or "").strip()
                    # an image pull's reason flips between ErrImagePull and ImagePullBackOff: one line for both
                    key = f"{name}/{container.get('name')}/{'pull' if 'Pull' in reason else reason}"
                    found.append((key, f"pod {name}, {kind} {container.get('name')}: {reason}"
                                       + (f": {message}" if message else "")))
    return found


def event_problems(events: Any, names: set[str]) -> list[tuple[str, str]]:
    """(key, line) for each Warning event about one of ``names`` (the job, its JobSet and Jobs, its pods)."""
    found = []
    for event in _items(events):
        involved = event.get("involved_object") or {}
        if event.get("type") != "Warning" or involved.get("name") not in names or event.get("reason") in SAID:
            continue
        message = (event.get("message") or "").strip()
        found.append((f"{involved.get('name')}/{event.get('reason')}",  # once per object and reason
                      f"{involved.get('kind') or 'object'} {involved.get('name')}: {event.get('reason')}: {message}"))
    return found


def pod_names(pods: Any) -> set[str]:
    return {(pod.get("metadata") or {}).get("name", "") for pod in _items(pods)}


__all__ = ["STUCK", "event_problems", "pod_names", "pod_problems", "pod_selector"]
