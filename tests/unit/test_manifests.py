"""The kustomize manifests (manifests/): each overlay built with ``kubectl kustomize``.

Each build passes the same checks as the chart (strict schemas for the oldest and newest
supported Kubernetes, the restricted Pod Security Standard, the launcher's exact verbs) and holds
the same objects as the chart rendered with the matching values (base: the defaults; dev, gpu and
trainjob: ci/dev-values.yaml, ci/gpu-values.yaml and ci/trainjob-values.yaml), down to every field
but Helm's own labels. The trainjob overlay's TrainingRuntimes are, field for field, what
``kuberlhf.k8s.trainjob.build_runtime`` renders from the overlay's own cluster.yaml.
"""

from __future__ import annotations

import base64
import copy
import difflib
import functools
import json

import pytest
import yaml
from deploy_check import (
    OVERLAYS,
    ROOT,
    expected_files,
    kustomize,
    object_errors,
    objects,
    read_values,
    render,
    stale_files,
)
from k8schecks import pss_restricted_errors, validate_all

# labels only Helm writes (the release, the chart version, the manager)
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/version",
               "app.kubernetes.io/managed-by"}


@functools.cache
def _built(directory: str) -> tuple[dict, ...]:
    return tuple(kustomize(directory))


def built(directory: str) -> list[dict]:
    return copy.deepcopy(list(_built(directory)))


def chart_objects(directory: str) -> list[dict]:
    """The chart's objects for the values an overlay mirrors, without the helm test pod."""
    return objects(render(read_values(OVERLAYS[directory])), with_tests=False)


