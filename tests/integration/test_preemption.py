"""SIGTERM in a Trainer stage (a pod deleted, preempted or drained): stop at the next step, seal it, exit 143.

The PPO loop's own test is in test_ppo.py; this one covers the Trainer template (sft, reward, dpo,
rloo, grpo and ReST's Improve step share it), with one process and under kuberlhf.torchrun.
"""

from __future__ import annotations

import json

import pytest
from helpers import run, sft_args, stage_command, stop_with_sigterm


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.faults)])  # torchrun: make faults
def test_sigterm_stops_sft_with_a_sealed_checkpoint_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path, nproc):
    def command(out, *extra):
        return stage_command(nproc, *sft_args(out, "training.save_steps=1000", "training.logging_steps=1",
                                              "data.train=demo://sft?n=2000", *extra))

    stopped = tmp_path / "stopped"
    n = stop_with_sigterm(command(stopped, "training.max_steps=400"), stopped, lambda text: text.count("'loss'") >= 2)
    resumed = run(command(stopped, f"training.max_steps={n + 2}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = tmp_path / "straight"
    assert run(command(straight, f"training.max_steps={n + 2}")).returncode == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, stopped))
    assert b["resumed_from_step"] == n and b["global_step"] == a["global_step"] == n + 2
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4, abs=1e-6)  # the same weights at the end
