"""A one-node Kubernetes on this machine, every part a local process (`make cluster-up`, `make cluster-down`).

$ .venv/bin/python cluster/cluster.py up       # idempotent: starts what is not running, waits until Ready
$ .venv/bin/python cluster/cluster.py down     # stops what up started; no process, mount, device or route left
$ .venv/bin/python cluster/cluster.py status

Like Kubernetes' own hack/local-up-cluster.sh: certificates made here (openssl), etcd,
kube-apiserver (RBAC, Node authorisation, PodSecurity admission, ServiceAccount tokens),
kube-controller-manager, kube-scheduler, containerd 2 with runc and a CNI bridge, a kubelet,
kube-proxy (nftables). Every binary comes from cluster/parts.py (upstream Go modules at pinned
versions). State, logs and the kubeconfig live under ``.cache/cluster/run/``
(``kubeconfig``, ``logs/<part>.log``); each process's PID is kept there and ``down`` stops those
PIDs alone.

Addresses: the apiserver advertises this machine's own non-loopback address (a loopback address
is refused as the ``kubernetes`` Service's endpoint). Pods live on the bridge ``kuberlhf0``
(10.88.0.0/16, no masquerade); the Service range 10.96.0.0/16 is routed onto that bridge, so a
packet kube-proxy did not rewrite dies there; the pods' resolv.conf names the cluster's DNS alone.
No packet of the cluster leaves the machine. No image is pulled: the sandbox image is built here
(cluster/oci.py) and imported into containerd; pods use ``imagePullPolicy: IfNotPresent``.

Two settings this machine needs (the process lacks CAP_SYS_RESOURCE; cgroups are v1): containerd's
``restrict_oom_score_adj = true`` and the kubelet's ``failCgroupV1: false`` with the cgroupfs driver.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import oci  # noqa: E402  (cluster/oci.py)
import parts  # noqa: E402  (cluster/parts.py)

ROOT = parts.ROOT
RUN = ROOT / ".cache" / "cluster" / "run"
LOGS = RUN / "logs"
PKI = RUN / "pki"
KUBECONFIG = RUN / "kubeconfig"
NODE = "kuberlhf-node"
BRIDGE = "kuberlhf0"
POD_CIDR = "10.88.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
DNS_IP = "10.96.0.10"
API_PORT = 6443
ETCD_PORT = 23790  # not etcd's default: never meet another etcd on this machine
PAUSE = "registry.k8s.io/pause:kuberlhf"
SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")
FORWARD_RULE = ["-i", BRIDGE, "-o", BRIDGE, "-m", "comment", "--comment", "kuberlhf test cluster", "-j", "ACCEPT"]
# the order things start in (down stops them in reverse)
PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet",
             "kube-proxy", "weed")


class ClusterError(Exception):
    """A one-line reason the cluster cannot come up (or go down)."""


def log(message: str) -> None:
    print(f"cluster: {message}", flush=True)


def binary(part: str, name: str) -> str:
    path = parts.PARTS[part].path(name)
    if not path.exists():
        raise ClusterError(f"{path.relative_to(ROOT)} is missing: run make cluster-build")
    return str(path)


def node_ip() -> str:
    """This machine's first global IPv4 address (not loopback, not a bridge of ours or Docker's)."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "scope", "global"], capture_output=True, text=True,
                         check=True).stdout
    for link in json.loads(out):
        if link["ifname"] in (BRIDGE, "docker0") or link["ifname"].startswith(("veth", "br-")):
            continue
        for addr in link.get("addr_info", []):
            return addr["local"]
    raise ClusterError("no global IPv4 address on this machine for the apiserver to advertise")


# --- certificates (openssl) ------------------------------------------------------------------

def _openssl(*args: str) -> None:
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if proc.returncode:
        raise ClusterError(f"openssl {args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")


