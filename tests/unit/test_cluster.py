"""The test cluster's build and scripts, checked without a cluster (make cluster-up is its own tier).

cluster/parts.py builds each part from a Go module under cluster/tools/<part>/ pinned in go.mod and
go.sum; cluster/oci.py packs the cluster's own images; cluster/cluster.py starts and stops it.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "cluster"))

import oci  # noqa: E402  (cluster/oci.py)
import parts  # noqa: E402  (cluster/parts.py)


def go_mod(part: str) -> str:
    return (ROOT / "cluster/tools" / part / "go.mod").read_text()


@pytest.mark.parametrize("part", sorted(parts.PARTS))
def test_each_part_is_a_pinned_module_of_the_version_it_is_built_as(part):
    spec = parts.PARTS[part]
    text = go_mod(part)
    assert (ROOT / "cluster/tools" / part / "go.sum").exists(), f"{part}: no go.sum (go mod tidy)"
    if part in ("etcd", "pause"):  # wrappers of our own: main.go calls the upstream entry point
        assert (ROOT / "cluster/tools" / part / "main.go").exists()
    if part == "pause":
        return
    required = dict(re.findall(r"^\s*(?:require\s+)?(\S+) (v\S+)(?: // indirect)?$", text, re.M))
    upstream = {"kubernetes": "k8s.io/kubernetes", "etcd": "go.etcd.io/etcd/server/v3",
                "containerd": "github.com/containerd/containerd/v2", "runc": "github.com/opencontainers/runc",
                "cri-tools": "sigs.k8s.io/cri-tools", "cni-plugins": "github.com/containernetworking/plugins",
                "coredns": "github.com/coredns/coredns", "helm": "helm.sh/helm/v4",
                "training-operator": "github.com/kubeflow/training-operator",
                "trainer": "github.com/kubeflow/trainer/v2", "jobset": "sigs.k8s.io/jobset"}[part]
    assert required.get(upstream) == spec.version, (part, required.get(upstream), spec.version)
    for binary in spec.binaries:
        if not binary.package.startswith("kuberlhf.dev/"):
            assert re.search(rf"^\s*(tool\s+)?{re.escape(binary.package)}$", text, re.M), binary.package


def test_kubernetes_staging_modules_are_the_published_release():
    """k8s.io/kubernetes points its staging modules at ./staging: each is replaced by its v0.<minor>.<patch>."""
    text = go_mod("kubernetes")
    staging = re.findall(r"^\s*(k8s\.io/\S+) => (k8s\.io/\S+) (v\S+)$", text, re.M)
    assert len(staging) >= 30
    release = "v0." + parts.KUBERNETES.removeprefix("v1.")
    assert {version for _, _, version in staging} == {release}
    assert all(old == new for old, new, _ in staging)
    stamp = " ".join(parts.PARTS["kubernetes"].binaries[0].ldflags)
    assert f"gitVersion={parts.KUBERNETES}" in stamp and "gitMinor=36" in stamp


def test_the_docs_name_the_versions_the_cluster_is_built_from():
    text = (ROOT / "docs/deploy.md").read_text()
    for part in ("kubernetes", "etcd", "containerd", "runc", "coredns", "helm", "training-operator", "trainer",
                 "jobset"):
        version = parts.PARTS[part].version
        assert version.lstrip("v") in text, f"docs/deploy.md does not name {part} {version}"


def test_a_part_is_rebuilt_only_when_its_module_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(parts, "TOOLS", tmp_path / "tools")
    monkeypatch.setattr(parts, "BIN", tmp_path / "bin")
    part = parts.Part("demo", "v1", (parts.Binary("demo", "example.com/demo"),))
    (tmp_path / "tools/demo").mkdir(parents=True)
    (tmp_path / "tools/demo/go.mod").write_text("module example.com/demo\n")
    (tmp_path / "tools/demo/go.sum").write_text("")
    part.out.mkdir(parents=True)
    part.path("demo").write_text("binary")
    (part.out / ".built").write_text(parts.module_digest(part))
    assert parts.built(part)
    (tmp_path / "tools/demo/go.sum").write_text("example.com/x v1.0.0 h1:abc=\n")
    assert not parts.built(part)


def test_oci_archive_is_what_ctr_import_reads_and_is_deterministic(tmp_path):
    program = tmp_path / "pause"
    program.write_bytes(b"\x7fELF fake")
    program.chmod(0o755)
    first = oci.archive("registry.k8s.io/pause:t", {"/pause": program}, tmp_path / "a.tar", entrypoint=["/pause"],
                        dirs={"/tmp": 0o1777})
    second = oci.archive("registry.k8s.io/pause:t", {"/pause": program}, tmp_path / "b.tar", entrypoint=["/pause"],
                         dirs={"/tmp": 0o1777})
    assert first == second
    with tarfile.open(tmp_path / "a.tar") as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile(manifest["Config"]))
        layer = tar.extractfile(manifest["Layers"][0]).read()
    assert manifest["RepoTags"] == ["registry.k8s.io/pause:t"]
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert config["config"]["Entrypoint"] == ["/pause"] and config["config"]["User"] == "65532:65532"
    with tarfile.open(fileobj=__import__("io").BytesIO(layer)) as inner:
        members = {m.name: m for m in inner.getmembers()}
    assert members["pause"].mode == 0o755 and members["tmp"].mode == 0o1777 and members["tmp"].isdir()


def test_the_scripts_parse_and_list_their_parts():
    out = subprocess.run([sys.executable, str(ROOT / "cluster/parts.py"), "--list"], capture_output=True, text=True,
                         check=True).stdout
    assert [line.split()[0] for line in out.splitlines()] == list(parts.PARTS)
    proc = subprocess.run([sys.executable, str(ROOT / "cluster/cluster.py"), "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "up" in proc.stdout and "down" in proc.stdout


def test_the_operators_init_container_is_restricted_and_runs_the_launcher_image():
    """The Training Operator's default init container (alpine:3.10, no securityContext) is refused under the
    restricted Pod Security Standard: the component's template is admitted and its image is the launcher's."""
    import yaml
    from k8schecks import pss_restricted_errors

    from kuberlhf import images

    folder = ROOT / "manifests" / "training-operator"
    template = (folder / "init-container.yaml").read_text()
    filled = (template.replace("{{.InitContainerImage}}", "img").replace("{{.MaxTries}}", "3")
              .replace("{{.MasterAddr}}", "job-master-0"))
    containers = yaml.safe_load(filled)
    assert [c["name"] for c in containers] == ["init-pytorch"] and containers[0]["image"] == "img"
    pod = {"kind": "Pod", "spec": {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                                   "initContainers": containers, "containers": [dict(containers[0], name="main")]}}
    assert pss_restricted_errors(pod) == []
    code = containers[0]["command"][2]
    compile(code, "init-pytorch", "exec")  # the wait is valid Python
    component = yaml.safe_load((folder / "kustomization.yaml").read_text())
    args = component["patches"][0]["patch"]
    assert f"--pytorch-init-container-image={images.image_ref('launcher', images.DEFAULT_REGISTRY)}" in args


def test_every_image_loaded_into_the_cluster_is_pinned(monkeypatch, tmp_path):
    """Seen: under disk pressure the kubelet removed the launcher and stage images, which nothing can pull
    again; containerd reports an image pinned (never garbage-collected) when it carries this label."""
    import cluster

    calls = []
    monkeypatch.setattr(cluster, "ctr", lambda *args, **kw: calls.append(args) or subprocess.CompletedProcess(args, 0))
    cluster.import_image(tmp_path / "x.tar", "kuberlhf.local/coredns:v1.12.4")
    cluster.pin("local/kuberlhf-launcher:0.1.0")
    labels = [c for c in calls if c[2:4] == ("images", "label")]
    assert [c[4:] for c in labels] == [("kuberlhf.local/coredns:v1.12.4", "io.cri-containerd.pinned=pinned"),
                                       ("docker.io/local/kuberlhf-launcher:0.1.0", "io.cri-containerd.pinned=pinned")]
