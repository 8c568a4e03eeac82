"""PPO under DeepSpeed ZeRO-2/3 through accelerate: two torchrun processes on tiny models."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from helpers import REPO, run, subprocess_env, torchrun_command
from test_ppo import ppo_args

EXTENSIONS = {"TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")}


def _ds(zero: str) -> str:
    return f"training.deepspeed={REPO / 'configs/deepspeed' / zero}.json"


def _torchrun(out, trained, *extra):
    pytest.importorskip("deepspeed", reason="deepspeed is installed by `make install`")
    proc = run(torchrun_command(2, *ppo_args(out, trained, *extra)), timeout=500, **EXTENSIONS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


# ---------------------------------------------------------------- config filling (fast)


def test_deepspeed_auto_values_are_filled_from_the_ppo_config(tmp_path):
    from kuberlhf.rlhf.learner import deepspeed_config

    cfg = deepspeed_config(str(REPO / "configs/deepspeed/zero3.json"), micro_batch=4, world=2, max_grad_norm=0.5)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["train_batch_size"] == 8
    assert cfg["gradient_accumulation_steps"] == 1 and cfg["gradient_clipping"] == 0.5
    assert cfg["bf16"]["enabled"] is False and cfg["fp16"]["enabled"] is False
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    bf16 = deepspeed_config(str(REPO / "configs/deepspeed/zero3.json"), 4, 2, 0.5, precision="bf16")
    assert bf16["bf16"]["enabled"] is True and bf16["fp16"]["enabled"] is False  # "auto" follows training.precision


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"train_micro_batch_size_per_gpu": 8}, "train_micro_batch_size_per_gpu in .* is 8; PPO needs 'auto' or 4"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps .* is 2"),
        ({"optimizer": {"type": "AdamW"}}, ".*ds.json sets 'optimizer'; PPO builds its own"),
    ],
)
def test_deepspeed_settings_that_contradict_ppo_are_refused(tmp_path, extra, message):
    from kuberlhf.errors import ConfigError
    from kuberlhf.rlhf.learner import deepspeed_config

    path = tmp_path / "ds.json"
    path.write_text(json.dumps({**json.loads((REPO / "configs/deepspeed/zero2.json").read_text()), **extra}))
    with pytest.raises(ConfigError, match=f"'training.deepspeed': {message}"):
        deepspeed_config(str(path), micro_batch=4, world=2, max_grad_norm=1.0)


def test_deepspeed_without_a_distributed_launcher_is_refused(tmp_path, trained, monkeypatch):
    from helpers import run_cli

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    code, err = run_cli([*ppo_args(tmp_path / "ppo", trained), _ds("zero2")], capture=True)
    assert code == 2 and "'training.deepspeed': needs a distributed launcher" in err


# ---------------------------------------------------------------- two processes (slow)


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_ppo_under_deepspeed(tmp_path, trained, zero):
    out = tmp_path / zero
    _torchrun(out, trained, _ds(zero), "training.max_steps=2", "training.save_steps=2")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["zero_stage"] == int(zero[-1])
    assert metrics["world_size"] == 2  # two real ranks, not two copies that each think they are alone
    checkpoint = out / "checkpoints/checkpoint-2"
    assert (checkpoint / "rng_state_0.pt").is_file() and (checkpoint / "rng_state_1.pt").is_file()
    assert (checkpoint / "zero/state").is_dir()  # DeepSpeed's own (sharded) checkpoint
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["learning_rate"] == pytest.approx(1e-4) and log[1]["learning_rate"] == pytest.approx(5e-5)
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    before, after = load_file(str(trained / "sft/model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
    assert any(not (before[k] == after[k]).all() for k in before), "the policy did not change"
    model = AutoModelForCausalLM.from_pretrained(out)  # a normal model, gathered from the ZeRO-3 shards
    assert sum(p.numel() for p in model.parameters()) == sum(v.numel() for v in before.values())


@pytest.mark.slow
def test_ppo_lora_under_zero2(tmp_path, trained):
    out = tmp_path / "lora"
    _torchrun(out, trained, _ds("zero2"), "finetune=lora", "lora.r=4", "training.max_steps=2")
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
    assert (out / "adapter/adapter_config.json").is_file()
    from safetensors.torch import load_file

    adapter = load_file(str(out / "adapter/adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items()), "lora_B is still zero"


def _kill_all_after(cmd: list[str], sealed, log, timeout: float = 400) -> None:
    """Start ``cmd`` and SIGKILL torchrun and every worker once ``sealed()`` is true.

    torchrun starts its workers in sessions of their own, so they are found as its children.
    Output goes to ``log``: DeepSpeed writes enough to fill an unread pipe and stall the run.
    """
    import psutil

    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, env=subprocess_env(**EXTENSIONS), stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    try:
        while not sealed():
            if proc.poll() is not None:
                raise AssertionError(f"run ended before its checkpoint: {Path(log).read_text()[-2000:]!r}")
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint within the time limit")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
        proc.wait()


@pytest.mark.faults
def test_killed_zero3_run_resumes_exactly(tmp_path, trained):
    """A ZeRO-3 run killed after step 2 and resumed logs the same steps 1-4 as one that was not.

    The sharded weights and AdamW states come back from DeepSpeed's checkpoint; the schedule,
    KL controller, RNG and prompt position from the run's own state.
    """
    pytest.importorskip("deepspeed", reason="deepspeed is installed by `make install`")
    common = [_ds("zero3"), "training.save_steps=2", "training.lr_scheduler_type=constant", "ppo.adaptive_kl=true",
              "ppo.kl_target=0.5", "ppo.kl_horizon=100"]
    straight = tmp_path / "straight"
    _torchrun(straight, trained, *common, "training.max_steps=4")
    resumed = tmp_path / "resumed"
    _kill_all_after(
        torchrun_command(2, *ppo_args(resumed, trained, *common, "training.max_steps=500")),
        lambda: (resumed / "checkpoints/checkpoint-2/manifest.json").exists(),
        tmp_path / "killed.log",
    )
    assert not (resumed / "metrics.json").exists()
    proc = _torchrun(resumed, trained, *common, "training.max_steps=4")
    assert "resuming from" in proc.stderr
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    a = [json.loads(x) for x in (straight / "train_log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        for key in ("reward", "kl", "kl_coef", "policy_loss", "value_loss"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (x["step"], key)


def test_a_planted_pickle_in_a_deepspeed_checkpoint_is_refused_and_runs_no_code(tmp_path, trained):
    """DeepSpeed unpickles its checkpoint files in full by default; the stages load them with
    weights_only=True and an allow-list of DeepSpeed's own classes, so a planted object never runs."""
    import torch

    from kuberlhf.artifacts import storage
    from kuberlhf.distributed import restrict_deepspeed_loading

    pytest.importorskip("deepspeed", reason="deepspeed is installed by `make install`")
    out, marker = tmp_path / "z2", tmp_path / "pwned"
    common = [_ds("zero2"), "training.save_steps=2"]
    _torchrun(out, trained, *common, "training.max_steps=2")
    (out / storage.MANIFEST_NAME).unlink()  # as if killed during its publish: the rerun resumes
    ckpt = out / "checkpoints/checkpoint-2"
    shard = ckpt / "zero/state/mp_rank_00_model_states.pt"
    restrict_deepspeed_loading()
    state = torch.load(shard, weights_only=False)
    torch.save({**state, "planted": _Planted(str(marker))}, shard)
    storage.write_manifest(ckpt)  # a consistent manifest: integrity is not authorship
    proc = run(torchrun_command(2, *ppo_args(out, trained, *common, "training.max_steps=3")), timeout=500,
               **EXTENSIONS)
    assert not marker.exists(), "loading the DeepSpeed checkpoint ran the planted code"
    assert proc.returncode != 0 and "refusing to load this DeepSpeed checkpoint file" in proc.stderr, proc.stderr[-3000:]


class _Planted:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)
