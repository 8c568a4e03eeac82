"""Direct preference optimisation of the SFT policy on preference pairs (no reward model).

$ kuberlhf dpo --config configs/dpo/demo.yaml
$ torchrun --nproc_per_node 2 -m kuberlhf.cli dpo --config configs/dpo/demo.yaml output_dir=outputs/demo/dpo-ddp

The reference is an explicit model (``ref_model``), a frozen copy of the policy
(``ref_model`` unset), or, with LoRA, the policy with its adapter disabled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from kuberlhf.common import DataConfig, LoraConfig, ModelConfig, StorageConfig, TrainingConfig, check_trainer_stage
from kuberlhf.config import option, require

log = logging.getLogger("kuberlhf")
LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down")


@dataclass
class DpoConfig:
    output_dir: str = option("", "where the policy, card, metrics.json and checkpoints go: local path or s3:// URI")
    overwrite: bool = option(False, "replace a finished artifact in output_dir instead of refusing")
    model: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/sft"), "the SFT policy")
    ref_model: str | None = option(None, "reference model path; None = a frozen copy of the policy (LoRA: no adapter)")
    data: DataConfig = option(DataConfig, "preference pairs (prompt/chosen/rejected or hh-rlhf)")
    finetune: Literal["full", "lora"] = option("full", "update all weights, or a LoRA adapter")
    lora: LoraConfig = option(LoraConfig, "adapter settings (finetune=lora)")
    beta: float = option(0.1, "strength of the implicit KL constraint")
    loss_type: str = option("sigmoid", f"TRL DPO loss: one of {', '.join(LOSS_TYPES)}")
    max_length: int = option(512, "tokens of prompt + completion")
    gold_prompts: str | None = option(
        "demo://prompts?n=200&split=test", "held-out prompts for gold-judge scores and the final KL; None = skip"
    )
    gold_eval: bool = option(True, "score the policy before and after with the built-in task's gold judge")
    max_new_tokens: int = option(24, "response length of the held-out evaluation")
    training: TrainingConfig = option(TrainingConfig, "optimisation, checkpointing, precision and tracking")
    storage: StorageConfig = option(StorageConfig, "S3-compatible object store")

    def __post_init__(self) -> None:
        check_trainer_stage(self)
        require(self.beta > 0, "beta", f"must be positive, got {self.beta}")
        require(self.loss_type in LOSS_TYPES, "loss_type", f"must be one of {', '.join(LOSS_TYPES)}")
        require(self.ref_model is None or self.finetune == "full", "ref_model", "with finetune=lora leave it unset")


def run(cfg: DpoConfig) -> dict:
    """Train with DPO, evaluate against the reference, and publish to ``cfg.output_dir``."""
    import trl

    from kuberlhf import modeling, runner

    run_dir, (train_ds, eval_ds, stats) = runner.start(cfg, "dpo", "preference")
    args = trl.DPOConfig(
        output_dir=str(run_dir.checkpoints),
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        max_length=cfg.max_length,
        **cfg.training.trainer_kwargs(str(run_dir.work_dir)),
    )
    with args.main_process_first(local=True, desc="fetch models and checkpoint"):
        path = modeling.resolve_model_path(cfg.model.name_or_path, "causal-lm", cfg.training.seed)
        ref_path = modeling.resolve_model_path(cfg.ref_model, "causal-lm", cfg.training.seed) if cfg.ref_model else path
        resume = runner.latest_checkpoint(run_dir)
    tokenizer = modeling.load_tokenizer(cfg.model, path)
    model = modeling.load_causal_lm(cfg.model, path)
    reference = None if cfg.finetune == "lora" else modeling.load_causal_lm(cfg.model, ref_path)
    peft = modeling.peft_config(cfg.lora, "CAUSAL_LM") if cfg.finetune == "lora" else None
    trainer = trl.DPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft,
        callbacks=[runner.checkpoint_callback(run_dir, cfg.training.save_total_limit)],
    )
    _, metrics = runner.train(trainer, resume, cfg.finetune, stats)
    if eval_ds is not None:
        out = trainer.evaluate()
        metrics.update({k.replace("/", "_"): v for k, v in out.items() if k.startswith("eval_") and "runtime" not in k})

    staging = run_dir.staging
    trainer.save_model(str(staging / "adapter") if peft else str(staging))
    if trainer.is_world_process_zero():
        policy = trainer.accelerator.unwrap_model(trainer.model)
        if cfg.gold_prompts:
            metrics.update(_held_out(cfg, policy, trainer.ref_model, tokenizer))
        if peft is not None and cfg.lora.merge:
            policy.merge_and_unload().save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        runner.publish(run_dir, staging, metrics, runner.model_card("dpo", cfg, metrics, cfg.model.name_or_path))
    return metrics


def _held_out(cfg: DpoConfig, policy: Any, reference: Any | None, tokenizer: Any) -> dict:
    from kuberlhf.data import load_examples
    from kuberlhf.evaluate import compare_to_reference

    prompts, _ = load_examples(cfg.gold_prompts, "prompt", template_kwargs=cfg.data.template_kwargs)
    if reference is not None:
        reference = reference.to(next(policy.parameters()).device)
    return compare_to_reference(
        policy,
        reference,
        tokenizer,
        list(prompts["prompt"]),
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.training.seed,
        gold=cfg.gold_eval,
    )
