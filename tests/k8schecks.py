"""Checks every Kubernetes object kuberlhf renders must pass (launcher, chart, manifests).

- ``crd_errors``: a custom resource (PyTorchJob; Trainer v2.3's TrainJob, TrainingRuntime,
  ClusterTrainingRuntime) against its CRD's openAPIV3Schema,
  strictly: an object that declares its properties admits no others (the API server prunes
  unknown fields silently, which hides typos such as ``restartPolicy`` at the wrong level).
- ``builtin_errors``: built-in kinds with ``kubernetes-validate --strict`` for one Kubernetes version.
- ``pss_restricted_errors``: the "restricted" Pod Security Standard for every pod spec in an object.

Each returns a list of readable errors (empty when the object passes), so a test can assert
``== []`` and show every problem at once.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import yaml

CRD_DIR = Path(__file__).resolve().parent / "fixtures" / "crds"
SHARED_CRD_DIR = Path(__file__).resolve().parents[2] / "shared" / "crds"
CRD_FILES = {
    ("kubeflow.org", "PyTorchJob"): "kubeflow.org_pytorchjobs.yaml",
    # Kubeflow Trainer v2.3: what the trainjob backend and the chart's runtimes are checked against
    ("trainer.kubeflow.org", "TrainJob"): "trainer-v2.3/trainer.kubeflow.org_trainjobs.yaml",
    ("trainer.kubeflow.org", "TrainingRuntime"): "trainer-v2.3/trainer.kubeflow.org_trainingruntimes.yaml",
    ("trainer.kubeflow.org", "ClusterTrainingRuntime"): "trainer-v2.3/trainer.kubeflow.org_clustertrainingruntimes.yaml",
}
# vendored beside them, unchanged, and compared with the reference copies too
OTHER_CRD_FILES = ("trainer.kubeflow.org_trainjobs.yaml", "trainer-v2.3/example-runtime-torch-distributed.yaml")
# the oldest and newest Kubernetes versions kuberlhf supports (kubernetes-validate bundles 1.25-1.37)
K8S_VERSIONS = ("1.29.0", "1.37.0")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


# ---------------------------------------------------------------- custom resources
def _strict(schema: dict) -> dict:
    """openAPIV3Schema (Kubernetes dialect) -> JSON Schema with unknown fields refused."""
    schema = dict(schema)
    if schema.pop("x-kubernetes-int-or-string", False):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    preserve = schema.pop("x-kubernetes-preserve-unknown-fields", False)
    for key in list(schema):
        if key.startswith("x-kubernetes-"):
            schema.pop(key)
    if "properties" in schema:
        schema["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if not preserve and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [_strict(sub) for sub in schema[key]]
    return schema


@functools.cache
def crd_schema(group: str, kind: str, version: str) -> dict:
    path = CRD_DIR / CRD_FILES[(group, kind)]
    crd = yaml.safe_load(path.read_text())
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
            # metadata is typed `object` in a CRD; the API server checks it as ObjectMeta
            schema["properties"]["metadata"] = {"type": "object"}
            return schema
    raise KeyError(f"{path.name} has no version {version}")


def crd_errors(obj: dict) -> list[str]:
    """Strict CRD-schema errors of a custom resource, plus the name rules its controller needs."""
    import jsonschema

    group, _, version = obj.get("apiVersion", "").rpartition("/")
    schema = crd_schema(group, obj.get("kind"), version)
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]
    name = (obj.get("metadata") or {}).get("name", "")
    if not DNS1035.match(name) or len(name) > 63:
        errors.append(f"metadata.name: {name!r} is not a DNS-1035 label of at most 63 characters")
    return errors


# ---------------------------------------------------------------- built-in kinds
def builtin_errors(obj: dict, k8s_version: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}: {err.message} at {list(err.path)}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [f"{obj.get('kind')}: no schema for Kubernetes {k8s_version}: {err}"]
    return []


def is_custom(obj: dict) -> bool:
    group = obj.get("apiVersion", "").rpartition("/")[0]
    return (group, obj.get("kind")) in CRD_FILES


def validate_all(objs: list[dict]) -> list[str]:
    """Every object: custom resources against their CRD, built-in kinds for each supported version."""
    errors = []
    for obj in objs:
        if is_custom(obj):
            errors += crd_errors(obj)
        else:
            for version in K8S_VERSIONS:
                errors += [f"[k8s {version}] {e}" for e in builtin_errors(obj, version)]
    return errors


# ---------------------------------------------------------------- Pod Security Standard "restricted"
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def pod_specs(obj: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod spec) for every pod template inside an object (Pod, workloads, PyTorchJob, TrainJob)."""
    def walk(node, path):
        if isinstance(node, dict):
            if "containers" in node and isinstance(node["containers"], list):
                yield path, node
                return
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}" if path else key)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")

    yield from walk(obj, "")


