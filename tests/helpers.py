"""Shared helpers of the integration tests: stage arguments on small data, running the CLI."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ["training.disable_tqdm=true", "training.logging_steps=1", "training.per_device_train_batch_size=8"]


def sft_args(out, *extra: str) -> list[str]:
    """`kuberlhf sft` on 64 demo rows (16 held out), a few steps unless told otherwise."""
    return [
        "sft",
        "--config",
        str(REPO / "configs/sft/demo.yaml"),
        f"output_dir={out}",
        "data.train=demo://sft?n=64",
        "data.eval=demo://sft?n=16&split=test",
        "training.max_steps=4",
        *SMALL,
        *extra,
    ]


def reward_args(out, *extra: str) -> list[str]:
    return [
        "reward",
        "--config",
        str(REPO / "configs/reward/demo.yaml"),
        f"output_dir={out}",
        "data.train=demo://preference?n=256",
        "data.eval=demo://preference?n=64&split=test",
        "training.max_steps=4",
        *SMALL,
        *extra,
    ]


def run_cli(argv: list[str], capture: bool = False):
    """Run ``kuberlhf ARGV`` in this process: the exit code, and stderr when ``capture``."""
    from kuberlhf.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err) if capture else contextlib.nullcontext():
        code = main([str(a) for a in argv])
    return (code, err.getvalue()) if capture else code


def cli_command(*argv: str) -> list[str]:
    """The command line of ``kuberlhf ARGV`` in a fresh process."""
    return [sys.executable, "-m", "kuberlhf.cli", *map(str, argv)]


def torchrun_command(nproc: int, *argv: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "-m", "kuberlhf.cli", *argv]


def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def run(cmd: list[str], timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout)


def load_state(model_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def base_weights(name: str, task: str) -> dict:
    """The weights a demo model starts from (seed 0, as the demo configs use)."""
    from kuberlhf.models.loading import resolve_model_path

    return load_state(resolve_model_path(name, task, 0))


def stage_command(nproc: int, *argv: str) -> list[str]:
    """``kuberlhf ARGV`` in one process, or under ``kuberlhf.torchrun`` (a training pod's launcher)."""
    if nproc == 1:
        return cli_command(*argv)
    return [sys.executable, "-m", "kuberlhf.torchrun", f"--nproc_per_node={nproc}", "-m", "kuberlhf.cli",
            *map(str, argv)]


def sealed_steps(out) -> list[int]:
    """The steps of ``out``'s sealed checkpoints."""
    return sorted(int(p.name.split("-")[1]) for p in (Path(out) / "checkpoints").glob("checkpoint-*")
                  if (p / "manifest.json").exists())


def stop_with_sigterm(cmd: list[str], out, ready) -> int:
    """Start ``cmd``; once ``ready(text so far)`` send SIGTERM (as Kubernetes does to a pod it stops); check
    that the run exits 143 with exactly one sealed checkpoint (save_steps must not have made one) and no
    finished artifact; returns that checkpoint's step."""
    import signal

    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    for line in proc.stdout:
        seen += line
        if ready(seen):
            break
    proc.send_signal(signal.SIGTERM)
    seen += proc.stdout.read()
    assert proc.wait(timeout=180) == 143, seen[-4000:]
    assert "stopped by SIGTERM at step" in seen
    saved = sealed_steps(out)
    assert len(saved) == 1 and saved[0] >= 2, saved
    assert not (Path(out) / "metrics.json").exists()
    return saved[0]
