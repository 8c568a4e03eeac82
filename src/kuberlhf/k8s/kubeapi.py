"""The Kubernetes API as the launcher sees it: its clients (:class:`KubeApis`, injected so tests pass fakes;
the ``kubernetes`` package is imported only when real ones are built), the two job kinds it creates
(:data:`BACKEND`), its error, and how an API error reads (transient or not, the server's message)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from kuberlhf.errors import KuberlhfError
from kuberlhf.k8s import pytorchjob, trainjob


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



def timestamp(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (``2026-11-03T10:00:00Z``); None when absent or unreadable."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() if text else None
    except ValueError:
        return None


def transient(err: Any) -> bool:
    """Whether an ``ApiException`` is worth a retry: no status (network), 429, or a server error."""
    return not err.status or err.status == 429 or err.status >= 500


def network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions of a connection that failed before any HTTP status."""
    import urllib3

    return (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def body_message(err: Any) -> str:
    """The ``message`` of an ``ApiException``'s JSON body (the API server's reason for a refusal)."""
    import json

    try:
        return json.loads(err.body).get("message", "") if err.body else ""
    except (ValueError, AttributeError):
        return str(err.body)[:300]
