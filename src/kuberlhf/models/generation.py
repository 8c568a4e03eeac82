"""Sampling from a causal LM and scoring its own tokens: what rollouts and evaluation share.

:func:`sample` generates one batch (KV cache on, cut after the first EOS) as :class:`Samples`;
:func:`sequence_logprobs` gives the log-probs and entropies of the response tokens. The per-token
math (:func:`logprobs_from_logits`, :func:`entropy_from_logits`, :func:`truncate_after_eos`) is
tested against hand-computed numbers in ``tests/unit/test_ppo_core.py``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label: ``log_softmax(logits)[..., label]``, shape ``labels.shape``.

    ``logits`` is ``(..., V)`` and already aligned with ``labels`` (for a causal LM,
    ``logits[:, :-1]`` scores ``input_ids[:, 1:]``). Computed in float32 as
    ``logits[label] - logsumexp(logits)``, which avoids materializing the full log_softmax.
    """
    logits = logits.float()
    picked = logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` over the last dim: ``H = -sum_v p_v log p_v`` (float32).

    Tokens with logit -inf (p = 0) contribute 0, as do their gradients.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(-1)


def truncate_after_eos(
    tokens: torch.Tensor, eos_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each response after its first EOS.

    Returns ``(tokens, mask, has_eos)``: tokens after the first EOS replaced by ``pad_token_id``;
    ``mask`` (long, ``(B, T)``) is 1 up to and including the first EOS (all 1 for a row without
    one); ``has_eos`` (bool, ``(B,)``) says whether the row had an EOS. Works when pad == eos.
    """
    is_eos = (tokens == eos_token_id).long()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0  # an EOS strictly earlier in the row
    mask = (~after_eos).long()
    out = torch.where(after_eos, torch.full_like(tokens, pad_token_id), tokens)
    return out, mask, is_eos.bool().any(1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: 0 at each row's first real token."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def response_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, start: int, temperature: float = 1.0,
                      entropy: bool = True):
    """Log-probs and entropies (float32) of the tokens from position ``start`` on, from a causal LM's logits.

    ``logits`` are of every position, or of the last ``T - start + 1`` only (``logits_to_keep``): the
    response's tokens are scored by the positions before them. Both are of ``softmax(logits / temperature)``:
    the distribution the tokens were sampled from. The entropy is a statistic: it carries no autograd graph
    (None when not asked for).
    """
    response = input_ids.shape[1] - start
    logits = logits[:, -(response + 1) : -1].float()
    if temperature != 1.0:
        logits = logits / temperature
    entropies = None
    if entropy:
        with torch.no_grad():
            entropies = entropy_from_logits(logits.detach())
    return logprobs_from_logits(logits, input_ids[:, start:]), entropies


def logits_to_keep_kwargs(model: nn.Module, keep: int) -> dict:
    """``{"logits_to_keep": keep}`` when ``model``'s forward takes it (most Hugging Face causal LMs; a PEFT
    model passes it on to its base model), else ``{}``: the LM head then runs on the last ``keep``
    positions only, and the prompt's positions (rows x prompt x vocabulary floats) are never computed."""
    if keep <= 0:
        return {}
    base = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    if "logits_to_keep" in inspect.signature(base.forward).parameters:
        return {"logits_to_keep": keep}
    return {}


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int,
                      temperature: float = 1.0, entropy: bool = True):
    """Log-probs and entropies of the tokens from position ``start`` on (float32), at ``temperature``.

    Only the response's positions get logits (``logits_to_keep`` where the model takes it); entropy None
    when not asked for.
    """
    pos = position_ids(attention_mask)
    keep = logits_to_keep_kwargs(model, input_ids.shape[1] - start + 1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, **keep).logits
    return response_logprobs(logits, input_ids, start, temperature, entropy)


@dataclass
class Samples:
    """One batch of sampled responses; B rows, P prompt tokens (left-padded), R response tokens.

    ``input_ids``/``attention_mask`` (long, ``(B, P + R)``): prompt + response (right-padded after
    its EOS); ``start`` = P, where responses begin; ``mask`` (float, ``(B, R)``): 1 on response tokens,
    the EOS included; ``has_eos`` (bool, ``(B,)``); ``texts``: the decoded responses; ``prompts``;
    ``prompts_truncated``: how many prompts were cut (from the left) to fit ``max_prompt_length``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    start: int
    mask: torch.Tensor
    has_eos: torch.Tensor
    texts: list[str]
    prompts: list[str]
    prompts_truncated: int = 0


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
    max_prompt_length: int | None = None,
) -> Samples:
    """One batch of responses (KV cache on), cut after the first EOS.

    ``synced_gpus`` keeps every process generating until all are done (ZeRO-3: each forward
    gathers the sharded weights from all processes, so none may stop early).

    Sampling is exactly what is asked: the model's own ``generation_config.json`` (repetition
    penalty, bad words, suppressed tokens, ...) is set aside for the call. ``max_prompt_length``
    keeps the last tokens of a longer prompt (``Samples.prompts_truncated`` counts them). A
    response's text is decoded in the context of its prompt, so a SentencePiece tokenizer keeps its
    leading space (decoded alone, ``"\u2581fresh"`` loses it).
    """
    from transformers import GenerationConfig

    enc, truncated = _encode_prompts(tokenizer, prompts, max_prompt_length, next(model.parameters()).device)
    was_training = model.training
    model.eval()
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        **({"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}),
        eos_token_id=tokenizer.eos_token_id if stop_at_eos else None,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    own, target.generation_config = target.generation_config, GenerationConfig()
    try:
        generated = model.generate(**enc, generation_config=config, synced_gpus=synced_gpus)
    finally:
        target.generation_config = own
    model.train(was_training)
    start = enc["input_ids"].shape[1]
    response, mask, has_eos = truncate_after_eos(generated[:, start:], tokenizer.eos_token_id, tokenizer.pad_token_id)
    mask = mask.to(enc["attention_mask"].dtype)
    return Samples(
        input_ids=torch.cat([enc["input_ids"], response], dim=1),
        attention_mask=torch.cat([enc["attention_mask"], mask], dim=1),
        start=start,
        mask=mask.float(),
        has_eos=has_eos,
        texts=response_texts(tokenizer, enc["input_ids"], enc["attention_mask"], response, mask),
        prompts=prompts,
        prompts_truncated=truncated,
    )


def _encode_prompts(tokenizer: Any, prompts: list[str], max_length: int | None, device: Any) -> tuple[dict, int]:
    """Left-padded prompt tokens, each cut to its last ``max_length`` tokens; (encoding, prompts cut)."""
    saved = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=max_length is not None,
                        max_length=max_length)
        truncated = 0
        if max_length is not None:
            truncated = sum(len(ids) > max_length for ids in tokenizer(prompts)["input_ids"])
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = saved
    return enc.to(device), truncated


def response_texts(tokenizer: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response: torch.Tensor,
                   response_mask: torch.Tensor) -> list[str]:
    """Each response decoded after its prompt's tokens, minus the prompt's decoded text.

    Decoded alone, a SentencePiece (Metaspace) tokenizer drops the response's leading space; in its
    prompt's context it keeps it, so ``prompt + text`` is the text the policy's tokens spell.
    """
    texts = []
    for p_ids, p_mask, r_ids, r_mask in zip(prompt_ids, prompt_mask, response, response_mask, strict=True):
        head = p_ids[p_mask.bool()].tolist()
        tail = r_ids[r_mask.bool()].tolist()
        prefix = tokenizer.decode(head, skip_special_tokens=True)
        full = tokenizer.decode(head + tail, skip_special_tokens=True)
        alone = full[len(prefix):] if full.startswith(prefix) else tokenizer.decode(tail, skip_special_tokens=True)
        texts.append(alone)
    return texts


def generate(model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int = 24, batch_size: int = 64,
             greedy: bool = False, seed: int = 0) -> list[str]:
    """Responses to ``prompts`` (batched, KV cache on); sampling is pure (top_k 0, top_p 1)."""
    return [text for batch in batches(model, tokenizer, prompts, max_new_tokens, batch_size, greedy, seed)
            for text in batch.texts]


def batches(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int, greedy: bool,
            seed: int):
    """:func:`sample` over ``prompts`` in batches, seeded once."""
    torch.manual_seed(seed)
    for start in range(0, len(prompts), batch_size):
        yield sample(model, tokenizer, prompts[start : start + batch_size], max_new_tokens=max_new_tokens,
                     do_sample=not greedy)
