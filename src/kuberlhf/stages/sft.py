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

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from kuberlhf.config import option, require
from kuberlhf.config.sections import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    QuantizationConfig,
    StageConfig,
    TrainingConfig,
    check_trainer_stage,
)
from kuberlhf.stages.trainer import StageRun, run_trainer_stage


@dataclass
class SftConfig(StageConfig):
    TRL_ARGS: ClassVar[str] = "SFTConfig"  # the TRL config it builds; training.<key> may set its fields
    TRL_OWNED: ClassVar[tuple[str, ...]] = ("max_length", "packing", "packing_strategy", "padding_free",
                                            "completion_only_loss", "dataset_text_field")

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

    def __post_init__(self) -> None:
        check_trainer_stage(self)
        require(self.max_length > 0, "max_length", "must be positive")


class SftHooks:
    """The SFT parts of the Trainer-stage template (:mod:`kuberlhf.stages.trainer`)."""

    def args(self, cfg: SftConfig, work: dict) -> Any:
        import trl

        return trl.SFTConfig(
            max_length=cfg.max_length,
            packing=cfg.packing,
            packing_strategy=cfg.packing_strategy,
            padding_free=cfg.packing and cfg.packing_strategy == "bfd",
            completion_only_loss=cfg.completion_only_loss,
            dataset_text_field="text",
            **work,
        )

    def models(self, cfg: SftConfig) -> dict:
        return {"policy": (cfg.model.name_or_path, "causal-lm", cfg.training.seed)}

    def trainer(self, cfg: SftConfig, args: Any, run: StageRun, callbacks: list) -> Any:
        import trl

        from kuberlhf.models import loading

        path = run.paths["policy"]
        run.tokenizer = loading.load_tokenizer(cfg.model, path)
        model = loading.load_causal_lm(cfg.model, path, cfg.quantization if cfg.finetune == "qlora" else None)
        if cfg.packing and cfg.packing_strategy == "bfd":
            model.config.use_cache = False  # padding-free packing keeps sequences apart only without the cache
        peft = loading.peft_config(cfg.lora, "CAUSAL_LM") if cfg.finetune in ("lora", "qlora") else None
        return trl.SFTTrainer(model=model, args=args, train_dataset=run.train, eval_dataset=run.eval,
                              processing_class=run.tokenizer, peft_config=peft, callbacks=callbacks)

    def metrics(self, cfg: SftConfig, trainer: Any, run: StageRun, result: Any) -> dict:
        from kuberlhf.artifacts.rundir import step_of

        tokens = session_tokens(trainer.state.log_history, step_of(run.resume))
        out = {"tokens_per_second": tokens / max(result.metrics["train_runtime"], 1e-9), "train_tokens": tokens}
        if run.eval is not None:
            keep = ("eval_loss", "eval_mean_token_accuracy")
            out.update({k: v for k, v in trainer.evaluate().items() if k in keep})
        return out

    def held_out(self, cfg: SftConfig, trainer: Any, run: StageRun, policy: Any) -> dict:
        return {}


def run(cfg: SftConfig) -> dict:
    """Train, then publish the model, card and metrics.json to ``cfg.output_dir``; returns the metrics."""
    return run_trainer_stage(cfg, "sft", "sft", SftHooks(), merge_from_base=True)


def session_tokens(log_history: list[dict], resumed_from_step: int) -> float:
    """Tokens trained on by this process: TRL logs a running ``num_tokens`` that restarts with each process."""
    counts = [h["num_tokens"] for h in log_history if "num_tokens" in h and h.get("step", 0) > resumed_from_step]
    return float(counts[-1]) if counts else 0.0
