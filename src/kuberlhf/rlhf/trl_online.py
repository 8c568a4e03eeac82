"""RLOO and GRPO (TRL) with the trained reward model as the reward function.

Cheaper online alternatives to PPO without a value model: several samples per prompt,
each scored by the reward model, advantages taken relative to the other samples of the
same prompt. The reward model is called through :func:`kuberlhf.reward.score_texts`, so
its own tokenizer and the text formatting of its training are used (as in PPO).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from kuberlhf.common import DataConfig, LoraConfig, ModelConfig, StorageConfig, TrainingConfig, check_trainer_stage
from kuberlhf.config import option, require

log = logging.getLogger("kuberlhf")


@dataclass
class OnlineRLConfig:
    output_dir: str = option("", "where the policy, card, metrics.json and checkpoints go: local path or s3:// URI")
    overwrite: bool = option(False, "replace a finished artifact in output_dir instead of refusing")
    policy: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/sft"), "the SFT policy (also the reference)")
    reward_model: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/reward"), "the trained reward model")
    data: DataConfig = option(DataConfig, "prompts (eval: held-out prompts for gold scores and the final KL)")
    finetune: Literal["full", "lora"] = option("full", "update all policy weights, or a LoRA adapter")
    lora: LoraConfig = option(LoraConfig, "adapter settings (finetune=lora)")
    num_generations: int = option(4, "samples per prompt (the group of RLOO's leave-one-out / GRPO's baseline)")
    max_completion_length: int = option(24, "longest response, in policy tokens")
    temperature: float = option(1.0, "sampling temperature")
    beta: float = option(0.05, "KL coefficient to the reference")
    reward_max_length: int = option(512, "reward-model tokens per scored text")
    gold_eval: bool = option(True, "score SFT and final policies with the built-in task's gold judge (demo task)")
    training: TrainingConfig = option(TrainingConfig, "optimisation, checkpointing, precision and tracking")
    storage: StorageConfig = option(StorageConfig, "S3-compatible object store")

    def __post_init__(self) -> None:
        check_trainer_stage(self)
        require(self.num_generations >= 2, "num_generations", "must be at least 2")
        require(
            self.training.per_device_train_batch_size % self.num_generations == 0,
            "training.per_device_train_batch_size",
            f"must be a multiple of num_generations ({self.num_generations})",
        )


def reward_function(model: Any, tokenizer: Any, max_length: int):
    """A TRL reward function scoring ``prompt + completion`` with our reward model."""
    from kuberlhf.reward import score_texts

    def reward_model(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        return score_texts(model, tokenizer, texts, max_length)

    return reward_model


def run(cfg: OnlineRLConfig, algorithm: Literal["rloo", "grpo"]) -> dict:
    import trl

    from kuberlhf import modeling, runner
    from kuberlhf.evaluate import compare_to_reference

    run_dir, (train_ds, eval_ds, stats) = runner.start(cfg, algorithm, "prompt")
    config_cls, trainer_cls = (trl.RLOOConfig, trl.RLOOTrainer) if algorithm == "rloo" else (
        trl.GRPOConfig, trl.GRPOTrainer)
    args = config_cls(
        output_dir=str(run_dir.checkpoints),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_k=0,
        top_p=1.0,
        beta=cfg.beta,
        **cfg.training.trainer_kwargs(str(run_dir.work_dir)),
    )
    with args.main_process_first(local=True, desc="fetch models and checkpoint"):
        policy_path = modeling.resolve_model_path(cfg.policy.name_or_path, "causal-lm", cfg.training.seed)
        reward_path = modeling.resolve_model_path(cfg.reward_model.name_or_path, "sequence-classification", 0)
        resume = runner.latest_checkpoint(run_dir)
    tokenizer = modeling.load_tokenizer(cfg.policy, policy_path, padding_side="left")
    reward_tokenizer = modeling.load_tokenizer(cfg.reward_model, reward_path)
    reward = modeling.load_sequence_classifier(cfg.reward_model, reward_path, reward_tokenizer.pad_token_id)
    reward.eval().requires_grad_(False)
    trainer = trainer_cls(
        model=modeling.load_causal_lm(cfg.policy, policy_path),
        reward_funcs=reward_function(reward, reward_tokenizer, cfg.reward_max_length),
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=modeling.peft_config(cfg.lora, "CAUSAL_LM") if cfg.finetune == "lora" else None,
        callbacks=[runner.checkpoint_callback(run_dir, cfg.training.save_total_limit)],
    )
    _, metrics = runner.train(trainer, resume, cfg.finetune, stats)
    history = [h for h in trainer.state.log_history if "reward" in h]
    metrics["reward"] = history[-1]["reward"] if history else float("nan")
    staging = run_dir.staging
    lora = cfg.finetune == "lora"
    trainer.save_model(str(staging / "adapter") if lora else str(staging))
    if trainer.is_world_process_zero():
        policy = trainer.accelerator.unwrap_model(trainer.model)
        if eval_ds is not None:
            reference = None if lora else modeling.load_causal_lm(cfg.policy, policy_path).to(policy.device)
            metrics.update(
                compare_to_reference(
                    policy, reference, tokenizer, list(eval_ds["prompt"]),
                    max_new_tokens=cfg.max_completion_length, seed=cfg.training.seed, gold=cfg.gold_eval,
                )
            )
        if lora and cfg.lora.merge:
            policy.merge_and_unload().save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        card = runner.model_card(algorithm, cfg, metrics, cfg.policy.name_or_path)
        runner.publish(run_dir, staging, metrics, card)
    return metrics