def pss_restricted_errors(obj: dict) -> list[str]:
    """Violations of the restricted Pod Security Standard (v1.29+) in every pod spec of ``obj``."""
    errors = []
    specs = list(pod_specs(obj))
    if obj.get("kind") in {"Pod", "Deployment", "StatefulSet", "Job", "DaemonSet", "PyTorchJob", "TrainingRuntime",
                           "ClusterTrainingRuntime"} and not specs:
        errors.append(f"{obj.get('kind')}: no pod spec found")
    for where, spec in specs:
        pod_sc = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                errors.append(f"{where}.{flag} must not be true")
        for vol in spec.get("volumes") or []:
            kinds = set(vol) - {"name"}
            if not kinds <= RESTRICTED_VOLUMES:
                errors.append(f"{where}.volumes[{vol.get('name')}]: type {sorted(kinds)} is not allowed")
        containers = [(f"{key}[{c.get('name')}]", c) for key in ("initContainers", "containers", "ephemeralContainers")
                      for c in spec.get(key) or []]
        for cwhere, c in containers:
            sc = c.get("securityContext") or {}
            at = f"{where}.{cwhere}.securityContext"
            if sc.get("privileged"):
                errors.append(f"{at}.privileged must not be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{at}.allowPrivilegeEscalation must be false")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or []):
                errors.append(f"{at}.capabilities.drop must include ALL")
            if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
                errors.append(f"{at}.capabilities.add may only hold NET_BIND_SERVICE")
            if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
                errors.append(f"{at}.runAsNonRoot must be true (here or in the pod securityContext)")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                errors.append(f"{at}.runAsUser must not be 0")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                errors.append(f"{at}.seccompProfile.type must be RuntimeDefault or Localhost (here or in the pod)")
            for port in c.get("ports") or []:
                if port.get("hostPort"):
                    errors.append(f"{where}.{cwhere}.ports: hostPort is not allowed")
    return errors


def load_documents(text: str) -> list[dict]:
    """The non-empty YAML documents of a multi-document string."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


# ---------------------------------------------------------------- NetworkPolicy evaluation
def endpoint(namespace: str | None = None, labels: dict | None = None, ip: str | None = None,
             ports: dict[str, int] | None = None) -> dict:
    """A traffic endpoint: a pod (namespace, labels, named container ports) or an address outside the cluster."""
    if ip is not None:
        return {"ip": ip}
    return {"namespace": namespace, "labels": dict(labels or {}), "ports": dict(ports or {}),
            "ns_labels": {"kubernetes.io/metadata.name": namespace}}


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels; ``{}`` matches everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict, other: dict, policy_ns: str) -> bool:
    import ipaddress

    if "ipBlock" in peer:  # addresses outside the cluster (pod addresses are selected by label)
        if "ip" not in other:
            return False
        ip, block = ipaddress.ip_address(other["ip"]), peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except") or [])
    if "ip" in other:
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], other["ns_labels"]):
            return False
    elif other["namespace"] != policy_ns:
        return False
    return selector_matches(peer.get("podSelector"), other["labels"])


def _port_matches(rule_ports: list | None, port: int, protocol: str, target: dict) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        if isinstance(want, str):  # a named port of the destination pod
            want = target.get("ports", {}).get(want)
        if want is not None and (want == port or want <= port <= p.get("endPort", want)):
            return True
    return False


def _direction(policy: dict, kind: str) -> bool:
    spec = policy["spec"]
    types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
    return kind in types


def network_allows(policies: list[dict], src: dict, dst: dict, port: int, protocol: str = "TCP") -> bool:
    """Whether NetworkPolicies ``policies`` let ``src`` open a ``protocol`` connection to ``dst:port``.

    Kubernetes semantics: a pod selected by a policy of a direction is isolated in that direction and
    admits only what some selecting policy's rules allow (the union); the connection needs the source's
    egress and the destination's ingress. Addresses outside the cluster are never isolated.
    """
    def allowed(pod: dict, other: dict, kind: str, rules_key: str, peers_key: str, target: dict) -> bool:
        if "ip" in pod:
            return True
        selecting = [p for p in policies if p["metadata"].get("namespace", pod["namespace"]) == pod["namespace"]
                     and _direction(p, kind) and selector_matches(p["spec"].get("podSelector"), pod["labels"])]
        if not selecting:
            return True
        return any((not rule.get(peers_key) or any(_peer_matches(peer, other, pod["namespace"])
                                                   for peer in rule[peers_key]))
                   and _port_matches(rule.get("ports"), port, protocol, target)
                   for p in selecting for rule in p["spec"].get(rules_key) or [])

    return (allowed(src, dst, "Egress", "egress", "to", dst)
            and allowed(dst, src, "Ingress", "ingress", "from", dst))
