"""RLOO and GRPO (TRL) against the reward model: outputs, gold scores, KL, LoRA, ZeRO-3 under torchrun."""

from __future__ import annotations

import json
import math

import pytest
from helpers import REPO, run, run_cli, torchrun_command


def online_args(stage, out, trained, *extra):
    return [
        stage,
        "--config",
        str(REPO / f"configs/{stage}/demo.yaml"),
        f"output_dir={out}",
        f"policy.name_or_path={trained / 'sft'}",
        f"reward_model.name_or_path={trained / 'reward'}",
        "data.train=demo://prompts?n=64",
        "data.eval=demo://prompts?n=16&split=test",
        "training.per_device_train_batch_size=8",
        "training.max_steps=3",
        "training.logging_steps=1",
        "training.disable_tqdm=true",
        *extra,
    ]


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
def test_online_stage_trains_against_the_reward_model(tmp_path, trained, stage):
    out = tmp_path / stage
    assert run_cli(online_args(stage, out, trained)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("gold_score_before", "gold_score_after", "kl", "reward"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["global_step"] == 3 and metrics["eval_prompts"] == 16
    from safetensors.torch import load_file

    before, after = load_file(str(trained / "sft/model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before), "the policy did not change"


def test_group_size_must_divide_the_batch(tmp_path, trained):
    code, err = run_cli(online_args("grpo", tmp_path / "x", trained, "num_generations=3"), capture=True)
    assert code == 2 and "training.per_device_train_batch_size" in err


def test_rloo_lora(tmp_path, trained):
    out = tmp_path / "lora"
    assert run_cli(online_args("rloo", out, trained, "finetune=lora", "lora.r=4", "training.max_steps=2")) == 0
    assert (out / "adapter/adapter_config.json").is_file() and not (out / "adapter_config.json").exists()



def test_grpo_under_zero3_keeps_the_reward_model_and_the_held_out_scores_whole(tmp_path, trained):
    """Two processes, ZeRO-3: the reward model is called outside the engine (loaded whole, on every process) and
    the held-out scores run on the main process alone (a whole copy of the policy and reference, not shards)."""
    pytest.importorskip("deepspeed", reason="deepspeed is installed by `make install`")
    out = tmp_path / "zero3"
    args = online_args("grpo", out, trained, "training.max_steps=2",
                       f"training.deepspeed={REPO / 'configs/deepspeed/zero3.json'}")
    proc = run(torchrun_command(2, *args), timeout=400, TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["eval_prompts"] == 16
    assert all(math.isfinite(metrics[k]) for k in ("gold_score_before", "gold_score_after", "kl", "reward"))
    assert len(metrics["samples"]) == 5 and any(s["after"].strip() for s in metrics["samples"])


@pytest.mark.parametrize("stage", ["grpo"])  # RLOO builds its reward function the same way
def test_direct_rlaif_uses_the_judge_as_the_reward_and_needs_no_reward_model(tmp_path, trained, stage, monkeypatch):
    """judge.name_or_path: each sample's reward is its mean P(better) against its prompt's other samples, so a
    prompt's rewards average 0.5; the reward model is not loaded (a path that does not exist is never read)."""
    from kuberlhf.eval import constitution

    seen, real = [], constitution.round_robin

    def recorded(ask, con, prompts, responses, seed=0):
        rewards = real(ask, con, prompts, responses, seed)
        seen.append((prompts, rewards))
        return rewards

    monkeypatch.setattr(constitution, "round_robin", recorded)
    out = tmp_path / stage
    assert run_cli(online_args(stage, out, trained, f"judge.name_or_path={trained / 'sft'}",
                               f"reward_model.name_or_path={tmp_path / 'no-reward-model'}",
                               f"judge.constitution={REPO / 'configs/constitutions/demo.yaml'}")) == 0
    assert len(seen) >= 3
    for prompts, rewards in seen:
        assert all(0 <= r <= 1 for r in rewards) and len(set(rewards)) > 1
        for prompt in set(prompts):
            group = [r for p, r in zip(prompts, rewards, strict=True) if p == prompt]
            assert sum(group) / len(group) == pytest.approx(0.5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reward"] == pytest.approx(0.5) and math.isfinite(metrics["gold_score_after"])
