"""RLOO and GRPO (TRL) of the SFT policy, with the trained reward model (or a judge model) as the reward.

$ kuberlhf rloo --config configs/rloo/demo.yaml
$ kuberlhf grpo --config configs/grpo/demo.yaml
$ torchrun --nproc_per_node 2 -m kuberlhf.cli rloo --config configs/rloo/demo.yaml output_dir=outputs/demo/rloo-ddp

Cheaper online alternatives to PPO without a value model: several samples per prompt,
each scored by the reward model, advantages taken relative to the other samples of the
same prompt. The reward model is called through :func:`kuberlhf.models.scoring.score_texts`, so
its own tokenizer and the text formatting of its training are used (as in PPO).

Direct RLAIF (``judge.name_or_path``, Lee et al. 2023): no reward model; a judge model compares the
samples of each prompt in pairs under the constitution (both orders averaged) and each sample's
reward is its mean probability of being the better one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from kuberlhf.config import option, require
from kuberlhf.config.sections import (
    DataConfig,
    JudgeConfig,
    LoraConfig,
    ModelConfig,
    StageConfig,
    TrainingConfig,
    check_trainer_stage,
)
from kuberlhf.stages.trainer import StageRun, run_trainer_stage


@dataclass
class OnlineRLConfig(StageConfig):
    TRL_ARGS: ClassVar[str] = "RLOOConfig"  # the TRL config it builds; training.<key> may set its fields
    TRL_OWNED: ClassVar[tuple[str, ...]] = ("num_generations", "max_completion_length", "temperature", "top_k", "top_p",
                                            "beta")

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
    judge: JudgeConfig = option(JudgeConfig, "direct RLAIF: a judge model as the reward (Lee et al. 2023)")
    gold_eval: bool = option(True, "score SFT and final policies with the gold judge (the demo task's)")
    training: TrainingConfig = option(TrainingConfig, "optimisation, checkpointing, precision and tracking")

    def __post_init__(self) -> None:
        check_trainer_stage(self)
        require(self.num_generations >= 2, "num_generations", "must be at least 2")
        require(
            self.training.per_device_train_batch_size % self.num_generations == 0,
            "training.per_device_train_batch_size",
            f"must be a multiple of num_generations ({self.num_generations})",
        )


@dataclass
class RlooConfig(OnlineRLConfig):
    """Config of `kuberlhf rloo` (the fields of OnlineRLConfig)."""


@dataclass
class GrpoConfig(OnlineRLConfig):
    """Config of `kuberlhf grpo` (the fields of OnlineRLConfig)."""

    TRL_ARGS: ClassVar[str] = "GRPOConfig"


def judge_reward_function(cfg: OnlineRLConfig, path: str, device: Any):
    """A TRL reward function from the judge: each completion's mean P(better) against the other completions
    of its prompt (:func:`kuberlhf.eval.constitution.round_robin`)."""
    from kuberlhf.eval.constitution import load_judge, round_robin

    ask, constitution = load_judge(cfg.judge, path, device, pointwise=False)

    def judge(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return round_robin(ask, constitution, prompts, completions, cfg.training.seed)

    return judge


def reward_function(model: Any, tokenizer: Any, max_length: int):
    """A TRL reward function scoring ``prompt + completion`` with our reward model."""
    from kuberlhf.models.scoring import score_texts

    def reward_model(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        return score_texts(model, tokenizer, texts, max_length)

    return reward_model


class OnlineHooks:
    """The RLOO/GRPO parts of the Trainer-stage template (:mod:`kuberlhf.stages.trainer`)."""

    def __init__(self, algorithm: Literal["rloo", "grpo"]):
        self.algorithm = algorithm

    def args(self, cfg: OnlineRLConfig, work: dict) -> Any:
        import trl

        config_cls = trl.RLOOConfig if self.algorithm == "rloo" else trl.GRPOConfig
        return config_cls(num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
                          temperature=cfg.temperature, top_k=0, top_p=1.0, beta=cfg.beta, **work)

    def models(self, cfg: OnlineRLConfig) -> dict:
        rewarder = (("judge", (cfg.judge.name_or_path, "causal-lm", 0)) if cfg.judge.name_or_path else
                    ("reward_model", (cfg.reward_model.name_or_path, "sequence-classification", 0)))
        return {"policy": (cfg.policy.name_or_path, "causal-lm", cfg.training.seed), rewarder[0]: rewarder[1]}

    def trainer(self, cfg: OnlineRLConfig, args: Any, run: StageRun, callbacks: list) -> Any:
        import trl

        from kuberlhf.models import loading

        trainer_cls = trl.RLOOTrainer if self.algorithm == "rloo" else trl.GRPOTrainer
        run.tokenizer = loading.load_tokenizer(cfg.policy, run.paths["policy"], padding_side="left")
        if cfg.judge.name_or_path:
            rewards = judge_reward_function(cfg, run.paths["judge"], args.device)
        else:
            reward_path = run.paths["reward_model"]
            reward_tokenizer = loading.load_tokenizer(cfg.reward_model, reward_path)
            with loading.whole_under_zero3():  # called outside the engine: whole on every process, on its device
                reward = loading.load_sequence_classifier(cfg.reward_model, reward_path,
                                                          reward_tokenizer.pad_token_id)
            reward.to(args.device).eval().requires_grad_(False)
            rewards = reward_function(reward, reward_tokenizer, cfg.reward_max_length)
        return trainer_cls(
            model=loading.load_causal_lm(cfg.policy, run.paths["policy"]),
            reward_funcs=rewards,
            args=args,
            train_dataset=run.train,
            processing_class=run.tokenizer,
            peft_config=loading.peft_config(cfg.lora, "CAUSAL_LM") if cfg.finetune == "lora" else None,
            callbacks=callbacks,
        )

    def metrics(self, cfg: OnlineRLConfig, trainer: Any, run: StageRun, result: Any) -> dict:
        history = [h for h in trainer.state.log_history if "reward" in h]
        return {"reward": history[-1]["reward"] if history else float("nan")}

    def held_out(self, cfg: OnlineRLConfig, trainer: Any, run: StageRun, policy: Any) -> dict:
        if run.eval is None:
            return {}
        from kuberlhf.eval.heldout import compare_to_reference
        from kuberlhf.models import loading
        from kuberlhf.stages.trainer import whole_policy

        policy = whole_policy(cfg, run, policy)
        reference = None
        if cfg.finetune != "lora":
            with loading.whole_under_zero3():  # main process only: never partitioned
                reference = loading.load_causal_lm(cfg.policy, run.paths["policy"]).to(policy.device)
        return compare_to_reference(policy, reference, run.tokenizer, list(run.eval["prompt"]),
                                    max_new_tokens=cfg.max_completion_length, seed=cfg.training.seed,
                                    judge="gold" if cfg.gold_eval else None)


def run(cfg: OnlineRLConfig) -> dict:
    """Train the policy with RLOO or GRPO (by the config's class) and publish it to ``cfg.output_dir``."""
    algorithm = "grpo" if isinstance(cfg, GrpoConfig) else "rloo"
    return run_trainer_stage(cfg, algorithm, "prompt", OnlineHooks(algorithm))
