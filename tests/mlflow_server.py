"""A real MLflow tracking server for tests and a look at a run's curves: its own venv, SQLite, 127.0.0.1.

$ python tests/mlflow_server.py --dir ~/.kuberlhf-mlflow [--port 5000]   # Ctrl+C stops it
$ MLFLOW_TRACKING_URI=http://127.0.0.1:5000 kuberlhf sft --config configs/sft/demo.yaml training.report_to=[mlflow]

The server (the full ``mlflow``: Flask, SQLAlchemy, alembic...) lives in ``.venv-mlflow``
(``make mlflow-server-install``); the stages log to it with the client alone (``mlflow-skinny`` in .venv).
Runs go to a SQLite file and artifacts to a folder under the chosen directory; it binds 127.0.0.1 only,
without the background job runner (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false), and is stopped with its
process group (its PID's).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import urllib.request
from pathlib import Path

from localserver import LocalServer

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-mlflow"


def find_mlflow_server() -> str | None:
    path = VENV / "bin" / "mlflow"
    return str(path) if path.is_file() else None


class MlflowServer(LocalServer):
    """One ``mlflow server`` (its own process group); a context manager."""

    name, log_name = "mlflow server", "mlflow.log"

    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.url}

    def start(self, timeout: float = 120.0) -> MlflowServer:
        exe = find_mlflow_server()
        if exe is None:
            raise RuntimeError(f"MLflow is not installed in {VENV}: run `make mlflow-server-install`")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}"}
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "VIRTUAL_ENV", "PYTHONPATH"):
            env.pop(name, None)
        cmd = [exe, "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--default-artifact-root", str(self.root / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        self.launch(cmd, env, self._healthy, timeout, cwd=self.root)
        return self

    def _healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
            return resp.read().strip() == b"OK"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(Path.home() / ".kuberlhf-mlflow"), help="data directory (kept)")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stops the server too, as Ctrl+C does
    with MlflowServer(Path(args.dir), args.port) as server:
        server.serve([
            f"MLflow is up on {server.url} (runs in {args.dir}); in another shell:",
            f"  export MLFLOW_TRACKING_URI={server.url}",
            "  kuberlhf sft --config configs/sft/demo.yaml training.report_to=[mlflow]",
        ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
