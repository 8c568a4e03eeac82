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

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from kuberlhf.config import option, require
from kuberlhf.config.sections import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    StageConfig,
    TrainingConfig,
    check_trainer_stage,
)
from kuberlhf.stages.trainer import StageRun, run_trainer_stage


@dataclass
class PreferenceDataConfig(DataConfig):
    group_by_prompt: bool = option(
        False, "InstructGPT batching: all pairs of one prompt (the K-choose-2 of a ranking) in the same batch, the "
        "loss averaged over them; training.per_device_train_batch_size then counts prompts, not pairs"
    )


@dataclass
class RewardConfig(StageConfig):
    TRL_ARGS: ClassVar[str] = "RewardConfig"  # the TRL config it builds; training.<key> may set its fields
    TRL_OWNED: ClassVar[tuple[str, ...]] = ("max_length", "center_rewards_coefficient")

    model: ModelConfig = option(
        ModelConfig(name_or_path="demo://tiny-deberta"),
        "the model to turn into a reward model (any AutoModelForSequenceClassification; DeBERTa-v3 is the reference)",
    )
    data: PreferenceDataConfig = option(PreferenceDataConfig, "preference pairs")
    finetune: Literal["full", "lora"] = option("full", "full fine-tuning or LoRA (the score head is trained fully)")
    lora: LoraConfig = option(LoraConfig, "adapter settings (finetune=lora)")
    max_length: int = option(512, "tokens per scored sequence (prompt + completion), longer pairs are truncated")
    center_rewards_coefficient: float | None = option(
        None, "weight of a penalty that keeps rewards centred on 0 (TRL center_rewards_coefficient)"
    )
    training: TrainingConfig = option(TrainingConfig, "optimisation, checkpointing, precision and tracking")

    def __post_init__(self) -> None:
        check_trainer_stage(self)
        require(self.max_length > 0, "max_length", "must be positive")


class RewardHooks:
    """The reward-model parts of the Trainer-stage template (:mod:`kuberlhf.stages.trainer`)."""

    def args(self, cfg: RewardConfig, work: dict) -> Any:
        import trl

        return trl.RewardConfig(max_length=cfg.max_length, center_rewards_coefficient=cfg.center_rewards_coefficient,
                                **work)

    def models(self, cfg: RewardConfig) -> dict:
        return {"policy": (cfg.model.name_or_path, "sequence-classification", cfg.training.seed)}

    def trainer(self, cfg: RewardConfig, args: Any, run: StageRun, callbacks: list) -> Any:
        import trl

        from kuberlhf.models import loading

        path = run.paths["policy"]
        run.tokenizer = loading.load_tokenizer(cfg.model, path)
        model = loading.load_sequence_classifier(cfg.model, path, run.tokenizer.pad_token_id)
        peft = loading.peft_config(cfg.lora, "SEQ_CLS") if cfg.finetune == "lora" else None
        trainer_cls = grouped_reward_trainer() if cfg.data.group_by_prompt else trl.RewardTrainer
        return trainer_cls(model=model, args=args, train_dataset=run.train, eval_dataset=run.eval,
                           processing_class=run.tokenizer, peft_config=peft, callbacks=callbacks)

    def metrics(self, cfg: RewardConfig, trainer: Any, run: StageRun, result: Any) -> dict:
        return evaluate_pairs(trainer, run.eval, run.tokenizer, cfg) if run.eval is not None else {}

    def held_out(self, cfg: RewardConfig, trainer: Any, run: StageRun, policy: Any) -> dict:
        return {}


def run(cfg: RewardConfig) -> dict:
    """Train, evaluate on held-out pairs, and publish to ``cfg.output_dir``; returns the metrics."""
    return run_trainer_stage(cfg, "reward", "preference", RewardHooks())


class PromptBatchSampler:
    """Batches of whole prompt groups: ``prompts_per_batch`` prompts, each with all its pairs; the groups are
    shuffled anew each epoch (seeded alike on every process, so accelerate can hand whole batches out)."""

    def __init__(self, prompts: list[str], prompts_per_batch: int, seed: int):
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(prompt, []).append(i)
        self.groups, self.size, self.seed, self.epoch = list(groups.values()), prompts_per_batch, seed, 0

    def __len__(self) -> int:
        return -(-len(self.groups) // self.size)

    def set_epoch(self, epoch: int) -> None:
        """The Trainer sets each epoch (through accelerate), so a resumed run walks the same order."""
        self.epoch = epoch

    def __iter__(self):
        import random

        order = list(range(len(self.groups)))
        random.Random(self.seed + self.epoch).shuffle(order)
        for i in range(0, len(order), self.size):
            yield [j for g in order[i : i + self.size] for j in self.groups[g]]


def grouped_reward_trainer() -> type:
    """TRL's RewardTrainer with a training loader of :class:`PromptBatchSampler` batches (``data.group_by_prompt``).

    TRL's loss is the mean over a batch's pairs, so a batch of whole groups averages each prompt's pairs
    together, as InstructGPT's reward model is trained."""
    import trl
    from torch.utils.data import DataLoader

    class GroupedRewardTrainer(trl.RewardTrainer):
        def get_train_dataloader(self) -> DataLoader:
            dataset = self.train_dataset
            sampler = PromptBatchSampler(list(dataset["prompt"]), self.args.per_device_train_batch_size,
                                         self.args.seed)
            dataset = self._remove_unused_columns(dataset, description="training")
            loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                                num_workers=self.args.dataloader_num_workers)
            return self.accelerator.prepare(loader)

    return GroupedRewardTrainer


def evaluate_pairs(trainer: Any, eval_ds: Any, tokenizer: Any, cfg: RewardConfig) -> dict:
    """Held-out pairwise accuracy and mean margin over every pair (not a mean of batch means)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from kuberlhf.models.scoring import score_texts

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
