"""PPO with a KL penalty to the frozen SFT reference, against a trained reward model.

$ kuberlhf ppo --config configs/ppo/demo.yaml
$ kuberlhf ppo --config configs/ppo/demo.yaml output_dir=s3://bucket/runs/ppo training.max_steps=50
$ torchrun --nproc_per_node 2 -m kuberlhf.cli ppo --config configs/ppo/demo.yaml
$ torchrun --nproc_per_node 2 -m kuberlhf.cli ppo --config configs/ppo/demo.yaml \
    training.deepspeed=configs/deepspeed/zero3.json

Each step: sample responses to a batch of prompts (pure sampling: top_k 0, top_p 1),
score them with the reward model (its own tokenizer: text is decoded and re-encoded),
subtract a per-token KL penalty to the reference, estimate advantages with GAE, then
run several epochs of clipped policy and value updates over mini-batches. Checkpoints
hold the policy, the value model, both optimizers and schedulers, the KL controller, the
RNG states and the prompt position, so a rerun resumes exactly where a run stopped.
Under DeepSpeed (``training.deepspeed``) policy and value model share one ZeRO engine and
one AdamW with two learning rates (:mod:`kuberlhf.rlhf.learner`); checkpoints are
DeepSpeed's sharded ones, the final artifact a whole Hugging Face model.
The math lives in :mod:`kuberlhf.rlhf.ppo_core`.

Memory at real sizes: ``rollout.forward_batch_size`` bounds the scoring pass,
``ppo.gradient_accumulation_steps`` the update (micro-batches, one optimizer step per
mini-batch), and ``rollout.gather_for_generation`` trades ZeRO-3's per-token weight
gathering for one gather per rollout (bench/ppo_memory.py, docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kuberlhf.config import option, require
from kuberlhf.config.sections import DataConfig, JudgeConfig, LoopConfig, LoraConfig, ModelConfig, StageConfig


@dataclass
class RolloutConfig:
    batch_size: int = option(64, "prompts per step and process")
    max_new_tokens: int = option(24, "longest response, in policy tokens")
    temperature: float = option(1.0, "sampling temperature (1.0 samples the policy itself)")
    top_k: int = option(0, "top-k filter; 0 = off (filters bias the KL estimate)")
    top_p: float = option(1.0, "nucleus filter; 1.0 = off")
    stop_at_eos: bool = option(True, "end a response at the tokenizer's EOS token")
    missing_eos_penalty: float | None = option(1.0, "subtracted from the score of a response with no EOS")
    reward_max_length: int = option(512, "reward-model tokens per scored text (longer ones lose their beginning)")
    max_prompt_length: int | None = option(512, "policy tokens kept of a prompt (its end); None = no limit")
    forward_batch_size: int | None = option(
        None, "rows per forward pass when scoring a rollout (old log-probs, reference, value, reward model); None = "
        "all at once. Bounds the scoring pass's activations (and its logits, rows x response x vocabulary)"
    )
    gather_for_generation: bool = option(
        True, "under DeepSpeed ZeRO-3, gather the policy's sharded weights once per rollout and generate with them "
        "whole (needs the whole policy in memory on every process); false: every generated token gathers them "
        "layer by layer (slower, the memory of one layer). No effect without ZeRO-3"
    )

    def __post_init__(self) -> None:
        require(self.batch_size > 0, "rollout.batch_size", "must be positive")
        require(self.max_prompt_length is None or self.max_prompt_length > 0, "rollout.max_prompt_length",
                "must be positive (or null for no limit)")
        require(self.forward_batch_size is None or self.forward_batch_size > 0, "rollout.forward_batch_size",
                "must be positive (or null for the whole batch)")
        require(self.temperature > 0, "rollout.temperature", "must be positive")


@dataclass
class PpoAlgoConfig:
    num_ppo_epochs: int = option(4, "passes over each rollout batch")
    num_mini_batches: int = option(4, "mini-batches per pass (one optimizer step each)")
    gradient_accumulation_steps: int = option(
        1, "micro-batches per mini-batch: each runs forward and backward on rollout.batch_size / num_mini_batches / "
        "this rows and the gradients add up before the mini-batch's one optimizer step (each micro-batch's loss is "
        "weighted by its share of the mini-batch's response tokens, so the update equals the un-accumulated one). "
        "Bounds the update's activations"
    )
    clip_range: float = option(0.2, "policy ratio clip (epsilon)")
    clip_range_value: float = option(0.2, "value clip around the rollout's values")
    vf_coef: float = option(0.5, "weight of the value loss")
    gamma: float = option(1.0, "discount")
    lam: float = option(0.95, "GAE lambda")
    kl_coef: float = option(0.05, "KL penalty coefficient (initial value when adaptive)")
    adaptive_kl: bool = option(False, "adapt kl_coef towards kl_target (Ziegler et al. 2019)")
    kl_target: float = option(6.0, "target KL per sequence of the adaptive controller")
    kl_horizon: int = option(10000, "horizon (samples) of the adaptive controller")
    kl_estimator: Literal["k1", "k2", "k3"] = option("k1", "per-token KL estimator (Schulman's k1/k2/k3)")
    whiten_rewards: bool = option(False, "whiten per-token rewards over each batch")
    reward_clip: float | None = option(10.0, "clip scores to [-reward_clip, reward_clip]")
    max_kl: float = option(20.0, "stop early once the mean KL per sequence exceeds this")
    ratio_threshold: float = option(
        10.0, "leave out a mini-batch (a micro-batch, under gradient accumulation) whose largest probability ratio "
        "exceeds this"
    )

    def __post_init__(self) -> None:
        require(self.num_mini_batches > 0, "ppo.num_mini_batches", "must be positive")
        require(self.gradient_accumulation_steps > 0, "ppo.gradient_accumulation_steps", "must be positive")
        require(0 < self.clip_range < 1, "ppo.clip_range", "must be in (0, 1)")
        require(self.max_kl > 0, "ppo.max_kl", "must be positive")


@dataclass
class PpoTrainingConfig(LoopConfig):
    """The loop settings every stage has, with PPO's defaults, and the value model's learning rate.

    ``max_grad_norm`` clips the policy's and the value model's gradients separately (under DeepSpeed,
    of both together); ``deepspeed`` runs ZeRO-2/3 through accelerate.
    """

    max_steps: int = option(100, "PPO steps (rollout + update)")
    learning_rate: float = option(1e-4, "policy learning rate")
    lr_scheduler_type: str = option("linear", "transformers scheduler name")
    save_steps: int = option(50, "checkpoint every N steps into output_dir/checkpoints")
    value_learning_rate: float | None = option(None, "value-model learning rate; None = learning_rate")

    def __post_init__(self) -> None:
        require(self.max_steps > 0, "training.max_steps", "must be positive")
        super().__post_init__()


@dataclass
class HeldOutConfig:
    every_steps: int = option(
        0, "score the policy on held-out prompts (data.eval) every N steps; 0 = only at the end. The judge's "
        "score (eval_score in train_log.jsonl, plotted next to the reward) shows over-optimisation as it happens"
    )
    prompts: int = option(32, "held-out prompts of each such score (the first N of data.eval)")

    def __post_init__(self) -> None:
        require(self.every_steps >= 0, "eval.every_steps", "must be 0 (off) or positive")
        require(self.prompts > 0, "eval.prompts", "must be positive")


@dataclass
class PpoConfig(StageConfig):
    policy: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/sft"), "the SFT policy (also the reference)")
    reward_model: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/reward"), "the trained reward model")
    value_init: Literal["auto", "policy", "reward"] = option(
        "auto", "value model backbone: reward (needs the policy's tokenizer), policy, or auto (reward if possible)"
    )
    finetune: Literal["full", "lora"] = option("full", "update all policy weights, or a LoRA adapter")
    lora: LoraConfig = option(
        LoraConfig, "adapter settings (finetune=lora; the adapter-disabled base is the reference)"
    )
    data: DataConfig = option(DataConfig, "prompts (eval: held-out prompts for the gold-judge score)")
    rollout: RolloutConfig = option(RolloutConfig, "sampling")
    ppo: PpoAlgoConfig = option(PpoAlgoConfig, "the PPO objective")
    training: PpoTrainingConfig = option(PpoTrainingConfig, "optimisation and checkpointing")
    gold_eval: bool = option(True, "score SFT and final policies with the gold judge (the demo task's)")
    eval: HeldOutConfig = option(HeldOutConfig, "held-out scores during training (the judge of the final ones)")
    judge: JudgeConfig = option(JudgeConfig, "direct RLAIF: a judge model's answers to the constitution's yes/no "
                                             "questions about each response (mean log-odds of yes) as the reward")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(not (self.judge.name_or_path and self.value_init == "reward"), "value_init",
                "'reward' needs a reward model; with judge.name_or_path the value model starts from the policy")
        require(not self.data.streaming, "data.streaming", "PPO reads its prompts up front; set it to false")
        require(
            self.rollout.batch_size % self.ppo.num_mini_batches == 0,
            "rollout.batch_size",
            f"must be a multiple of ppo.num_mini_batches ({self.ppo.num_mini_batches})",
        )
        mini_batch = self.rollout.batch_size // self.ppo.num_mini_batches
        require(
            mini_batch % self.ppo.gradient_accumulation_steps == 0,
            "ppo.gradient_accumulation_steps",
            f"must divide the mini-batch (rollout.batch_size / ppo.num_mini_batches = {mini_batch} rows)",
        )


def run(cfg: PpoConfig) -> dict:
    """Train the policy with PPO and publish it to ``cfg.output_dir``; returns the metrics."""
    from kuberlhf.artifacts import cards
    from kuberlhf.distributed import StopSignal
    from kuberlhf.models.publish import save_policy
    from kuberlhf.rlhf.loop import PpoLoop
    from kuberlhf.stages.runs import open_run

    run_dir = open_run(cfg, "ppo")
    loop = PpoLoop(cfg, run_dir)
    metrics = loop.train()
    with StopSignal.finishing():
        if loop.accelerator.is_main_process:
            staging = run_dir.staging
            lora = cfg.finetune == "lora"
            save_policy(loop.final, loop.tokenizer, staging, lora=lora, merge=lora and cfg.lora.merge)
            cards.write_train_log(staging, loop.history)
            cards.collect_logs(run_dir.work_dir, staging)
            cards.publish(run_dir, staging, metrics, cards.model_card("ppo", cfg, metrics, cfg.policy.name_or_path))
        loop.accelerator.wait_for_everyone()
    return metrics
