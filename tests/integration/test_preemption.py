"""SIGTERM in a Trainer stage (a pod deleted, preempted or drained): stop at the next step, seal it, exit 143.

The PPO loop's own test is in test_ppo.py; this one covers the Trainer template (sft, reward, dpo,
rloo, grpo and ReST's Improve step share it), with one process and under kuberlhf.torchrun.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from helpers import cli_command, run, sft_args, subprocess_env


def _sealed(out) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*")
                  if (p / "manifest.json").exists())


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.faults)])  # torchrun: make faults
def test_sigterm_stops_sft_with_a_sealed_checkpoint_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path, nproc):
    def command(out, *extra):
        argv = sft_args(out, "training.save_steps=1000", "training.logging_steps=1", "data.train=demo://sft?n=2000",
                        *extra)
        if nproc == 1:
            return cli_command(*argv)
        return [sys.executable, "-m", "kuberlhf.torchrun", f"--nproc_per_node={nproc}", "-m", "kuberlhf.cli",
                *map(str, argv)]

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(command(stopped, "training.max_steps=400"), env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, losses = [], 0
    for line in proc.stdout:
        seen.append(line)
        losses += line.count("'loss'")
        if losses >= 2:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=180) == 143, "".join(seen)[-2000:] + rest[-3000:]
    assert "stopped by SIGTERM at step" in rest
    saved = _sealed(stopped)
    assert len(saved) == 1 and saved[0] >= 2, saved  # the SIGTERM checkpoint alone (save_steps=1000)
    n = saved[0]
    assert not (stopped / "metrics.json").exists()
    resumed = run(command(stopped, f"training.max_steps={n + 2}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = tmp_path / "straight"
    assert run(command(straight, f"training.max_steps={n + 2}")).returncode == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, stopped))
    assert b["resumed_from_step"] == n and b["global_step"] == a["global_step"] == n + 2
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4, abs=1e-6)  # the same weights at the end
