"""PPO's value model: a transformer backbone with a scalar head, one value per token of the policy's text."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from kuberlhf.models.generation import position_ids


class ValueModel(nn.Module):
    """A transformer backbone with a scalar head: one value per token of the policy's text."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=1.0 / (hidden_size + 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Values ``(B, T)``; positions skip left padding (absolute-position backbones: GPT-2, BERT)."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._takes_positions:
            kwargs["position_ids"] = position_ids(attention_mask)
        hidden = self.backbone(**kwargs).last_hidden_state
        return self.head(hidden).squeeze(-1)

    @property
    def _takes_positions(self) -> bool:
        return "position_ids" in inspect.signature(self.backbone.forward).parameters


def build_value_model(path: str, dtype: Any, reward_head: nn.Module | None = None) -> ValueModel:
    """A value model whose backbone is loaded from ``path``; the head starts from ``reward_head`` if given."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    backbone = AutoModel.from_pretrained(path, dtype=dtype)
    model = ValueModel(backbone, config.hidden_size)
    if reward_head is not None and reward_head.weight.shape == model.head.weight.shape:
        with torch.no_grad():
            model.head.weight.copy_(reward_head.weight)
    return model.to(dtype)


def value_model_for(choice: str, tokenizer: Any, reward_tokenizer: Any, policy_path: str, reward_path: str,
                    dtype: Any, reward_head: nn.Module | None) -> ValueModel:
    """PPO's value model by ``value_init``: on the reward model's backbone (needs the policy's tokenizer; its
    head starts from the reward head), on the policy's, or ``auto`` (the reward model's where possible)."""
    from kuberlhf.errors import ConfigError

    shared = same_tokenizer(tokenizer, reward_tokenizer)
    if choice == "reward" and not shared:
        raise ConfigError("config key 'value_init': 'reward' needs the reward model to share the policy's tokenizer; "
                          "use 'policy' or 'auto'")
    if choice == "reward" or (choice == "auto" and shared):
        return build_value_model(reward_path, dtype, reward_head)
    return build_value_model(policy_path, dtype)


def same_tokenizer(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()