def certificates(ip: str) -> None:
    """The cluster CA, the apiserver's serving certificate, one client certificate per part, the
    kubelet's serving certificate and the ServiceAccount signing key (made once, kept in pki/)."""
    PKI.mkdir(parents=True, exist_ok=True)
    if not (PKI / "ca.crt").exists():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=kuberlhf-cluster-ca",
                 "-keyout", str(PKI / "ca.key"), "-out", str(PKI / "ca.crt"))
    if not (PKI / "sa.key").exists():
        _openssl("genrsa", "-out", str(PKI / "sa.key"), "2048")
        _openssl("rsa", "-in", str(PKI / "sa.key"), "-pubout", "-out", str(PKI / "sa.pub"))
    service_ip = str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))
    wanted = {
        "apiserver": ("/CN=kube-apiserver", f"IP:{ip},IP:{service_ip},IP:127.0.0.1,DNS:kubernetes,"
                      "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local",
                      "serverAuth"),
        "admin": ("/O=system:masters/CN=kuberlhf-admin", None, "clientAuth"),
        "apiserver-kubelet-client": ("/CN=kube-apiserver-kubelet-client", None, "clientAuth"),
        "controller-manager": ("/CN=system:kube-controller-manager", None, "clientAuth"),
        "scheduler": ("/CN=system:kube-scheduler", None, "clientAuth"),
        "kube-proxy": ("/CN=system:kube-proxy", None, "clientAuth"),
        "kubelet-client": (f"/O=system:nodes/CN=system:node:{NODE}", None, "clientAuth"),
        "kubelet": (f"/CN={NODE}", f"IP:{ip},DNS:{NODE}", "serverAuth"),
    }
    for name, (subject, sans, usage) in wanted.items():
        if (PKI / f"{name}.crt").exists():
            continue
        ext = PKI / f"{name}.ext"
        ext.write_text(f"extendedKeyUsage={usage}\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                       + (f"subjectAltName={sans}\n" if sans else ""))
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(PKI / f"{name}.key"),
                 "-out", str(PKI / f"{name}.csr"))
        _openssl("x509", "-req", "-in", str(PKI / f"{name}.csr"), "-CA", str(PKI / "ca.crt"), "-CAkey",
                 str(PKI / "ca.key"), "-CAcreateserial", "-days", "3650", "-extfile", str(ext),
                 "-out", str(PKI / f"{name}.crt"))


def kubeconfig(path: Path, user: str, ip: str) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "kuberlhf",
        "clusters": [{"name": "kuberlhf", "cluster": {"server": f"https://{ip}:{API_PORT}",
                                                      "certificate-authority": str(PKI / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate": str(PKI / f"{user}.crt"),
                                          "client-key": str(PKI / f"{user}.key")}}],
        "contexts": [{"name": "kuberlhf", "context": {"cluster": "kuberlhf", "user": user}}],
    }
    path.write_text(json.dumps(config, indent=1))
    return path


# --- processes ------------------------------------------------------------------------------

def pid_of(name: str) -> int | None:
    """The PID of ``name`` if up started it and it still runs."""
    pidfile = RUN / f"{name}.pid"
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    return pid if Path(cmdline).name == name else None


STARTED: dict[str, subprocess.Popen] = {}  # what this run started (pid_of reads /proc: racy before exec)


def running(name: str) -> bool:
    proc = STARTED.get(name)
    return proc.poll() is None if proc else pid_of(name) is not None