def normalize(obj: dict) -> dict:
    """An object without Helm's labels and annotations; a Secret's stringData as base64 data."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in HELM_LABELS and k != "annotations"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    obj = strip(copy.deepcopy(obj))
    if obj["kind"] == "Secret" and "stringData" in obj:
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in obj.pop("stringData").items()}
    return obj


def by_key(objs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): normalize(o) for o in objs}


@pytest.mark.parametrize("directory", list(OVERLAYS))
def test_overlay_builds_and_validates(directory):
    objs = built(directory)
    assert objs
    assert validate_all([o for o in objs if o["kind"] != "LocalQueue"]) == []
    assert [e for o in objs for e in pss_restricted_errors(o)] == []
    assert object_errors(objs) == []
    assert {o["metadata"]["namespace"] for o in objs} == {"kuberlhf"}


@pytest.mark.parametrize("directory", list(OVERLAYS))
def test_overlay_holds_the_same_objects_as_the_chart(directory):
    ours, chart = by_key(built(directory)), by_key(chart_objects(directory))
    assert sorted(ours) == sorted(chart)
    for key in chart:
        diff = difflib.unified_diff(json.dumps(chart[key], indent=1, sort_keys=True).splitlines(),
                                    json.dumps(ours[key], indent=1, sort_keys=True).splitlines(),
                                    "chart", f"manifests/{directory}", lineterm="", n=1)
        assert ours[key] == chart[key], f"{key} differs (make chart-sync copies configs/ and the chart):\n" + "\n".join(diff)


def test_comparison_sees_a_changed_field():
    ours, chart = by_key(built("base")), by_key(chart_objects("base"))
    role = copy.deepcopy(chart[("Role", "kuberlhf-launcher")])
    role["rules"][0]["verbs"].append("update")
    assert role != ours[("Role", "kuberlhf-launcher")]
    assert ours[("Role", "kuberlhf-launcher")] == chart[("Role", "kuberlhf-launcher")]


def test_base_has_no_secret_and_the_exact_launcher_role():
    objs = built("base")
    assert [o for o in objs if o["kind"] == "Secret"] == []
    (role,) = [o for o in objs if o["kind"] == "Role"]
    assert role["rules"] == [
        {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"],
         "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainingruntimes"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}]


def test_base_config_map_holds_the_repository_configs():
    (cm,) = [o for o in built("base") if o["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"] == "kuberlhf-config"
    expected = {f"{p.parent.name}.{p.name}": p.read_text() for p in ROOT.glob("configs/*/*.yaml")}
    assert {k: v for k, v in cm["data"].items() if k != "cluster.yaml"} == expected, "make chart-sync"


def test_overlays_set_their_cluster_defaults():
    def cluster(directory):
        (cm,) = [o for o in built(directory) if o["kind"] == "ConfigMap"]
        return yaml.safe_load(cm["data"]["cluster.yaml"])

    assert cluster("base")["storage_endpoint"] == ""
    assert cluster("overlays/dev")["storage_endpoint"] == "http://kuberlhf-s3.kuberlhf.svc:8333"
    gpu = cluster("overlays/gpu")
    assert (gpu["gpu_product"], gpu["gpus_per_node"], gpu["kueue_queue"]) == ("h100", 8, "kuberlhf-gpu")
    (queue,) = [o for o in built("overlays/gpu") if o["kind"] == "LocalQueue"]
    assert queue["metadata"]["name"] == gpu["kueue_queue"]
    trainjob = cluster("overlays/trainjob")
    assert (trainjob["backend"], trainjob["runtime_kind"], trainjob["gpu_product"]) == ("trainjob", "TrainingRuntime",
                                                                                          "a100")


def test_only_the_trainjob_overlay_needs_kubeflow_trainer():
    for directory in OVERLAYS:
        kinds = {o["kind"] for o in built(directory) if o["apiVersion"].startswith("trainer.kubeflow.org/")}
        assert kinds == ({"TrainingRuntime"} if directory == "overlays/trainjob" else set()), directory


def test_trainjob_overlay_runtimes_are_what_build_runtime_renders(tmp_path, monkeypatch):
    """Exactly, annotations and pod template labels included (``normalize`` strips those on both sides)."""
    from kuberlhf.k8s.spec import load_cluster
    from kuberlhf.k8s.trainjob import build_runtime, runtime_differences, runtime_name, training_images

    values = {**read_values(ROOT / "charts/kuberlhf/values.yaml")["image"],
              **read_values(OVERLAYS["overlays/trainjob"]).get("image", {})}
    monkeypatch.setenv("KUBERLHF_IMAGE_REGISTRY", values["registry"])
    monkeypatch.setenv("KUBERLHF_IMAGE_TAG", values["tag"])
    monkeypatch.setenv("KUBERLHF_CLUSTER_CONFIG", str(tmp_path / "absent.yaml"))
    objs = built("overlays/trainjob")
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap"]
    (tmp_path / "cluster.yaml").write_text(cm["data"]["cluster.yaml"])
    cluster = load_cluster(tmp_path / "cluster.yaml")
    ours = {o["metadata"]["name"]: o for o in objs if o["kind"] == "TrainingRuntime"}
    expected = {runtime_name(i): build_runtime(i, cluster, cluster.runtime_kind) for i in training_images()}
    assert ours == expected
    assert all(runtime_differences(expected[name], ours[name]) == [] for name in expected)


def test_manifests_are_in_sync_with_configs_and_the_chart(monkeypatch):
    assert stale_files() == [], "manifests/ is out of date: make chart-sync"
    expected = expected_files()
    path = next(p for p in expected if p.name == "demo.yaml")
    monkeypatch.setattr("deploy_check.expected_files", lambda: {**expected, path: expected[path] + "# changed\n"})
    assert stale_files() == [str(path.relative_to(ROOT))]


def test_kustomize_error_is_reported(tmp_path, monkeypatch):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "kustomization.yaml").write_text("resources:\n  - missing.yaml\n")
    monkeypatch.setattr("deploy_check.MANIFESTS", tmp_path)
    with pytest.raises(RuntimeError, match="kubectl kustomize broken"):
        kustomize("broken")


@pytest.mark.parametrize("directory", list(OVERLAYS))
def test_overlay_network_policies_isolate_training_pods(directory):
    """The overlays lack Helm's instance label: their policy for kuberlhf's own pods must still leave
    training pods alone (else any pod of the namespace reaches the rendezvous port)."""
    from k8schecks import endpoint, network_allows

    from kuberlhf.k8s.pytorchjob import build_pytorchjob
    from kuberlhf.k8s.spec import ClusterConfig

    job = build_pytorchjob("sft", "configs/sft/demo.yaml", [], ClusterConfig(nodes=2), "sft-run-1")
    labels = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["metadata"]["labels"]
    pols = [o for o in built(directory) if o["kind"] == "NetworkPolicy"]
    master, worker = endpoint("kuberlhf", labels), endpoint("kuberlhf", labels)
    assert network_allows(pols, worker, master, 23456)
    for other in (endpoint("kuberlhf", {"pipelines.kubeflow.org/v2_component": "true"}), endpoint("team-b", labels)):
        assert not network_allows(pols, other, master, 23456)
    assert not network_allows(pols, master, endpoint(ip="10.2.3.4"), 443)
