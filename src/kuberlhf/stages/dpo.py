"""Direct preference optimisation of the SFT policy on preference pairs (no reward model).

$ kuberlhf dpo --config configs/dpo/demo.yaml
$ torchrun --nproc_per_node 2 -m kuberlhf.cli dpo --config configs/dpo/demo.yaml output_dir=outputs/demo/dpo-ddp

The reference is an explicit model (``ref_model``), a frozen copy of the policy
(``ref_model`` unset), or, with LoRA, the policy with its adapter disabled.
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

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down")


@dataclass
class DpoConfig(StageConfig):
    TRL_ARGS: ClassVar[str] = "DPOConfig"  # the TRL config it builds; training.<key> may set its fields
    TRL_OWNED: ClassVar[tuple[str, ...]] = ("beta", "loss_type", "max_length")

    model: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/sft"), "the SFT policy")
    ref_model: str | None = option(None, "reference model path; None = a frozen copy of the policy (LoRA: no adapter)")
    data: DataConfig = option(DataConfig, "preference pairs (prompt/chosen/rejected or hh-rlhf)")
    finetune: Literal["full", "lora"] = option("full", "update all weights, or a LoRA adapter")
    lora: LoraConfig = option(LoraConfig, "adapter settings (finetune=lora)")
    beta: float = option(0.1, "strength of the implicit KL constraint")
    loss_type: str = option("sigmoid", f"TRL DPO loss: one of {', '.join(LOSS_TYPES)}")
    max_length: int = option(512, "tokens of prompt + completion")
    gold_prompts: str | None = option(
        None, "held-out prompts for judge scores and the final KL (e.g. demo://prompts?n=200&split=test); None = skip"
    )
    gold_eval: bool = option(True, "score the policy before and after with the gold judge (the demo task's)")
    max_new_tokens: int = option(24, "response length of the held-out evaluation")
    training: TrainingConfig = option(TrainingConfig, "optimisation, checkpointing, precision and tracking")

    def __post_init__(self) -> None:
        check_trainer_stage(self)
        require(self.beta > 0, "beta", f"must be positive, got {self.beta}")
        require(self.loss_type in LOSS_TYPES, "loss_type", f"must be one of {', '.join(LOSS_TYPES)}")
        require(self.ref_model is None or self.finetune == "full", "ref_model", "with finetune=lora leave it unset")


class DpoHooks:
    """The DPO parts of the Trainer-stage template (:mod:`kuberlhf.stages.trainer`)."""

    def args(self, cfg: DpoConfig, work: dict) -> Any:
        import trl

        return trl.DPOConfig(beta=cfg.beta, loss_type=[cfg.loss_type], max_length=cfg.max_length, **work)

    def models(self, cfg: DpoConfig) -> dict:
        models = {"policy": (cfg.model.name_or_path, "causal-lm", cfg.training.seed)}
        if cfg.ref_model:
            models["reference"] = (cfg.ref_model, "causal-lm", cfg.training.seed)
        return models

    def trainer(self, cfg: DpoConfig, args: Any, run: StageRun, callbacks: list) -> Any:
        import trl

        from kuberlhf.models import loading

        path = run.paths["policy"]
        run.tokenizer = loading.load_tokenizer(cfg.model, path)
        model = loading.load_causal_lm(cfg.model, path)
        lora = cfg.finetune == "lora"
        reference = None if lora else loading.load_causal_lm(cfg.model, run.paths.get("reference", path))
        return trl.DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=run.train,
                              eval_dataset=run.eval, processing_class=run.tokenizer,
                              peft_config=loading.peft_config(cfg.lora, "CAUSAL_LM") if lora else None,
                              callbacks=callbacks)

    def metrics(self, cfg: DpoConfig, trainer: Any, run: StageRun, result: Any) -> dict:
        if run.eval is None:
            return {}
        out = trainer.evaluate()
        return {k.replace("/", "_"): v for k, v in out.items() if k.startswith("eval_") and "runtime" not in k}

    def held_out(self, cfg: DpoConfig, trainer: Any, run: StageRun, policy: Any) -> dict:
        if not cfg.gold_prompts:
            return {}
        from kuberlhf.data import load_examples
        from kuberlhf.eval.heldout import compare_to_reference
        from kuberlhf.models import loading
        from kuberlhf.stages.trainer import whole_policy

        prompts, _ = load_examples(cfg.gold_prompts, "prompt", template_kwargs=cfg.data.template_kwargs)
        whole = whole_policy(cfg, run, policy)
        reference = trainer.ref_model
        if reference is not None and whole is not policy:  # ZeRO-3: the reference is sharded too
            with loading.whole_under_zero3():
                reference = loading.load_causal_lm(cfg.model, run.paths.get("reference", run.paths["policy"]))
        policy = whole
        if reference is not None:
            reference = reference.to(next(policy.parameters()).device)
        return compare_to_reference(policy, reference, run.tokenizer, list(prompts["prompt"]),
                                    max_new_tokens=cfg.max_new_tokens, seed=cfg.training.seed,
                                    judge="gold" if cfg.gold_eval else None)


def run(cfg: DpoConfig) -> dict:
    """Train with DPO, evaluate against the reference, and publish to ``cfg.output_dir``."""
    return run_trainer_stage(cfg, "dpo", "preference", DpoHooks())
