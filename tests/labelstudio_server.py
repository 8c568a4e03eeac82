"""A real Label Studio for tests and a labeling round on a laptop: its own venv, SQLite, 127.0.0.1.

$ python tests/labelstudio_server.py --dir ~/.kuberlhf-label-studio [--port 8080]   # Ctrl+C stops it

Label Studio lives in ``.venv-label-studio`` (``make label-studio-install``): it pins Django and
pydantic versions of its own. The server is started with a fresh 40-hex API token for its first
user (legacy token auth enabled when the organisation is created, the only moment it can be) and
binds 127.0.0.1 only. ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY`` of :meth:`env` point the
``kuberlhf feedback`` commands at it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-label-studio"
ADMIN_EMAIL = "admin@kuberlhf.test"


def find_label_studio() -> str | None:
    path = VENV / "bin" / "label-studio"
    return str(path) if path.is_file() else None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LabelStudio:
    """One Label Studio process (its own process group); a context manager."""

    def __init__(self, root: Path, port: int = 0):
        self.root, self.port = Path(root), port or free_port()
        token_file = self.root / "token"
        self.root.mkdir(parents=True, exist_ok=True)
        if not token_file.exists():  # the token is set when the data dir is first initialised
            token_file.write_text(secrets.token_hex(20))
        self.token = token_file.read_text().strip()
        password_file = self.root / "password"  # the first user's, for a browser login
        if not password_file.exists():
            password_file.write_text(secrets.token_hex(12))
        self.email, self.password = ADMIN_EMAIL, password_file.read_text().strip()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return {"LABEL_STUDIO_URL": self.url, "LABEL_STUDIO_API_KEY": self.token}

    def start(self, timeout: float = 240.0) -> LabelStudio:
        exe = find_label_studio()
        if exe is None:
            raise RuntimeError(f"Label Studio is not installed in {VENV}: run `make label-studio-install`")
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(self.root / "data"), "LATEST_VERSION_CHECK": "false",
               "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}"}
        cmd = [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
               "--username", self.email, "--password", self.password, "--user-token", self.token,
               "--enable-legacy-api-token", "--log-level", "WARNING"]
        log = open(self.root / "label-studio.log", "ab")  # noqa: SIM115 (kept open while the server runs)
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                # /health on the port asked for (a busy port makes Label Studio silently take the next one)
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if json.load(resp).get("status") == "UP":
                        return self
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"Label Studio did not answer on {self.url} within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        path = self.root / "label-studio.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LabelStudio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(Path.home() / ".kuberlhf-label-studio"), help="data directory (kept)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    with LabelStudio(Path(args.dir), args.port) as server:
        print(f"Label Studio is up on {server.url} (data in {args.dir}); in another shell:")
        print(f"  export LABEL_STUDIO_URL={server.url} LABEL_STUDIO_API_KEY=$(cat {args.dir}/token)")
        print("  kuberlhf feedback export --candidates outputs/demo/candidates --project demo-ranking")
        try:
            while server.proc and server.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
