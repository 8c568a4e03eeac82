"""What PPO trains: the policy (the SFT model, or a LoRA adapter on it; resumed weights from a checkpoint)
and its value model (from the reward model, or from the policy when a judge scores instead)."""

from __future__ import annotations

from typing import Any

from kuberlhf.models import loading as modeling
from kuberlhf.rlhf import value as values


def policy(cfg: Any, path: str, resume: str | None) -> Any:
    """The policy to train: the SFT model (resumed weights from ``resume``), or a LoRA adapter on it."""
    if cfg.finetune == "full":
        return modeling.load_causal_lm(cfg.policy, f"{resume}/policy" if resume else path)
    from peft import PeftModel, get_peft_model

    base = modeling.load_causal_lm(cfg.policy, path)
    if resume:
        return PeftModel.from_pretrained(base, f"{resume}/policy", is_trainable=True)
    return get_peft_model(base, modeling.peft_config(cfg.lora, "CAUSAL_LM"))


def value_model(cfg: Any, policy_path: str, reward_path: str, tokenizer: Any, reward_model: Any = None,
                reward_tokenizer: Any = None) -> values.ValueModel:
    """The value model: as ``cfg.value_init`` says (the reward model's backbone and head, or the policy's), or
    from the policy when a judge scores instead (no ``reward_model`` to start from)."""
    dtype = modeling.torch_dtype(cfg.policy.dtype)
    if reward_model is None:
        return values.build_value_model(policy_path, dtype)
    return values.value_model_for(cfg.value_init, tokenizer, reward_tokenizer, policy_path, reward_path, dtype,
                                  getattr(reward_model, "score", None))