def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    if pid := pid_of(name):
        return pid
    LOGS.mkdir(parents=True, exist_ok=True)
    with open(LOGS / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    STARTED[name] = proc
    log(f"started {name} (pid {proc.pid}; log {(LOGS / f'{name}.log').relative_to(ROOT)})")
    return proc.pid


def wait(what: str, check, timeout: float, name: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
        if name and not running(name):
            tail = (LOGS / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise ClusterError(f"{name} exited while waiting for {what}: {' | '.join(tail)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not after {timeout:.0f} s (logs in {LOGS.relative_to(ROOT)})")
        time.sleep(1)


def kubectl(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([binary("kubernetes", "kubectl"), "--kubeconfig", str(KUBECONFIG), *args],
                          capture_output=True, text=True, input=input, timeout=600)
    if check and proc.returncode:
        raise ClusterError(f"kubectl {' '.join(args[:3])} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc


def _https_ok(url: str) -> bool:
    import ssl

    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    with urllib.request.urlopen(url, context=ctx, timeout=5) as response:
        return response.status == 200


# --- the parts ------------------------------------------------------------------------------

def control_plane(ip: str) -> None:
    start("etcd", [binary("etcd", "etcd"), "--name", "kuberlhf", "--data-dir", str(RUN / "etcd"),
                   "--listen-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
                   "--advertise-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
                   "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PORT + 1}",
                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PORT + 1}",
                   "--initial-cluster", f"kuberlhf=http://127.0.0.1:{ETCD_PORT + 1}",
                   "--listen-metrics-urls", f"http://127.0.0.1:{ETCD_PORT + 2}"])
    wait("etcd /health", lambda: urllib.request.urlopen(f"http://127.0.0.1:{ETCD_PORT}/health", timeout=3).status
         == 200, 60, "etcd")
    start("kube-apiserver", [
        binary("kubernetes", "kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
        f"--advertise-address={ip}", f"--bind-address={ip}", f"--secure-port={API_PORT}",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction", f"--client-ca-file={PKI / 'ca.crt'}",
        f"--tls-cert-file={PKI / 'apiserver.crt'}", f"--tls-private-key-file={PKI / 'apiserver.key'}",
        f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={PKI / 'ca.crt'}", "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-key-file={PKI / 'sa.pub'}", f"--service-account-signing-key-file={PKI / 'sa.key'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local", "--allow-privileged=true",
        "--profiling=false", "--enable-priority-and-fairness=false"])
    wait("the apiserver's /readyz", lambda: _https_ok(f"https://{ip}:{API_PORT}/readyz"), 120, "kube-apiserver")
    # the apiserver's own client identity at the kubelet (logs, exec): the built-in role for it
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "kuberlhf:kube-apiserver-kubelet-client"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": "kube-apiserver-kubelet-client"}],
    }))
    for part in ("controller-manager", "scheduler", "kube-proxy", "kubelet-client"):
        kubeconfig(RUN / f"{part}.kubeconfig", part, ip)
    start("kube-controller-manager", [
        binary("kubernetes", "kube-controller-manager"), f"--kubeconfig={RUN / 'controller-manager.kubeconfig'}",
        f"--authentication-kubeconfig={RUN / 'controller-manager.kubeconfig'}",
        f"--authorization-kubeconfig={RUN / 'controller-manager.kubeconfig'}",
        f"--service-account-private-key-file={PKI / 'sa.key'}", f"--root-ca-file={PKI / 'ca.crt'}",
        f"--cluster-signing-cert-file={PKI / 'ca.crt'}", f"--cluster-signing-key-file={PKI / 'ca.key'}",
        "--use-service-account-credentials=true", "--leader-elect=false", "--bind-address=127.0.0.1",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--controllers=*,-cloud-node-lifecycle"])
    start("kube-scheduler", [binary("kubernetes", "kube-scheduler"), f"--kubeconfig={RUN / 'scheduler.kubeconfig'}",
                             f"--authentication-kubeconfig={RUN / 'scheduler.kubeconfig'}",
                             f"--authorization-kubeconfig={RUN / 'scheduler.kubeconfig'}",
                             "--leader-elect=false", "--bind-address=127.0.0.1"])


def network() -> None:
    """The pods' bridge (made before the first pod, so the Service route can point at it) and that route."""
    links = subprocess.run(["ip", "-j", "link", "show", BRIDGE], capture_output=True, text=True)
    if links.returncode:
        gateway = f"{next(ipaddress.ip_network(POD_CIDR).hosts())}/{ipaddress.ip_network(POD_CIDR).prefixlen}"
        for cmd in (["ip", "link", "add", BRIDGE, "type", "bridge"], ["ip", "addr", "add", gateway, "dev", BRIDGE],
                    ["ip", "link", "set", BRIDGE, "up"]):
            subprocess.run(cmd, check=True)
    routes = subprocess.run(["ip", "route", "show", SERVICE_CIDR], capture_output=True, text=True).stdout
    if not routes.strip():
        subprocess.run(["ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE], check=True)
    # forwarding, and bridged packets through netfilter (a Service's reply between two pods of the bridge
    # must meet kube-proxy's rules); the values before are kept and put back by down
    saved = RUN / "sysctl.json"
    if not saved.exists():
        saved.write_text(json.dumps({key: Path(f"/proc/sys/{key}").read_text().strip() for key in SYSCTLS}))
    for key in SYSCTLS:
        Path(f"/proc/sys/{key}").write_text("1")
    # bridged packets now meet the host's firewall: a FORWARD policy of DROP (Docker sets one) would cut pods
    # off from each other and from the cluster's DNS; one rule lets the bridge's own traffic through
    if shutil.which("iptables") and subprocess.run(["iptables", "-C", "FORWARD", *FORWARD_RULE],
                                                   capture_output=True).returncode:
        subprocess.run(["iptables", "-I", "FORWARD", *FORWARD_RULE], check=True, capture_output=True)
    cni = RUN / "cni" / "net.d"
    cni.mkdir(parents=True, exist_ok=True)
    (cni / "10-kuberlhf.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "kuberlhf",
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(RUN / "cni" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}, indent=1))
    (RUN / "resolv.conf").write_text(f"nameserver {DNS_IP}\nsearch cluster.local\noptions ndots:5\n")


def containerd() -> None:
    state = RUN / "containerd"
    (state / "root").mkdir(parents=True, exist_ok=True)
    bins = ":".join(str(parts.PARTS[p].out) for p in ("containerd", "runc"))
    config = f"""version = 3
root = "{state / 'root'}"
state = "{state / 'state'}"

[grpc]
  address = "{RUN / 'containerd.sock'}"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{PAUSE}"

[plugins.'io.containerd.cri.v1.runtime']
  # the process lacks CAP_SYS_RESOURCE: runc may not raise a container's oom_score_adj
  restrict_oom_score_adj = true

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["{parts.PARTS['cni-plugins'].out}"]
  conf_dir = "{RUN / 'cni' / 'net.d'}"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = "{parts.PARTS['runc'].path('runc')}"
  SystemdCgroup = false
"""
    (state / "config.toml").write_text(config)
    start("containerd", [binary("containerd", "containerd"), "--config", str(state / "config.toml")],
          env={"PATH": f"{bins}:{os.environ['PATH']}"})
    wait("containerd's socket", lambda: ctr("version").returncode == 0, 60, "containerd")
    if PAUSE not in loaded_images():
        tar = RUN / "images" / "pause.tar"
        oci.archive(PAUSE, {"/pause": parts.PARTS["pause"].path("pause")}, tar, entrypoint=["/pause"])
        import_image(tar, PAUSE)


def ctr(*args: str, input_file: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [binary("containerd", "ctr"), "--address", str(RUN / "containerd.sock"), *args]
    if input_file:
        with open(input_file, "rb") as stdin:
            return subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, timeout=1800)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def import_image(tar: Path, ref: str) -> None:
    proc = ctr("-n", "k8s.io", "images", "import", "--no-unpack=false", "-", input_file=tar)
    if proc.returncode:
        raise ClusterError(f"ctr images import {tar.name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    pin(ref)


# no image here can be pulled again: the kubelet's image garbage collection (and its eviction manager, under
# disk pressure) removes unused images unless the runtime reports them pinned, which containerd does for this label
PINNED = "io.cri-containerd.pinned=pinned"


def containerd_name(ref: str) -> str:
    """``ref`` as containerd names it (a name without a registry host is Docker Hub's)."""
    return ref if "." in ref.split("/")[0] else f"docker.io/{ref}"


def loaded_images() -> set[str]:
    """The images in the cluster's containerd, by their containerd names."""
    return set(ctr("-n", "k8s.io", "images", "list", "-q").stdout.split())


def pin(ref: str) -> None:
    name = containerd_name(ref)
    proc = ctr("-n", "k8s.io", "images", "label", name, PINNED)
    if proc.returncode:
        raise ClusterError(f"pinning {name} in containerd failed: {proc.stderr.strip().splitlines()[-1:]}")


def kubelet(ip: str) -> None:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": ip, "port": 10250, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(PKI / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(PKI / "kubelet.crt"), "tlsPrivateKeyFile": str(PKI / "kubelet.key"),
        "containerRuntimeEndpoint": f"unix://{RUN / 'containerd.sock'}",
        # cgroups are v1 here, managed through cgroupfs (no systemd)
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "clusterDNS": [DNS_IP], "clusterDomain": "cluster.local", "resolvConf": str(RUN / "resolv.conf"),
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%", "imagefs.available": "2%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "maxPods": 60,
    }
    (RUN / "kubelet.yaml").write_text(json.dumps(config, indent=1))
    start("kubelet", [binary("kubernetes", "kubelet"), f"--config={RUN / 'kubelet.yaml'}",
                      f"--kubeconfig={RUN / 'kubelet-client.kubeconfig'}", f"--root-dir={RUN / 'kubelet'}",
                      f"--hostname-override={NODE}", f"--node-ip={ip}"])
    wait(f"node {NODE} Ready", lambda: "True" in kubectl(
        "get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False).stdout,
        180, "kubelet")


def kube_proxy() -> None:
    start("kube-proxy", [binary("kubernetes", "kube-proxy"), f"--kubeconfig={RUN / 'kube-proxy.kubeconfig'}",
                         "--proxy-mode=nftables", f"--cluster-cidr={POD_CIDR}", f"--hostname-override={NODE}",
                         "--metrics-bind-address=127.0.0.1:10249", "--healthz-bind-address=127.0.0.1:10256"])


# --- in-cluster parts: DNS and the Kubeflow operators, from their own manifests -----------------

# part -> (image the cluster runs, the binary at /manager or /coredns, the upstream image names to swap)
CLUSTER_IMAGES = {
    "coredns": ("kuberlhf.local/coredns:v1.12.4", "coredns", "/coredns", ()),
    "training-operator": ("kuberlhf.local/training-operator:v1.9.4", "training-operator", "/manager",
                          ("ghcr.io/kubeflow/training-v1/training-operator",)),
    "trainer": ("kuberlhf.local/trainer-controller-manager:v2.3.0", "trainer-controller-manager", "/manager",
                ("ghcr.io/kubeflow/trainer/trainer-controller-manager",)),
    "jobset": ("kuberlhf.local/jobset:v0.12.0", "jobset-controller", "/manager",
               ("controller", "us-central1-docker.pkg.dev/k8s-staging-images/jobset/jobset")),
}
# namespace, Deployment and CRDs each operator must have ready
OPERATORS = {
    "training-operator": ("kubeflow", "training-operator", ("pytorchjobs.kubeflow.org",)),
    "jobset": ("jobset-system", "jobset-controller-manager", ("jobsets.jobset.x-k8s.io",)),
    "trainer": ("kubeflow-system", "kubeflow-trainer-controller-manager",
                ("trainjobs.trainer.kubeflow.org", "trainingruntimes.trainer.kubeflow.org",
                 "clustertrainingruntimes.trainer.kubeflow.org")),
}


def cluster_images() -> None:
    """The cluster's own images (static binaries on an empty base, non-root, a writable /tmp), imported."""
    have = loaded_images()
    for part, (ref, name, path, _) in CLUSTER_IMAGES.items():
        if containerd_name(ref) in have:
            pin(ref)  # (again: a cluster made before images were pinned)
            continue
        tar = RUN / "images" / f"{part}.tar"
        oci.archive(ref, {path: parts.PARTS[part].path(name)}, tar, entrypoint=[path], dirs={"/tmp": 0o1777})
        import_image(tar, ref)
        log(f"imported {ref}")


def module_dir(part: str) -> Path:
    """Where the Go module cache holds ``part``'s upstream module (its manifests come with it)."""
    spec = parts.PARTS[part]
    module = {"training-operator": "github.com/kubeflow/training-operator", "trainer": "github.com/kubeflow/trainer/v2",
              "jobset": "sigs.k8s.io/jobset"}[part]
    gomodcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True).stdout.strip()
    path = Path(gomodcache) / f"{module}@{spec.version}"
    if not path.exists():
        raise ClusterError(f"{path} is missing: make cluster-build downloads it")
    return path


def operator_manifests(part: str) -> str:
    """The operator's own install manifests, rendered by kustomize (kubectl's), as a user installs them."""
    root = module_dir(part)
    if part == "training-operator":  # with the project's component: a restricted init container, no pull
        overlay = RUN / "kustomize" / "training-operator"
        overlay.mkdir(parents=True, exist_ok=True)
        (overlay / "kustomization.yaml").write_text(json.dumps({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [os.path.relpath(root / "manifests/overlays/standalone", overlay)],  # kustomize: relative
            "components": [os.path.relpath(ROOT / "manifests/training-operator", overlay)]}, indent=1) + "\n")
    elif part == "jobset":
        overlay = root / "config/default"
    else:  # Trainer's manager overlay also fetches JobSet from a download URL: the same parts without it
        overlay = RUN / "kustomize" / "trainer"
        shutil.rmtree(overlay, ignore_errors=True)
        shutil.copytree(root / "manifests", overlay / "manifests")
        subprocess.run(["chmod", "-R", "u+w", str(overlay)], check=True)
        text = (root / "manifests/overlays/manager/kustomization.yaml").read_text()
        kept = [line for line in text.splitlines() if "third-party/jobset" not in line]
        (overlay / "manifests/overlays/manager/kustomization.yaml").write_text("\n".join(kept) + "\n")
        overlay = overlay / "manifests/overlays/manager"
    return kubectl("kustomize", str(overlay)).stdout


def swap_images(text: str, part: str) -> str:
    """The upstream image references replaced by the image built here, never pulled."""
    import yaml

    ref, _, _, upstream = CLUSTER_IMAGES[part]
    docs = [doc for doc in yaml.safe_load_all(text) if doc]
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {}) if doc.get("kind") == "Deployment" else {}
        for container in pod.get("containers", []):
            if container["image"].split("@")[0].rsplit(":", 1)[0] in upstream:
                container["image"], container["imagePullPolicy"] = ref, "IfNotPresent"
            container["args"] = [INIT_IMAGE_ARG + local_image("launcher") if arg.startswith(INIT_IMAGE_ARG) else arg
                                 for arg in container.get("args", [])]
    return yaml.safe_dump_all(docs, sort_keys=False)


INIT_IMAGE_ARG = "--pytorch-init-container-image="


def local_image(name: str) -> str:
    """The project's image ``name`` as built here and loaded into the cluster's containerd."""
    sys.path.insert(0, str(ROOT / "src"))
    from kuberlhf import images

    return images.image_ref(name, "local")


def addons() -> None:
    cluster_images()
    dns = (Path(__file__).parent / "manifests" / "coredns.yaml").read_text()
    kubectl("apply", "--server-side", "-f", "-",
            input=dns.replace("COREDNS_IMAGE", CLUSTER_IMAGES["coredns"][0]).replace("DNS_IP", DNS_IP))
    for part in ("training-operator", "jobset", "trainer"):  # Trainer exits without JobSet's CRD
        manifests = swap_images(operator_manifests(part), part)
        kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifests)
        log(f"applied {part} {parts.PARTS[part].version} from its own manifests")
    kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=180s")
    for part, (namespace, deployment, crds) in OPERATORS.items():
        kubectl("wait", "--for=condition=Established", "--timeout=120s", *(f"crd/{crd}" for crd in crds))
        kubectl("-n", namespace, "wait", "--for=condition=Available", "--timeout=300s", f"deployment/{deployment}")
        log(f"{part}: Available, CRDs established")


# --- the project on it: the test S3 server for pods, the launcher image, the chart ----------------

NAMESPACE = "kuberlhf"
S3_PORT = 18333
S3_BUCKETS = ("kuberlhf",)


def gateway() -> str:
    """The host's address on the pods' bridge: what pods reach this machine at."""
    return str(next(ipaddress.ip_network(POD_CIDR).hosts()))


def object_store():
    """The project's test S3 server (tests/s3server.py) on the bridge address, a process of the cluster."""
    sys.path.insert(0, str(ROOT / "tests"))
    from s3server import S3Server

    server = S3Server(RUN / "s3", port=S3_PORT, ip=gateway())
    if not pid_of("weed"):
        start("weed", server.command())
    else:
        server.endpoint_url = f"http://{gateway()}:{S3_PORT}"
    def answers() -> bool:
        try:
            return server.client().list_buckets() is not None
        except Exception:  # botocore's connection errors are not OSErrors
            return False

    wait("the S3 server", answers, 60, "weed")
    have = {b["Name"] for b in server.client().list_buckets()["Buckets"]}
    for bucket in set(S3_BUCKETS) - have:
        server.client().create_bucket(Bucket=bucket)
    return server


def project_images(names: tuple[str, ...] = ("launcher",)) -> None:
    """The project's images, built on the local base (make images-smoke builds the same, cached) and
    imported into the cluster's containerd; the chart's pods run the launcher image."""
    import importlib.util

    sys.path.insert(0, str(ROOT / "images"))
    sys.path.insert(0, str(ROOT / "src"))
    import engine  # images/engine.py

    # images/build.py, loaded under a name of its own (two scripts named build.py would meet in sys.modules)
    spec = importlib.util.spec_from_file_location("images_build", ROOT / "images" / "build.py")
    image_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_build)

    from kuberlhf import images

    have = loaded_images()
    refs = {name: images.image_ref(name, engine.LOCAL_REGISTRY) for name in names}
    missing = [name for name, ref in refs.items() if containerd_name(ref) not in have]
    for name in set(refs) - set(missing):
        pin(refs[name])
    if not missing:
        return
    with engine.docker_daemon():
        image_build.build(missing, False, "docker", base=engine.local_base(), registry=engine.LOCAL_REGISTRY)
        wanted = [refs[name] for name in missing]  # one archive: the layers the images share go once
        save = subprocess.Popen(["docker", "save", *wanted], stdout=subprocess.PIPE)
        proc = subprocess.run([binary("containerd", "ctr"), "--address", str(RUN / "containerd.sock"), "-n",
                               "k8s.io", "images", "import", "-"], stdin=save.stdout, capture_output=True, text=True)
        save.stdout.close()
        if save.wait() or proc.returncode:
            raise ClusterError(f"loading {', '.join(wanted)} into containerd failed: {proc.stderr.strip()[-200:]}")
        for ref in wanted:
            pin(ref)
        log(f"loaded {', '.join(wanted)} into containerd (pinned)")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG), "HELM_CACHE_HOME": str(RUN / "helm" / "cache"),
           "HELM_CONFIG_HOME": str(RUN / "helm" / "config"), "HELM_DATA_HOME": str(RUN / "helm" / "data")}
    proc = subprocess.run([binary("helm", "helm"), *args], capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode:
        raise ClusterError(f"helm {' '.join(args[:2])} failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc


def chart_values(server) -> list[str]:
    sys.path.insert(0, str(ROOT / "src"))
    from kuberlhf import images

    return ["--set", "image.registry=local", "--set", f"image.tag={images.image_tag()}",
            "--set", f"storage.endpoint={server.endpoint_url}",
            "--set", f"networkPolicy.objectStore.cidrs={{{gateway()}/32}}",
            "--set", f"networkPolicy.objectStore.ports={{{S3_PORT}}}"]


def install_chart() -> None:
    """The chart into a namespace that enforces the restricted Pod Security Standard, then helm test."""
    server = object_store()
    project_images()
    kubectl("apply", "--server-side", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": {
            f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "warn", "audit")}}}))
    creds = server.admin
    secret = kubectl("-n", NAMESPACE, "create", "secret", "generic", "kuberlhf-s3", "--dry-run=client", "-o", "json",
                     f"--from-literal=AWS_ACCESS_KEY_ID={creds.access_key_id}",
                     f"--from-literal=AWS_SECRET_ACCESS_KEY={creds.secret_access_key}").stdout
    kubectl("apply", "--server-side", "-f", "-", input=secret)
    helm("upgrade", "--install", "kuberlhf", str(ROOT / "charts" / "kuberlhf"), "--namespace", NAMESPACE,
         *chart_values(server), "--wait", "--timeout", "5m")
    log("helm: release kuberlhf installed in namespace kuberlhf (restricted)")
    test = helm("test", "kuberlhf", "--namespace", NAMESPACE, "--logs", check=False)
    if test.returncode:
        raise ClusterError(f"helm test kuberlhf failed: {(test.stdout + test.stderr).strip()[-800:]}")
    log("helm test kuberlhf: passed")


