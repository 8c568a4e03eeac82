"""`kuberlhf merge`: an SFT adapter kept apart (lora.merge=false) becomes a standalone model."""

from __future__ import annotations

import json

import torch
from helpers import base_weights, load_state, run_cli, sft_args


def test_merge_turns_an_unmerged_lora_sft_into_a_standalone_model(tmp_path):
    sft = tmp_path / "sft-lora"
    extra = ["finetune=lora", "lora.merge=false", "lora.r=4", "training.learning_rate=0.01", "training.max_steps=3"]
    assert run_cli(sft_args(sft, *extra)) == 0
    assert (sft / "adapter" / "adapter_config.json").is_file() and not (sft / "config.json").exists()

    out = tmp_path / "merged"
    assert run_cli(["merge", "--model", sft, "--output", out]) == 0
    from kuberlhf.artifacts import storage

    listed = {f["path"] for f in storage.verify_local(out)["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json", "README.md"} <= listed
    assert "adapter/adapter_config.json" in listed and not any(p.startswith("checkpoints/") for p in listed)
    assert "train_log.jsonl" in listed  # the curves of the SFT run travel with the merged model
    merged = load_state(out)
    base = base_weights("demo://tiny-llama", "causal-lm")
    assert set(merged) == set(base), "merged model has the base model's parameter names (no lora_ tensors)"
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert changed and all("proj" in k for k in changed), changed  # only adapted layers moved

    # The merged model generates exactly what the base model with the adapter generates.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kuberlhf.models.loading import resolve_model_path

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Question: write a cheerful note about cats\n\nAnswer:", return_tensors="pt")
    standalone = AutoModelForCausalLM.from_pretrained(out)
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(resolve_model_path("demo://tiny-llama", "causal-lm", 0)), sft / "adapter"
    )
    with torch.no_grad():
        assert torch.allclose(standalone(**ids).logits, adapted(**ids).logits, atol=1e-5)

    # A finished output is not replaced without --overwrite.
    code, err = run_cli(["merge", "--model", sft, "--output", out], capture=True)
    assert code == 2 and "--overwrite" in err


def test_merge_passes_a_full_fine_tune_through_unchanged(tmp_path):
    sft = tmp_path / "sft"
    assert run_cli(sft_args(sft, "training.max_steps=1")) == 0
    out = tmp_path / "passed"
    assert run_cli(["merge", "--model", sft, "--output", out]) == 0
    source = json.loads((sft / "manifest.json").read_text())["files"]
    copied = json.loads((out / "manifest.json").read_text())["files"]
    assert [(f["path"], f["sha256"]) for f in copied] == [(f["path"], f["sha256"]) for f in source]
    assert not (out / "checkpoints").exists()


def test_merge_needs_a_base_model(tmp_path):
    sft = tmp_path / "sft-lora"
    assert run_cli(sft_args(sft, "finetune=lora", "lora.merge=false", "lora.r=4", "training.max_steps=1")) == 0
    (sft / "README.md").unlink()  # no card: the adapter config names the base instead
    config = json.loads((sft / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (sft / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    (sft / "manifest.json").unlink()
    code, err = run_cli(["merge", "--model", sft, "--output", tmp_path / "out"], capture=True)
    assert code == 2 and "pass --base" in err
