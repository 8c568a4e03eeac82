"""The DPO stage on tiny models: trains, reports preference metrics, gold scores and KL."""

from __future__ import annotations

import json
import math

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


def test_dpo_under_torchrun(tmp_path, trained):
    out = tmp_path / "ddp"
    proc = run(torchrun_command(2, *dpo_args(out, trained, "training.max_steps=2")), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 2