def up() -> None:
    if os.geteuid() != 0:
        raise ClusterError("make cluster-up needs root (network devices, routes, containerd, the kubelet)")
    for cmd, package in (("openssl", "openssl"), ("ip", "iproute2"), ("nft", "nftables")):
        if not shutil.which(cmd):  # kube-proxy's nftables mode needs nft
            log(f"installing Debian's {package} ...")
            proc = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
                                  capture_output=True, text=True,
                                  env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if proc.returncode or not shutil.which(cmd):
                raise ClusterError(f"{cmd} is missing and apt-get install {package} failed")
    started = time.monotonic()
    RUN.mkdir(parents=True, exist_ok=True)
    ip = node_ip()
    certificates(ip)
    kubeconfig(KUBECONFIG, "admin", ip)
    control_plane(ip)
    network()
    containerd()
    kubelet(ip)
    kube_proxy()
    addons()
    install_chart()
    log(f"up in {time.monotonic() - started:.0f} s: export KUBECONFIG={KUBECONFIG}")


# --- down -----------------------------------------------------------------------------------

def _stop(name: str, timeout: float = 30) -> None:
    pid = pid_of(name)
    if pid is None:
        (RUN / f"{name}.pid").unlink(missing_ok=True)
        return
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_of(name) and time.monotonic() < deadline:
        time.sleep(0.5)
    if pid_of(name):
        os.killpg(pid, signal.SIGKILL)
    (RUN / f"{name}.pid").unlink(missing_ok=True)
    log(f"stopped {name} (pid {pid})")


