"""The DPO stage on tiny models: trains, reports preference metrics, gold scores and KL."""

from __future__ import annotations

import json
import math

import pytest
from helpers import REPO, run, run_cli, torchrun_command


def dpo_args(out, trained, *extra):
    return [
        "dpo",
        "--config",
        str(REPO / "configs/dpo/demo.yaml"),
        f"output_dir={out}",
        f"model.name_or_path={trained / 'sft'}",
        "data.train=demo://preference?n=64",
        "data.eval=demo://preference?n=32&split=test",
        "gold_prompts=demo://prompts?n=16&split=test",
        "training.max_steps=3",
        "training.per_device_train_batch_size=8",
        "training.disable_tqdm=true",
        *extra,
    ]


def test_dpo_trains_against_a_copied_reference(tmp_path, trained):
    out = tmp_path / "dpo"
    assert run_cli(dpo_args(out, trained)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("gold_score_before", "gold_score_after", "kl", "eval_rewards_accuracies", "eval_rewards_margins"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["global_step"] == 3 and metrics["eval_prompts"] == 16
    assert metrics["kl"] != 0.0  # the policy moved away from its reference


def test_dpo_explicit_reference_and_lora(tmp_path, trained):
    out = tmp_path / "explicit"
    assert run_cli(dpo_args(out, trained, f"ref_model={trained / 'sft'}")) == 0
    out = tmp_path / "lora"
    assert run_cli(dpo_args(out, trained, "finetune=lora", "lora.r=4")) == 0
    assert (out / "adapter/adapter_config.json").is_file() and not (out / "adapter_config.json").exists()
    code, err = run_cli(dpo_args(tmp_path / "bad", trained, "finetune=lora", f"ref_model={trained}"), capture=True)
    assert code == 2 and "ref_model" in err


@pytest.mark.parametrize("zero", [None, "zero3"])
def test_dpo_under_torchrun(tmp_path, trained, zero):
    """Two processes (DDP, or ZeRO-3 whose sharded policy and reference are scored on held-out prompts as whole
    copies on the main process)."""
    out = tmp_path / (zero or "ddp")
    extra = [f"training.deepspeed={REPO / f'configs/deepspeed/{zero}.json'}"] if zero else []
    proc = run(torchrun_command(2, *dpo_args(out, trained, "training.max_steps=2", *extra)), timeout=400,
               TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 2
    assert math.isfinite(metrics["gold_score_after"]) and math.isfinite(metrics["gold_score_before"])
