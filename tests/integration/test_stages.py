"""SFT and reward stages end to end on the tiny demo models: outputs, formats, LoRA/QLoRA, tracking."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO, base_weights, load_state, reward_args, run_cli, sft_args


def assert_artifact(out, stage_keys):
    """A finished artifact: model, tokenizer, card, metrics.json and a manifest that verifies."""
    from kuberlhf.artifacts import storage

    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "metrics.json", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = storage.verify_local(out)
    listed = {f["path"] for f in manifest["files"]}
    assert "metrics.json" in listed and not any(p.startswith("checkpoints/") for p in listed)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in stage_keys:
        assert isinstance(metrics[key], float) and metrics[key] == metrics[key], key  # a finite float
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "## Config" in card
    return metrics


def test_sft_full_trains_and_publishes(tmp_path):
    out = tmp_path / "sft"
    assert run_cli(sft_args(out, "training.max_steps=6")) == 0
    metrics = assert_artifact(out, ["train_loss", "tokens_per_second", "eval_loss"])
    assert metrics["global_step"] == 6 and metrics["tokens_per_second"] > 0 and metrics["train_loss"] > 0
    assert metrics["data"]["rows_read"] == 64
    trained = load_state(out)
    base = base_weights("demo://tiny-llama", "causal-lm")
    assert any(not torch.equal(trained[k], base[k]) for k in base), "no parameter changed"
    # The output loads as a plain transformers model and generates.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    gen = model.generate(**tok("Question: hi\n\nAnswer:", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert gen.shape[1] > 3


def test_finished_artifact_is_not_overwritten(tmp_path, capsys):
    """The same command again (a pod restarted after its publish) has nothing to do and exits 0; another
    config is refused, naming what changed, unless overwrite=true."""
    out = tmp_path / "sft"
    assert run_cli(sft_args(out, "training.max_steps=1", "training.logging_steps=1")) == 0
    before = (out / "manifest.json").read_text()
    capsys.readouterr()
    assert run_cli(sft_args(out, "training.max_steps=1", "training.logging_steps=5")) == 0  # logging: no change
    assert "train_loss=" in capsys.readouterr().out  # the finished artifact's metrics
    code, err = run_cli(sft_args(out, "training.max_steps=2"), capture=True)
    assert code == 2 and "already holds a finished sft artifact made with other settings" in err, err
    assert "training.max_steps changed" in err and "overwrite=true" in err
    assert (out / "manifest.json").read_text() == before
    assert run_cli(sft_args(out, "training.max_steps=2", "overwrite=true")) == 0
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 2


@pytest.mark.parametrize("finetune", ["lora", "qlora"])
def test_sft_adapters_are_merged_into_a_standalone_model(tmp_path, finetune):
    out = tmp_path / finetune
    extra = ["lora.r=4", "training.learning_rate=0.01"]
    assert run_cli(sft_args(out, f"finetune={finetune}", "training.max_steps=3", *extra)) == 0
    assert_artifact(out, ["train_loss", "tokens_per_second"])
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "adapter_config.json").exists()  # the root is a merged, standalone model
    trained = load_state(out)
    base = base_weights("demo://tiny-llama", "causal-lm")
    assert set(trained) == set(base), "merged model has the base model's parameter names (no lora_ tensors)"
    changed = [k for k in base if not torch.equal(trained[k], base[k])]
    assert changed and all("proj" in k for k in changed), changed  # only adapted linear layers moved


def test_sft_packing_and_chat_messages(tmp_path):
    data = tmp_path / "chat.jsonl"
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be cheerful."},
                {"role": "user", "content": f"Say something nice about coffee {i}."},
                {"role": "assistant", "content": "fresh beans, warm mugs, bright crema."},
            ]
        }
        for i in range(40)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for strategy in ("bfd", "wrapped"):
        out = tmp_path / strategy
        args = sft_args(out, f"data.train={data}", "data.eval=null", "packing=true", f"packing_strategy={strategy}")
        assert run_cli([*args, "max_length=128", "training.max_steps=3"]) == 0
        assert assert_artifact(out, ["train_loss"])["data"]["rows_read"] == 40


def test_sft_streams_a_large_source(tmp_path):
    data = tmp_path / "big.jsonl"
    data.write_text("".join(json.dumps({"question": f"Say hi {i}.", "response": "hi."}) + "\n" for i in range(5000)))
    out = tmp_path / "stream"
    args = sft_args(out, f"data.train={data}", "data.streaming=true", "data.eval=null", "training.max_steps=3")
    assert run_cli(args) == 0
    metrics = assert_artifact(out, ["train_loss"])
    # Streaming read only what 3 steps of 8 rows needed (plus read-ahead), not the 5000 rows.
    assert metrics["global_step"] == 3 and metrics["data"]["rows_read"] < 5000


def test_reward_trains_and_reports_pairwise_metrics(tmp_path):
    out = tmp_path / "reward"
    assert run_cli(reward_args(out, "training.max_steps=20")) == 0
    metrics = assert_artifact(out, ["train_loss", "eval_accuracy", "eval_margin"])
    assert metrics["eval_pairs"] == 64 and 0.0 <= metrics["eval_accuracy"] <= 1.0
    # 20 steps on the demo task already separate most pairs (an untrained model is near 0.5).
    assert metrics["eval_accuracy"] > 0.7 and metrics["eval_margin"] > 0
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_labels == 1


def test_reward_reads_hh_rlhf_conversations(tmp_path):
    data = tmp_path / "hh.jsonl"
    human = "\n\nHuman: Say something nice about coffee.\n\nAssistant:"
    rows = [
        {
            "chosen": f"{human} fresh beans, warm mugs, bright crema.",
            "rejected": f"{human} dull maps, cold rain, stale goals.",
        }
    ] * 24
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "reward"
    assert run_cli(reward_args(out, f"data.train={data}", f"data.eval={data}", "training.max_steps=8")) == 0
    metrics = assert_artifact(out, ["eval_accuracy", "eval_margin"])
    assert metrics["eval_pairs"] == 24 and metrics["eval_accuracy"] == 1.0


def test_reward_lora_is_merged(tmp_path):
    out = tmp_path / "reward-lora"
    assert run_cli(reward_args(out, "finetune=lora", "lora.r=4", "training.max_steps=3")) == 0
    assert_artifact(out, ["eval_accuracy"])
    assert not (out / "adapter_config.json").exists()
    assert not any("lora_" in k for k in load_state(out))


def test_trackers_write_offline_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    (tmp_path / "wandb-dir").mkdir()
    out = tmp_path / "sft"
    assert run_cli(sft_args(out, "training.max_steps=2", "training.report_to=[tensorboard,wandb]")) == 0
    assert list(tmp_path.rglob("events.out.tfevents.*")), "no tensorboard event file"
    assert list((tmp_path / "wandb-dir").rglob("offline-run-*")), "no offline wandb run"


def test_shipped_demo_configs_chain():
    """Demo outputs land where the next stages' demo configs read them."""
    import yaml

    sft = yaml.safe_load((REPO / "configs/sft/demo.yaml").read_text())
    reward = yaml.safe_load((REPO / "configs/reward/demo.yaml").read_text())
    assert sft["output_dir"] == "outputs/demo/sft" and reward["output_dir"] == "outputs/demo/reward"


def test_a_run_killed_in_its_publish_reruns_to_the_same_model_without_an_extra_step(tmp_path):
    """Killed after its last checkpoint, the rerun resumes there and trains nothing more: transformers alone
    would train one step past training.max_steps (4 steps, 6 batches an epoch)."""
    import subprocess

    from helpers import cli_command, subprocess_env

    from kuberlhf.artifacts import storage

    out = tmp_path / "sft"
    argv = sft_args(out, "training.save_steps=1", "training.save_total_limit=2")
    killed = subprocess.run(cli_command(*argv), env=subprocess_env(KUBERLHF_FAILPOINTS="publish:2"),
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9 and not (out / "manifest.json").exists(), killed.stderr[-2000:]
    assert run_cli(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 4 and metrics["global_step"] == 4, metrics
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]
    storage.verify_local(out)
    assert torch.equal(load_state(out)["model.embed_tokens.weight"],
                       load_state(out / "checkpoints/checkpoint-4")["model.embed_tokens.weight"])
