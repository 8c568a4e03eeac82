"""ReST's settings: the loop (iterations, Grow sampling, the reward model) and its Improve steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from kuberlhf.config import option, require
from kuberlhf.config.sections import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    StageConfig,
    TrainingConfig,
    check_trainer_stage,
)
from kuberlhf.stages.generate import SamplingConfig
from kuberlhf.stages.sft import SftConfig

SAMPLES, HISTORY, IMPROVE_LOG = "samples.jsonl", "history.jsonl", "sft_log.jsonl"


@dataclass
class ImproveConfig:
    thresholds: list[float] = option([0.5, 0.75], "one per Improve step, rising: the reward a kept sample reaches")
    threshold_kind: Literal["quantile", "absolute"] = option(
        "quantile", "quantile: a threshold is a quantile of the Grow set's rewards; absolute: a reward value")
    start_from: Literal["current", "base"] = option(
        "current", "current: fine-tune the policy further; base: from the SFT policy at each iteration (ReST-EM)")

    def __post_init__(self) -> None:
        t = self.thresholds
        require(len(t) > 0, "improve.thresholds", "needs at least one threshold (one per Improve step)")
        require(all(a < b for a, b in zip(t, t[1:], strict=False)), "improve.thresholds",
                f"must rise from step to step, got {t}")
        if self.threshold_kind == "quantile":
            require(all(0 <= q < 1 for q in t), "improve.thresholds", f"quantiles must be in [0, 1), got {t}")


@dataclass
class RestConfig(StageConfig):
    TRL_ARGS: ClassVar[str] = "SFTConfig"  # the Improve steps' TRL config; training.<key> may set its fields
    TRL_OWNED: ClassVar[tuple[str, ...]] = SftConfig.TRL_OWNED

    policy: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/sft"),
                                 "the SFT policy: where iteration 1 starts, the KL reference, ReST-EM's base")
    reward_model: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/reward"), "scores the Grow samples")
    data: DataConfig = option(DataConfig, "prompts of the Grow steps (data.train; data.max_rows takes the first N)")
    sampling: SamplingConfig = option(SamplingConfig, "Grow: K samples per prompt and how they are sampled")
    iterations: int = option(2, "Grow steps (N)")
    improve: ImproveConfig = option(ImproveConfig, "Improve steps after each Grow: thresholds and starting point")
    finetune: Literal["full", "lora"] = option("full", "Improve updates all weights, or a LoRA adapter (merged)")
    lora: LoraConfig = option(LoraConfig, "adapter settings (finetune=lora)")
    max_length: int = option(128, "tokens per Improve training sequence (prompt + response)")
    reward_max_length: int = option(512, "tokens of prompt + response the reward model reads")
    gold_prompts: str | None = option(
        None, "held-out prompts for the KL to the SFT policy and judge scores (e.g. demo://prompts?n=200&split=test)")
    gold_eval: bool = option(True, "score samples and policies with the gold judge where it applies (the demo task)")
    max_new_tokens: int = option(16, "response length of the held-out evaluation")
    save_every: int = option(256, "Grow prompts per sealed part (a killed Grow resumes after the last one)")
    training: TrainingConfig = option(TrainingConfig, "optimisation of each Improve step (SFT loss)")
    phase: Literal["all", "grow", "improve"] = option(
        "all", "all: the whole loop; grow or improve: one step into output_dir (the pipeline's steps)")
    iteration: int = option(1, "phase=grow|improve: the iteration the step belongs to")
    step: int = option(1, "phase=improve: the Improve step (its threshold is improve.thresholds[step - 1])")
    samples: str | None = option(None, "phase=improve: the Grow artifact to filter (local path or s3://)")
    reference: str | None = option(None, "the SFT policy when policy is a later one (phase=grow|improve)")

    def __post_init__(self) -> None:
        check_trainer_stage(self)
        require(self.iterations >= 1, "iterations", "must be at least 1")
        require(self.max_length > 0, "max_length", "must be positive")
        require(self.save_every > 0, "save_every", "must be positive")
        require(not self.data.streaming, "data.streaming", "Grow reads its prompts up front; set it to false")
        require(self.iteration >= 1, "iteration", "must be at least 1")
        require(1 <= self.step <= len(self.improve.thresholds), "step",
                f"must be in 1..{len(self.improve.thresholds)} (one per improve.thresholds)")
        require(self.phase != "improve" or bool(self.samples), "samples", "phase=improve needs the Grow artifact")

    @property
    def sft_policy(self) -> str:
        return self.reference or self.policy.name_or_path
