"""The models of online RL: the policy's frozen reference, a value model, and a reward model.

The reward model may use another tokenizer than the policy: responses are decoded to
text and re-encoded with the reward model's own tokenizer before scoring.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ValueModel(nn.Module):
    """A transformer backbone with a scalar head: one value per token of the policy's text."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.bias)
        nn.init.normal_(self.head.weight, std=1.0 / (hidden_size + 1))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden).squeeze(-1)


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


def same_tokenizer(a: Any, b: Any) -> bool:
    return a.get_vocab() == b.get_vocab()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: 0 at each row's first real token."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def response_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, start: int):
    """Log-probs and entropies (float32) of the tokens from position ``start`` on, from a causal LM's logits."""
    from kuberlhf.rlhf.ppo_core import entropy_from_logits, logprobs_from_logits

    logits = logits[:, start - 1 : -1].float()
    return logprobs_from_logits(logits, input_ids[:, start:]), entropy_from_logits(logits)


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int):
    """Log-probs and entropies of the tokens from position ``start`` on (float32)."""
    pos = position_ids(attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits
    return response_logprobs(logits, input_ids, start)


def reward_scores(model: nn.Module, tokenizer: Any, texts: list[str], max_length: int) -> torch.Tensor:
    """Scores of full texts by the reward model (its own tokenizer, EOS appended as in training)."""
    from kuberlhf.reward import score_texts

    return torch.tensor(score_texts(model, tokenizer, texts, max_length), dtype=torch.float32)


@torch.no_grad()
def sample(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_at_eos: bool = True,
    synced_gpus: bool = False,
) -> dict:
    """One batch of responses (KV cache on), cut after the first EOS.

    ``synced_gpus`` keeps every process generating until all are done (ZeRO-3: each forward
    gathers the sharded weights from all processes, so none may stop early).

    Returns ``input_ids``/``attention_mask`` of prompt (left-padded) + response (right-padded),
    ``start`` (where responses begin), ``mask`` (float, 1 on response tokens incl. the EOS),
    ``has_eos`` and the decoded response ``texts``.
    """
    from kuberlhf.rlhf.ppo_core import truncate_after_eos

    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(next(model.parameters()).device)
    tokenizer.padding_side = padding_side
    was_training = model.training
    model.eval()
    sampling = {"do_sample": True, "top_k": top_k, "top_p": top_p, "temperature": temperature} if do_sample else {
        "do_sample": False}
    generated = model.generate(
        **enc,
        **sampling,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id if stop_at_eos else None,
        pad_token_id=tokenizer.pad_token_id,
        synced_gpus=synced_gpus,
    )
    model.train(was_training)
    start = enc["input_ids"].shape[1]
    response, mask, has_eos = truncate_after_eos(generated[:, start:], tokenizer.eos_token_id, tokenizer.pad_token_id)
    mask = mask.to(enc["attention_mask"].dtype)
    return {
        "input_ids": torch.cat([enc["input_ids"], response], dim=1),
        "attention_mask": torch.cat([enc["attention_mask"], mask], dim=1),
        "start": start,
        "mask": mask.float(),
        "has_eos": has_eos,
        "texts": tokenizer.batch_decode(response, skip_special_tokens=True),
        "prompts": prompts,
    }
