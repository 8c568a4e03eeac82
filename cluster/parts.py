"""Build the test cluster's parts from their upstream Go modules, at pinned versions (`make cluster-build`).

$ .venv/bin/python cluster/parts.py            # every part; a part already built is not built again
$ .venv/bin/python cluster/parts.py kubernetes etcd
$ .venv/bin/python cluster/parts.py --list      # part, version, binaries

Each part is a small Go module under cluster/tools/<part>/ that requires one upstream module at
one version (go.mod and go.sum pin every dependency; the Go module proxy is the only source) and
names the commands it builds with ``tool`` directives. Kubernetes is built from k8s.io/kubernetes
with its staging modules replaced by their published releases, and stamped so that ``--version``
and the apiserver's ``/version`` report the release. Binaries go to
``.cache/cluster/bin/<part>-<version>/``; a part whose folder is complete (a stamp naming the
hash of its go.mod and go.sum) is skipped, so a second build takes seconds, and the Go build
cache makes a rebuild after a change cheap.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / "cluster" / "tools"
BIN = ROOT / ".cache" / "cluster" / "bin"


@dataclass(frozen=True)
class Binary:
    name: str
    package: str
    cgo: bool = False  # static (CGO_ENABLED=0) unless the command needs C (runc's seccomp)
    tags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Part:
    name: str
    version: str
    binaries: tuple[Binary, ...] = field(default_factory=tuple)

    @property
    def out(self) -> Path:
        return BIN / f"{self.name}-{self.version}"

    def path(self, binary: str) -> Path:
        return self.out / binary


KUBERNETES = "v1.36.3"
_K8S_STAMP = (f"-X k8s.io/component-base/version.gitVersion={KUBERNETES}",
              f"-X k8s.io/component-base/version.gitMajor={KUBERNETES[1:].split('.')[0]}",
              f"-X k8s.io/component-base/version.gitMinor={KUBERNETES.split('.')[1]}",
              "-X k8s.io/component-base/version.gitTreeState=clean",
              f"-X k8s.io/client-go/pkg/version.gitVersion={KUBERNETES}")

PARTS = {part.name: part for part in (
    Part("kubernetes", KUBERNETES, tuple(
        Binary(cmd, f"k8s.io/kubernetes/cmd/{cmd}", ldflags=_K8S_STAMP)
        for cmd in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy",
                    "kubectl"))),
    Part("etcd", "v3.6.16", (Binary("etcd", "kuberlhf.dev/cluster/etcd"),)),
    Part("containerd", "v2.3.7", tuple(
        Binary(cmd, f"github.com/containerd/containerd/v2/cmd/{cmd}", tags=("no_btrfs", "no_devmapper", "no_zfs"),
               ldflags=("-X github.com/containerd/containerd/v2/version.Version=v2.3.7",))
        for cmd in ("containerd", "containerd-shim-runc-v2", "ctr"))),
    Part("runc", "v1.4.4", (Binary("runc", "github.com/opencontainers/runc", cgo=True, tags=("seccomp",),
                                   ldflags=("-X main.version=1.4.4",)),)),
    Part("cri-tools", "v1.37.0", (Binary("crictl", "sigs.k8s.io/cri-tools/cmd/crictl",
                                         ldflags=("-X sigs.k8s.io/cri-tools/pkg/version.Version=v1.37.0",)),)),
    Part("cni-plugins", "v1.9.1", tuple(
        Binary(name, f"github.com/containernetworking/plugins/plugins/{kind}/{name}")
        for kind, name in (("main", "bridge"), ("main", "loopback"), ("ipam", "host-local"), ("meta", "portmap")))),
    Part("coredns", "v1.12.4", (Binary("coredns", "github.com/coredns/coredns"),)),
    Part("helm", "v4.3.2", (Binary("helm", "helm.sh/helm/v4/cmd/helm",
                                   ldflags=("-X helm.sh/helm/v4/internal/version.version=v4.3.2",)),)),
    Part("training-operator", "v1.9.4", (Binary(
        "training-operator", "github.com/kubeflow/training-operator/cmd/training-operator.v1"),)),
    Part("trainer", "v2.3.0", (Binary(
        "trainer-controller-manager", "github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager"),)),
    Part("jobset", "v0.12.0", (Binary("jobset-controller", "sigs.k8s.io/jobset"),)),
    Part("pause", "v1", (Binary("pause", "kuberlhf.dev/cluster/pause"),)),
)}


class BuildError(Exception):
    """A one-line reason a part could not be built."""


def module_digest(part: Part) -> str:
    """sha256 of the part's go.mod and go.sum: what its binaries are built from."""
    h = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        path = TOOLS / part.name / name
        if path.exists():
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def built(part: Part) -> bool:
    stamp = part.out / ".built"
    return stamp.exists() and stamp.read_text().strip() == module_digest(part) and \
        all(part.path(b.name).exists() for b in part.binaries)


