"""The shared Kubernetes checks themselves: vendored CRDs unchanged, and each check able to fail."""

from __future__ import annotations

import pytest
from k8schecks import (
    CRD_DIR,
    CRD_FILES,
    OTHER_CRD_FILES,
    SHARED_CRD_DIR,
    crd_errors,
    pss_restricted_errors,
    validate_all,
)


@pytest.mark.parametrize("name", sorted({*CRD_FILES.values(), *OTHER_CRD_FILES}))
def test_vendored_crds_are_the_reference_copies(name):
    if not (SHARED_CRD_DIR / name).is_file():
        pytest.skip(f"no reference copy at {SHARED_CRD_DIR} to compare with")
    assert (CRD_DIR / name).read_bytes() == (SHARED_CRD_DIR / name).read_bytes()


def _job(**extra_spec) -> dict:
    container = {"name": "pytorch", "image": "i", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"}}}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "job-1"},
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "OnFailure",
                                                        "template": {"spec": {"containers": [container]}}}},
                     **extra_spec}}


def test_a_minimal_restricted_job_passes():
    assert crd_errors(_job()) == [] and pss_restricted_errors(_job()) == []


def test_crd_check_refuses_unknown_fields_wrong_types_and_bad_names():
    assert any("'bogus' was unexpected" in e for e in crd_errors(_job(bogus=1)))
    job = _job()
    job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = "one"
    assert any("replicas" in e for e in crd_errors(job))
    job = _job()
    job["metadata"]["name"] = "Job_1"
    assert any("DNS-1035" in e for e in crd_errors(job))


def test_int_or_string_fields_take_both_and_strings_stay_strings():
    job = _job()
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"cpu": 2, "memory": "8Gi"}}  # quantities are x-kubernetes-int-or-string
    assert crd_errors(job) == []
    assert any("nprocPerNode: 8 is not of type 'string'" in e for e in crd_errors(_job(nprocPerNode=8)))


def test_pss_check_catches_each_violation():
    job = _job()
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["volumes"] = [{"name": "h", "hostPath": {"path": "/"}}]
    sc = pod["containers"][0]["securityContext"]
    sc.update(privileged=True, allowPrivilegeEscalation=True, runAsUser=0)
    sc["capabilities"] = {"add": ["SYS_ADMIN"]}
    sc.pop("seccompProfile")
    text = "\n".join(pss_restricted_errors(job))
    for needle in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation", "drop must include ALL",
                   "NET_BIND_SERVICE", "runAsUser must not be 0", "seccompProfile"):
        assert needle in text


def test_builtin_kinds_are_validated_strictly_for_each_version():
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}, "extra": 1}
    errors = validate_all([bad])
    assert len(errors) == 2 and all("'extra' was unexpected" in e for e in errors)
    good = dict(bad)
    good.pop("extra")
    assert validate_all([good]) == []


# ---------------------------------------------------------------- NetworkPolicy evaluation
def _policy(selector: dict, types: list[str], ingress: list | None = None, egress: list | None = None) -> dict:
    spec = {"podSelector": selector, "policyTypes": types}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "a"}, "spec": spec}


def test_network_evaluator_follows_kubernetes_semantics():
    from k8schecks import endpoint, network_allows

    web, db = endpoint("a", {"app": "web"}), endpoint("a", {"app": "db"}, ports={"sql": 5432})
    other_ns = endpoint("b", {"app": "web"})
    assert network_allows([], other_ns, db, 5432)  # no policy: open
    deny_in = _policy({"matchLabels": {"app": "db"}}, ["Ingress"])
    assert not network_allows([deny_in], web, db, 5432) and network_allows([deny_in], db, web, 80)
    from_web = _policy({"matchLabels": {"app": "db"}}, ["Ingress"],
                       ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                 "ports": [{"port": "sql", "protocol": "TCP"}]}])
    assert network_allows([deny_in, from_web], web, db, 5432)  # the union of the policies
    assert not network_allows([from_web], web, db, 5433) and not network_allows([from_web], web, db, 5432, "UDP")
    assert not network_allows([from_web], other_ns, db, 5432)  # a podSelector alone is the policy's namespace
    any_ns = _policy({}, ["Ingress"], ingress=[{"from": [{"namespaceSelector": {}, "podSelector": {
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}}]}])
    assert network_allows([any_ns], other_ns, db, 1) and not network_allows([any_ns], endpoint("b", {}), db, 1)
    egress = _policy({"matchLabels": {"app": "web"}}, ["Egress"], egress=[
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}], "ports": [{"port": 443}]},
        {"ports": [{"port": 53, "protocol": "UDP"}]},
        {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": 5000, "endPort": 5010}]}])
    assert network_allows([egress], web, endpoint(ip="1.2.3.4"), 443)
    assert not network_allows([egress], web, endpoint(ip="10.2.3.4"), 443)
    assert not network_allows([egress], web, endpoint(ip="1.2.3.4"), 80)
    assert network_allows([egress], web, endpoint(ip="10.2.3.4"), 53, "UDP")  # a rule without `to`: anywhere
    assert network_allows([egress], web, db, 5005) and not network_allows([egress], web, db, 5011)
    assert not network_allows([egress], web, endpoint(ip="1.2.3.4"), 5005)  # pod selectors never match addresses
