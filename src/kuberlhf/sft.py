"""Supervised fine-tuning of a causal LM on instruction data (full, LoRA or QLoRA; packing).

$ kuberlhf sft --config configs/sft/demo.yaml
$ kuberlhf sft --config configs/sft/demo.yaml output_dir=s3://bucket/runs/sft training.max_steps=50
$ torchrun --nproc_per_node 2 -m kuberlhf.cli sft --config configs/sft/demo.yaml
$ torchrun --nproc_per_node 8 -m kuberlhf.cli sft --config configs/sft/opt-1.3b-qlora.yaml

Rows are OpenOrca-style ``question``/``response`` (optional ``system_prompt``), chat
``messages``, or ``prompt``/``completion``; the loss is on the response only unless
``completion_only_loss=false``. With LoRA/QLoRA the adapter is merged into a standalone
model (the stage's output); the adapter itself is kept under ``adapter/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from kuberlhf.common import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    QuantizationConfig,
    StorageConfig,
    TrainingConfig,
    check_trainer_stage,
)
from kuberlhf.config import option, require

log = logging.getLogger("kuberlhf")


@dataclass
class SftConfig:
    output_dir: str = option("", "where the model, card, metrics.json and checkpoints go: a local path or s3:// URI")
    overwrite: bool = option(False, "replace a finished artifact in output_dir instead of refusing")
    model: ModelConfig = option(ModelConfig, "the pretrained causal LM to fine-tune")
    data: DataConfig = option(DataConfig, "instruction data")
    finetune: Literal["full", "lora", "qlora"] = option("full", "full fine-tuning, LoRA, or QLoRA (4-bit base)")
    lora: LoraConfig = option(LoraConfig, "adapter settings (finetune=lora|qlora)")
    quantization: QuantizationConfig = option(QuantizationConfig, "4-bit settings (finetune=qlora)")
    max_length: int = option(1024, "tokens per training sequence (packed or truncated)")
    packing: bool = option(False, "pack several examples into each sequence")
    packing_strategy: Literal["bfd", "wrapped"] = option(
        "bfd", "bfd: best-fit decreasing, padding-free, examples kept apart; wrapped: concatenate and cut"
    )
    completion_only_loss: bool = option(True, "compute the loss on the response tokens only")
    training: TrainingConfig = option(TrainingConfig, "optimisation, checkpointing, precision and tracking")
    storage: StorageConfig = option(StorageConfig, "S3-compatible object store")

    def __post_init__(self) -> None:
        check_trainer_stage(self)
        require(self.max_length > 0, "max_length", "must be positive")


def run(cfg: SftConfig) -> dict:
    """Train, then publish the model, card and metrics.json to ``cfg.output_dir``; returns the metrics."""
    import trl

    from kuberlhf import modeling, runner

    run_dir, (train_ds, eval_ds, stats) = runner.start(cfg, "sft", "sft")

    args = trl.SFTConfig(
        output_dir=str(run_dir.checkpoints),
        max_length=cfg.max_length,
        packing=cfg.packing,
        packing_strategy=cfg.packing_strategy,
        padding_free=cfg.packing and cfg.packing_strategy == "bfd",
        completion_only_loss=cfg.completion_only_loss,
        dataset_text_field="text",
        **cfg.training.trainer_kwargs(str(run_dir.work_dir)),
    )
    # Downloads happen once per node; loading is collective (ZeRO-3 partitions weights as they load).
    with args.main_process_first(local=True, desc="fetch model and checkpoint"):
        base_path = modeling.resolve_model_path(cfg.model.name_or_path, "causal-lm", cfg.training.seed)
        resume = runner.latest_checkpoint(run_dir)
    tokenizer = modeling.load_tokenizer(cfg.model, base_path)
    model = modeling.load_causal_lm(cfg.model, base_path, cfg.quantization if cfg.finetune == "qlora" else None)
    if cfg.packing and cfg.packing_strategy == "bfd":
        model.config.use_cache = False  # padding-free packing keeps sequences apart only without the cache
    peft = modeling.peft_config(cfg.lora, "CAUSAL_LM") if cfg.finetune in ("lora", "qlora") else None
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=[runner.checkpoint_callback(run_dir, cfg.training.save_total_limit)],
    )
    result, metrics = runner.train(trainer, resume, cfg.finetune, stats)
    tokens = session_tokens(trainer.state.log_history, runner.step_of(resume))
    metrics["tokens_per_second"] = tokens / max(result.metrics["train_runtime"], 1e-9)
    metrics["train_tokens"] = tokens
    if eval_ds is not None:
        metrics.update({k: v for k, v in trainer.evaluate().items() if k in ("eval_loss", "eval_mean_token_accuracy")})

    staging = run_dir.staging
    if peft is None:
        trainer.save_model(str(staging))
    else:
        trainer.save_model(str(staging / "adapter"))
    if trainer.is_world_process_zero():
        if peft is not None and cfg.lora.merge:
            merged = modeling.merge_adapter(cfg.model, base_path, str(staging / "adapter"))
            merged.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        card = runner.model_card("sft", cfg, metrics, cfg.model.name_or_path)
        runner.publish(run_dir, staging, metrics, card)
    return metrics




def session_tokens(log_history: list[dict], resumed_from_step: int) -> float:
    """Tokens trained on by this process: TRL logs a running ``num_tokens`` that restarts with each process."""
    counts = [h["num_tokens"] for h in log_history if "num_tokens" in h and h.get("step", 0) > resumed_from_step]
    return float(counts[-1]) if counts else 0.0