def _go_env(cgo: bool) -> dict[str, str]:
    env = {**os.environ, "CGO_ENABLED": "1" if cgo else "0", "GOFLAGS": "-mod=readonly -buildvcs=false",
           "GOTOOLCHAIN": "local"}
    return env


def c_dependencies() -> None:
    """runc's seccomp support links libseccomp (cgo): Debian's libseccomp-dev and pkg-config, installed when missing."""
    if shutil.which("pkg-config") and subprocess.run(["pkg-config", "--exists", "libseccomp"]).returncode == 0:
        return
    if os.geteuid() != 0:
        raise BuildError("runc needs libseccomp-dev and pkg-config (apt-get install libseccomp-dev pkg-config)")
    print("installing Debian's libseccomp-dev and pkg-config ...", flush=True)
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "libseccomp-dev", "pkg-config"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, capture_output=True, env=env).returncode:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        if subprocess.run(cmd, capture_output=True, env=env).returncode:
            raise BuildError("apt-get install libseccomp-dev pkg-config failed")


def build(part: Part, verbose: bool = True) -> float:
    """Build ``part`` unless it is built already; returns the seconds it took (0 when cached)."""
    if built(part):
        return 0.0
    module = TOOLS / part.name
    if not (module / "go.sum").exists():
        raise BuildError(f"cluster/tools/{part.name}/go.sum is missing: run `go mod tidy` there (make cluster-lock)")
    if not shutil.which("go"):
        raise BuildError("go is not installed (Go 1.26 builds the cluster's parts)")
    if any(b.cgo for b in part.binaries):
        c_dependencies()
    started = time.monotonic()
    tmp = part.out.with_name(part.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for binary in part.binaries:
        cmd = ["go", "build", "-trimpath", "-o", str(tmp / binary.name),
               "-ldflags", " ".join(("-s", "-w", *binary.ldflags))]
        if binary.tags:
            cmd += ["-tags", ",".join(binary.tags)]
        cmd.append(binary.package)
        if verbose:
            print(f"+ (cd cluster/tools/{part.name} && {' '.join(cmd)})", flush=True)
        proc = subprocess.run(cmd, cwd=module, env=_go_env(binary.cgo), capture_output=True, text=True)
        if proc.returncode:
            tail = " | ".join(line for line in proc.stderr.strip().splitlines()[-3:])
            raise BuildError(f"{part.name} {part.version}: go build {binary.package} failed: {tail}")
    shutil.rmtree(part.out, ignore_errors=True)
    (tmp / ".built").write_text(module_digest(part) + "\n")
    tmp.rename(part.out)  # complete or absent: a killed build leaves only .partial
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", choices=[[], *PARTS], metavar="PART",
                        help=f"some of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--list", action="store_true", help="print part, version and binaries")
    args = parser.parse_args(argv)
    selected = [PARTS[name] for name in (args.parts or PARTS)]
    if args.list:
        for part in selected:
            print(part.name, part.version, " ".join(b.name for b in part.binaries))
        return 0
    total = time.monotonic()
    try:
        for part in selected:
            took = build(part)
            print(f"{part.name} {part.version}: " + (f"built in {took:.0f} s" if took else "already built"),
                  flush=True)
    except BuildError as err:
        print(f"cluster build: {err}", file=sys.stderr)
        return 2
    print(f"cluster build: {len(selected)} parts in {time.monotonic() - total:.0f} s ({BIN.relative_to(ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
