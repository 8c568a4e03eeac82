"""A container engine and a base image on a machine without a registry (`make images-base`).

$ .venv/bin/python images/engine.py base      # local/debian:bookworm, made by debootstrap

* ``docker_daemon()``: uses the Docker daemon that answers; when none does, installs Debian's
  ``docker.io`` (apt) if ``dockerd`` is missing, starts ``dockerd`` and, on exit, stops that
  daemon alone (by its PID). Images and build cache stay in its data root, so a second build
  reuses them.
* ``local_base()``: ``local/debian:bookworm``, Debian bookworm (``debootstrap --variant=minbase``)
  made slim the way Debian's own slim image is (no apt caches, documentation, manual pages or
  locales) and imported with ``docker import``; the build then runs the same Dockerfiles as a
  pinned ``debian:bookworm-slim`` would. The host's trust store (with the certificate authority
  of the proxy HTTPS goes through, where there is one) is added here, at import time, as
  ``/etc/pip-ca.crt`` (with ``/etc/pip.conf`` pointing pip at it): at a path of its own, because installing
  ``ca-certificates`` in a build rewrites ``/etc/ssl/certs``. Never in a Dockerfile; images
  built on the local base are named ``local/...`` (``IMAGES_BASE=... make images`` too), are for
  this machine only, and ``make images-push`` refuses them.

Both need root (apt, debootstrap, dockerd) unless a Docker daemon already answers and the base
exists.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL_BASE = "local/debian:bookworm"
# images built on a local base are named under this registry, which make images-push refuses
LOCAL_REGISTRY = "local"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
HOST_TRUST_STORE = Path("/etc/ssl/certs/ca-certificates.crt")
STATE = ROOT / ".cache" / "images"


class EngineError(Exception):
    """A one-line reason the engine or the base cannot be had."""


def require_root(what: str) -> None:
    """dockerd, debootstrap and apt need root; say so before anything starts."""
    if os.geteuid() != 0:
        raise EngineError(f"{what} needs root (apt, debootstrap and dockerd run as root): run it as root, "
                          "or start a Docker daemon you may use and make the base elsewhere")


def apt_install(*packages: str) -> None:
    """Install Debian packages (apt-get update only when the first try fails)."""
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, capture_output=True, env=env).returncode == 0:
        return
    subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise EngineError(f"apt-get install {' '.join(packages)} failed: {_last(proc.stderr)}")


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# a dockerd started here adds nothing to the host's network: no bridge (docker0), no firewall rules (it
# would set the FORWARD policy to DROP, which drops the traffic between a test cluster's pods on their own
# bridge); its builds and containers use the host's network (images/build.py, images/smoke.py)
DOCKERD = ["dockerd", "--bridge=none", "--iptables=false"]


@contextlib.contextmanager
def docker_daemon() -> Iterator[None]:
    """A Docker daemon for the duration of the block; stops it afterwards only if it started it."""
    if shutil.which("docker") and docker_answers():
        yield
        return
    require_root("starting dockerd")
    if not shutil.which("dockerd"):
        print("installing Debian's docker.io (dockerd) ...", flush=True)
        apt_install("docker.io")
    if not shutil.which("docker"):
        raise EngineError("docker.io is installed but there is no docker client on PATH")
    STATE.mkdir(parents=True, exist_ok=True)
    log = STATE / "dockerd.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(DOCKERD + ["--pidfile", str(STATE / "dockerd.pid")],
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not docker_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise EngineError(f"dockerd did not start (exit {proc.poll()}); {log}: {' | '.join(tail)}")
            time.sleep(1)
        print(f"started dockerd (pid {proc.pid}; log {log.relative_to(ROOT)})", flush=True)
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            print(f"stopped dockerd (pid {proc.pid})", flush=True)
        unmount_leftovers()


def unmount_leftovers(prefix: str = "/run/docker/") -> list[str]:
    """Unmount what a stopped dockerd leaves mounted (its network namespaces under /run/docker/netns): then the
    host is as it was (a dockerd started here made no bridge and no firewall rules)."""
    with open("/proc/mounts") as mounts:
        points = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):  # deepest first
        subprocess.run(["umount", point], capture_output=True)
    return points


def image_exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


# what Debian's own slim images (debuerreotype) configure: apt keeps no caches or translations, dpkg
# installs no documentation, manual pages or locales; the same Dockerfiles then give the same layers
SLIM_FILES = {
    "etc/apt/apt.conf.d/docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
        '/var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'),
    "etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
    "etc/apt/apt.conf.d/docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "etc/dpkg/dpkg.cfg.d/docker": "".join(f"{line}\n" for line in (
        "path-exclude /usr/share/doc/*", "path-include /usr/share/doc/*/copyright", "path-exclude /usr/share/groff/*",
        "path-exclude /usr/share/info/*", "path-exclude /usr/share/linda/*", "path-exclude /usr/share/lintian/*",
        "path-exclude /usr/share/locale/*", "path-include /usr/share/locale/locale.alias",
        "path-exclude /usr/share/man/*")),
}


def slim(rootfs: Path) -> None:
    """Make a debootstrap tree what Debian's slim image is: the settings above, and what they exclude removed."""
    for rel, text in SLIM_FILES.items():
        (rootfs / rel).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / rel).write_text(text)
    doomed = [*(rootfs / "var/cache/apt").glob("*.bin"), *(rootfs / "var/cache/apt/archives").glob("*.deb"),
              *(rootfs / "var/lib/apt/lists").glob("*_*"), *(rootfs / "usr/share/man").glob("*"),
              *(rootfs / "usr/share/info").glob("*"), *(rootfs / "usr/share/groff").glob("*"),
              *(p for p in (rootfs / "usr/share/locale").glob("*") if p.name != "locale.alias"),
              *(p for p in (rootfs / "usr/share/doc").glob("*/*") if p.name != "copyright")]
    if doomed:
        subprocess.run(["rm", "-rf", *map(str, doomed)], check=True)


def local_base(ref: str = LOCAL_BASE) -> str:
    """``ref``, made by debootstrap and docker import when it is not there yet."""
    if image_exists(ref):
        return ref
    require_root("making the local base")
    if not shutil.which("debootstrap"):
        print("installing Debian's debootstrap ...", flush=True)
        apt_install("debootstrap")
    STATE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=STATE, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "root"
        print(f"debootstrap --variant=minbase bookworm ({DEBIAN_MIRROR}) ...", flush=True)
        proc = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
                              capture_output=True, text=True)
        if proc.returncode:
            raise EngineError(f"debootstrap failed (exit {proc.returncode}): {_last(proc.stderr or proc.stdout)}")
        slim(rootfs)
        if HOST_TRUST_STORE.exists():  # local use only: never in a Dockerfile, never pushed (see above)
            shutil.copy(HOST_TRUST_STORE, rootfs / "etc/pip-ca.crt")
            (rootfs / "etc/pip.conf").write_text("[global]\ncert = /etc/pip-ca.crt\n")
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                               stdout=subprocess.PIPE)
        imported = subprocess.run(["docker", "import", "--change", 'CMD ["/bin/bash"]', "-", ref],
                                  stdin=tar.stdout, capture_output=True, text=True)
        tar.stdout.close()
        tar.wait()
        subprocess.run(["rm", "-rf", str(rootfs)], check=True)
        if imported.returncode or tar.returncode:
            raise EngineError(f"docker import of the debootstrap tree failed: {imported.stderr.strip()[:300]}")
    print(f"made {ref}", flush=True)
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=["base"])
    parser.parse_args(argv)
    try:
        with docker_daemon():
            local_base()
    except EngineError as err:
        print(f"images base: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