def _mounts_under(prefix: Path) -> list[str]:
    with open("/proc/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(str(prefix))]


def down() -> None:
    if (RUN / "containerd.sock").exists() and pid_of("containerd"):
        # the pods first, through the CRI as the kubelet would (sandboxes, containers, their network)
        _stop("kubelet")
        crictl = [binary("cri-tools", "crictl"), "--runtime-endpoint", f"unix://{RUN / 'containerd.sock'}",
                  "--timeout", "60s"]
        subprocess.run([*crictl, "rmp", "--all", "--force"], capture_output=True, timeout=300)
    for name in reversed(PROCESSES):
        _stop(name)
    for shim in subprocess.run(["pgrep", "-f", f"containerd-shim-runc-v2.*{RUN / 'containerd.sock'}"],
                               capture_output=True, text=True).stdout.split():
        os.kill(int(shim), signal.SIGKILL)
    for point in sorted(_mounts_under(RUN), key=len, reverse=True):  # deepest first
        subprocess.run(["umount", "-l", point], capture_output=True)
    subprocess.run(["ip", "route", "del", SERVICE_CIDR, "dev", BRIDGE], capture_output=True)
    for link in json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout):
        if link.get("master") == BRIDGE or link["ifname"] == BRIDGE:
            subprocess.run(["ip", "link", "del", link["ifname"]], capture_output=True)
    while shutil.which("iptables") and not subprocess.run(["iptables", "-D", "FORWARD", *FORWARD_RULE],
                                                           capture_output=True).returncode:
        pass
    subprocess.run(["nft", "delete", "table", "ip", "kube-proxy"], capture_output=True)
    subprocess.run(["nft", "delete", "table", "ip6", "kube-proxy"], capture_output=True)
    saved = RUN / "sysctl.json"
    if saved.exists():
        for key, value in json.loads(saved.read_text()).items():
            Path(f"/proc/sys/{key}").write_text(value)
        saved.unlink()
    for procs in Path("/sys/fs/cgroup").glob("*/kubepods/**/cgroup.procs"):  # anything the CRI left running
        for pid in procs.read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(1)
    for tree in Path("/sys/fs/cgroup").glob("*/kubepods"):  # the kubelet's cgroups (v1), emptied above
        for group in sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            group.rmdir()  # an OSError here means a process is still in it: down then fails, saying where
        tree.rmdir()
    left = _mounts_under(RUN)
    if left:
        raise ClusterError(f"still mounted after down: {', '.join(left[:5])}")
    log("down: no process, mount, bridge or route of the cluster left")


def status() -> int:
    for name in PROCESSES:
        print(f"{name:<24} {'running, pid ' + str(pid_of(name)) if pid_of(name) else 'not running'}")
    return 0 if all(pid_of(n) for n in PROCESSES) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    try:
        if args.verb == "up":
            up()
        elif args.verb == "down":
            down()
        else:
            return status()
    except ClusterError as err:
        print(f"cluster {args.verb}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
