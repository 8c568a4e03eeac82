"""A server the tests start from a virtualenv of its own (Label Studio, MLflow): its own process group on
127.0.0.1, its log in its data directory, up when its health check passes, stopped by its PID's group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    """Subclasses set ``name`` and ``log_name`` and call :meth:`launch` from their ``start``."""

    name = "server"
    log_name = "server.log"

    def __init__(self, root: Path, port: int = 0):
        self.root, self.port = Path(root), port or free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def launch(self, cmd: list[str], env: dict[str, str], healthy: Callable[[], bool], timeout: float,
               poll_s: float = 0.5, **popen: object) -> None:
        """Start ``cmd`` and wait until ``healthy()`` (OSError counts as not yet); raise, stopped, when it exits
        first or ``timeout`` passes, with the tail of its log."""
        log = open(self.root / self.log_name, "ab")  # noqa: SIM115 (kept open while the server runs)
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     **popen)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if healthy():
                    return
            except OSError:
                pass
            time.sleep(poll_s)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.url} within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        path = self.root / self.log_name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, grace_s: float = 30) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def start(self) -> LocalServer:
        raise NotImplementedError

    def serve(self, lines: list[str]) -> None:
        """Print ``lines`` (how to reach it) and wait until the server ends or Ctrl+C (a command line's use)."""
        print("\n".join(lines), flush=True)
        try:
            while self.proc and self.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
