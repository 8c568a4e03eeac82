"""Scoring texts with a reward model (a one-label sequence classifier), as it was trained."""

from __future__ import annotations

from typing import Any


def score_texts(model: Any, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64) -> list[float]:
    """Reward-model scores of full texts, formatted as in training (an EOS appended when missing)."""
    import torch

    eos = tokenizer.eos_token or ""
    texts = [t if t.endswith(eos) else t + eos for t in texts]
    was_training = model.training
    model.eval()
    scores: list[float] = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
            ).to(device)
            scores += model(**enc).logits[:, 0].float().tolist()
    model.train(was_training)
    return scores
