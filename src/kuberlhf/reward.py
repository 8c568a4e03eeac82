"""Train a reward model (a one-label sequence classifier) on preference pairs.

$ kuberlhf reward --config configs/reward/demo.yaml
$ kuberlhf reward --config configs/reward/deberta-v3-base.yaml data.train=s3://bucket/hh-rlhf/train.jsonl
$ torchrun --nproc_per_node 2 -m kuberlhf.cli reward --config configs/reward/demo.yaml

Pairs are ``prompt``/``chosen``/``rejected`` or Anthropic hh-rlhf conversations
(``chosen``/``rejected`` with a shared ``\\n\\nHuman: ... \\n\\nAssistant:`` prefix). The
model scores ``prompt + completion + eos``; the metrics are held-out pairwise accuracy
(``eval_accuracy``: share of pairs where chosen outscores rejected) and mean margin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from kuberlhf.common import DataConfig, LoraConfig, ModelConfig, StorageConfig, TrainingConfig, check_trainer_stage
from kuberlhf.config import option, require

log = logging.getLogger("kuberlhf")


@dataclass
class RewardConfig:
    output_dir: str = option("", "where the model, card, metrics.json and checkpoints go: a local path or s3:// URI")
    overwrite: bool = option(False, "replace a finished artifact in output_dir instead of refusing")
    model: ModelConfig = option(
        ModelConfig(name_or_path="demo://tiny-deberta"),
        "the model to turn into a reward model (any AutoModelForSequenceClassification; DeBERTa-v3 is the reference)",
    )
    data: DataConfig = option(DataConfig, "preference pairs")
    finetune: Literal["full", "lora"] = option("full", "full fine-tuning or LoRA (the score head is trained fully)")
    lora: LoraConfig = option(LoraConfig, "adapter settings (finetune=lora)")
    max_length: int = option(512, "tokens per scored sequence (prompt + completion), longer pairs are truncated")
    center_rewards_coefficient: float | None = option(
        None, "weight of a penalty that keeps rewards centred on 0 (TRL center_rewards_coefficient)"
    )
    training: TrainingConfig = option(TrainingConfig, "optimisation, checkpointing, precision and tracking")
    storage: StorageConfig = option(StorageConfig, "S3-compatible object store")

    def __post_init__(self) -> None:
        check_trainer_stage(self)
        require(self.max_length > 0, "max_length", "must be positive")


def run(cfg: RewardConfig) -> dict:
    """Train, evaluate on held-out pairs, and publish to ``cfg.output_dir``; returns the metrics."""
    import trl

    from kuberlhf import modeling, runner

    run_dir, (train_ds, eval_ds, stats) = runner.start(cfg, "reward", "preference")

    args = trl.RewardConfig(
        output_dir=str(run_dir.checkpoints),
        max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        **cfg.training.trainer_kwargs(str(run_dir.work_dir)),
    )
    # Downloads happen once per node; loading is collective (ZeRO-3 partitions weights as they load).
    with args.main_process_first(local=True, desc="fetch model and checkpoint"):
        base_path = modeling.resolve_model_path(cfg.model.name_or_path, "sequence-classification", cfg.training.seed)
        resume = runner.latest_checkpoint(run_dir)
    tokenizer = modeling.load_tokenizer(cfg.model, base_path)
    model = modeling.load_sequence_classifier(cfg.model, base_path, tokenizer.pad_token_id)
    peft = None
    if cfg.finetune == "lora":
        peft = modeling.peft_config(cfg.lora, "SEQ_CLS")
    trainer = trl.RewardTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=[runner.checkpoint_callback(run_dir, cfg.training.save_total_limit)],
    )
    _, metrics = runner.train(trainer, resume, cfg.finetune, stats)
    if eval_ds is not None:
        metrics.update(evaluate_pairs(trainer, eval_ds, tokenizer, cfg))

    staging = run_dir.staging
    if peft is not None and cfg.lora.merge:
        trainer.model = trainer.model.merge_and_unload()
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(staging))
        card = runner.model_card("reward", cfg, metrics, cfg.model.name_or_path)
        runner.publish(run_dir, staging, metrics, card)
    return metrics


def evaluate_pairs(trainer: Any, eval_ds: Any, tokenizer: Any, cfg: RewardConfig) -> dict:
    """Held-out pairwise accuracy and mean margin over every pair (not a mean of batch means)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # parameters are sharded: use the trainer's distributed evaluation
        out = trainer.evaluate()
        return {"eval_accuracy": out["eval_accuracy"], "eval_margin": out["eval_margin"], "eval_pairs": len(eval_ds)}
    model = trainer.accelerator.unwrap_model(trainer.model)
    prompts = list(eval_ds["prompt"]) if "prompt" in eval_ds.column_names else [""] * len(eval_ds)
    chosen_texts = [p + c for p, c in zip(prompts, eval_ds["chosen"], strict=True)]
    rejected_texts = [p + r for p, r in zip(prompts, eval_ds["rejected"], strict=True)]
    chosen = score_texts(model, tokenizer, chosen_texts, cfg.max_length)
    rejected = score_texts(model, tokenizer, rejected_texts, cfg.max_length)
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    return {
        "eval_accuracy": sum(m > 0 for m in margins) / len(margins),
        "eval_margin": sum(margins) / len(margins),
        "eval_pairs": len(margins),
    }


def score_texts(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64) -> list[float]:
    """Reward-model scores of full texts, formatted as in training (an EOS appended when missing)."""
    import torch

    eos = tokenizer.eos_token or ""
    texts = [t if t.endswith(eos) else t + eos for t in texts]
    was_training = model.training
    model.eval()
    scores: list[float] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            ).to(device)
            scores += model(**enc).logits[:, 0].float().tolist()
    model.train(was_training)
    return scores
