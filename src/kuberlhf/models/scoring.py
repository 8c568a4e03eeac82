"""Scoring texts with a reward model (a one-label sequence classifier), as it was trained."""

from __future__ import annotations

from typing import Any


def score_texts(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64,
                counts: dict | None = None) -> list[float]:
    """Reward-model scores of full texts, formatted as in training (an EOS appended when missing).

    A text longer than ``max_length`` tokens loses its beginning, not its end: the response and its
    EOS are what the reward model must see. ``counts["truncated"]`` (when given) adds how many were cut.
    """
    import torch

    eos = tokenizer.eos_token or ""
    texts = [t if t.endswith(eos) else t + eos for t in texts]
    was_training = model.training
    model.eval()
    scores: list[float] = []
    device = next(model.parameters()).device
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = texts[start : start + batch_size]
                enc = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
                if counts is not None:
                    lengths = [len(ids) for ids in tokenizer(batch)["input_ids"]]
                    counts["truncated"] = counts.get("truncated", 0) + sum(n > max_length for n in lengths)
                scores += model(**enc.to(device)).logits[:, 0].float().tolist()
    finally:
        tokenizer.truncation_side = side
    model.train(was_training)
    return scores
