"""Launchers in real processes: torchrun (DDP, DeepSpeed ZeRO-2/3), accelerate; kill and resume."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from helpers import REPO, cli_command, reward_args, run, sft_args, subprocess_env, torchrun_command


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sft_under_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    proc = run(torchrun_command(2, *sft_args(out, "training.max_steps=4")), timeout=300)
    _ok(proc)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 4
    # 2 processes x 8 examples per step: 4 steps cover 64 rows, i.e. one epoch.
    state = json.loads((out / "checkpoints/checkpoint-4/trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(1.0)
    assert proc.stdout.count("checkpoint checkpoint-4 sealed") + proc.stderr.count("checkpoint checkpoint-4 sealed") == 1


def test_reward_under_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    _ok(run(torchrun_command(2, *reward_args(out, "training.max_steps=3")), timeout=300))
    assert json.loads((out / "metrics.json").read_text())["eval_pairs"] == 64


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_sft_under_deepspeed(tmp_path, zero):
    pytest.importorskip("deepspeed", reason="deepspeed is installed by `make install`")
    out = tmp_path / zero
    ds = REPO / f"configs/deepspeed/{zero}.json"
    proc = run(
        torchrun_command(2, *sft_args(out, "training.max_steps=3", f"training.deepspeed={ds}")),
        timeout=400,
        TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"),
    )
    _ok(proc)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) > 100_000  # gathered, not ZeRO-3 shards


def test_accelerate_launch_two_processes(tmp_path):
    out = tmp_path / "accelerate"
    cmd = [
        str(REPO / ".venv/bin/accelerate") if (REPO / ".venv/bin/accelerate").exists() else "accelerate",
        "launch",
        "--multi_gpu",  # on CPU this starts gloo processes; --cpu would start only one
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "-m",
        "kuberlhf.cli",
        *sft_args(out, "training.max_steps=4"),
    ]
    proc = run(cmd, timeout=300)
    _ok(proc)
    state = json.loads((out / "checkpoints/checkpoint-4/trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(1.0)  # two processes shared the epoch


def _kill_after_first_checkpoint(cmd: list[str], sealed, timeout: float = 240) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``sealed()`` is true (a checkpoint is complete)."""
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not sealed():
            if proc.poll() is not None:
                raise AssertionError(f"run ended before its first checkpoint: {proc.stderr.read()[-2000:]!r}")
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint within the time limit")
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.faults
def test_killed_sft_run_resumes_from_its_newest_checkpoint(tmp_path):
    out = tmp_path / "sft"
    argv = sft_args(out, "training.max_steps=300", "training.save_steps=5", "training.save_total_limit=2")
    _kill_after_first_checkpoint(cli_command(*argv), lambda: (out / "checkpoints/checkpoint-5/manifest.json").exists())
    assert not (out / "manifest.json").exists() and not (out / "metrics.json").exists()  # nothing looks finished

    proc = run(cli_command(*argv), timeout=400)
    _ok(proc)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 5 and metrics["global_step"] == 300
    assert "resuming from" in proc.stderr
    state = json.loads((out / "checkpoints/checkpoint-300/trainer_state.json").read_text())
    logged_steps = [h["step"] for h in state["log_history"] if "loss" in h]
    # The log continues from the killed run's steps instead of starting again at step 1.
    assert logged_steps[0] == 1 and logged_steps == sorted(logged_steps) and logged_steps[-1] == 300
    assert len(logged_steps) == len(set(logged_steps))
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_checkpoint_cut_off_mid_save_is_passed_over(tmp_path):
    from kuberlhf.artifacts import rundir as runner

    out = tmp_path / "sft"
    assert run(cli_command(*sft_args(out, "training.max_steps=4", "training.save_steps=2"))).returncode == 0
    run_dir = runner.RunDir(str(out), out)
    assert runner.latest_checkpoint(run_dir).endswith("checkpoint-4")
    (out / "checkpoints/checkpoint-4/manifest.json").unlink()  # as if killed before the seal
    assert runner.latest_checkpoint(run_dir).endswith("checkpoint-2")
    (out / "checkpoints/checkpoint-2/model.safetensors").write_bytes(b"truncated")
    assert runner.latest_checkpoint(run_dir) is None
