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
import sys
import urllib.request
from pathlib import Path

from localserver import LocalServer

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-label-studio"
ADMIN_EMAIL = "admin@kuberlhf.test"


def find_label_studio() -> str | None:
    path = VENV / "bin" / "label-studio"
    return str(path) if path.is_file() else None


class LabelStudio(LocalServer):
    """One Label Studio process (its own process group); a context manager."""

    name, log_name = "Label Studio", "label-studio.log"

    def __init__(self, root: Path, port: int = 0):
        super().__init__(root, port)
        token_file = self.root / "token"
        if not token_file.exists():  # the token is set when the data dir is first initialised
            token_file.write_text(secrets.token_hex(20))
        self.token = token_file.read_text().strip()
        password_file = self.root / "password"  # the first user's, for a browser login
        if not password_file.exists():
            password_file.write_text(secrets.token_hex(12))
        self.email, self.password = ADMIN_EMAIL, password_file.read_text().strip()

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
        # /health on the port asked for (a busy port makes Label Studio silently take the next one)
        self.launch(cmd, env, self._healthy, timeout, poll_s=1)
        return self

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
            return json.load(resp).get("status") == "UP"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(Path.home() / ".kuberlhf-label-studio"), help="data directory (kept)")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    with LabelStudio(Path(args.dir), args.port) as server:
        server.serve([
            f"Label Studio is up on {server.url} (data in {args.dir}); in another shell:",
            f"  export LABEL_STUDIO_URL={server.url} LABEL_STUDIO_API_KEY=$(cat {args.dir}/token)",
            "  kuberlhf feedback export --candidates outputs/demo/candidates --project demo-ranking",
        ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
