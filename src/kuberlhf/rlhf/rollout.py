"""PPO's rollout batch: the policy's samples and what scoring adds to them, typed.

The reward model may use another tokenizer than the policy: responses are decoded to
text and re-encoded with the reward model's own tokenizer before scoring
(:func:`reward_scores`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kuberlhf.distributed import all_gather
from kuberlhf.models.generation import Samples
from kuberlhf.models.scoring import score_texts
from kuberlhf.rlhf.ppo_core import NonFiniteError


@dataclass
class RolloutBatch:
    """One PPO step's batch on one process: B rows, R response tokens (``samples.mask`` is ``(B, R)``).

    Filled by scoring, all float32 on the accelerator: ``logprobs``/``ref_logprobs`` ``(B, R)``, the
    policy's and the reference's log-probs of the sampled tokens; ``values`` ``(B, R)``, the value of
    the state before each response token; ``scores`` ``(B,)``, the reward model's (penalised, clipped)
    scores; ``kl`` ``(B, R)``, the per-token KL estimate (masked); ``advantages`` ``(B, R)``, whitened
    GAE advantages; ``returns`` ``(B, R)``, the value targets.
    """

    samples: Samples
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    @property
    def size(self) -> int:
        return self.samples.input_ids.shape[0]


def reward_scores(model: nn.Module, tokenizer: Any, texts: list[str], max_length: int, batch_size: int = 64,
                  counts: dict | None = None) -> torch.Tensor:
    """Scores of full texts by the reward model (its own tokenizer, EOS appended as in training)."""
    return torch.tensor(score_texts(model, tokenizer, texts, max_length, batch_size, counts), dtype=torch.float32)


@torch.no_grad()
def in_chunks(forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], samples: Samples,
              size: int | None) -> torch.Tensor:
    """``forward(input_ids, attention_mask)`` over the rows of ``samples``, ``size`` rows at a time
    (all at once for None), concatenated: the scoring pass's memory is bounded by ``size``."""
    rows = samples.input_ids.shape[0]
    size = size or rows
    return torch.cat([forward(samples.input_ids[i : i + size], samples.attention_mask[i : i + size])
                      for i in range(0, rows, size)])


def check_finite_everywhere(name: str, tensor: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` on every process when any process holds a NaN/inf in ``tensor``.

    Collective: one process stopping alone would leave the others waiting in their next collective
    until the timeout; so all stop together, naming the processes at fault.
    """
    bad = (~torch.isfinite(tensor)).sum().reshape(1).to(torch.float32)
    counts = all_gather(bad).tolist()
    if any(counts):
        ranks = [rank for rank, count in enumerate(counts) if count]
        where = f" (on process {', '.join(map(str, ranks))} of {len(counts)})" if len(counts) > 1 else ""
        raise NonFiniteError(f"non-finite {name}: {int(sum(counts))} of {tensor.numel() * len(counts)} values "
                             f"are NaN/inf{where}")


def batch_prompts(prompts: list[str], step: int, size: int, rank: int, world: int, seed: int) -> list[str]:
    """The ``size`` prompts of ``step`` on process ``rank`` of ``world``: a seeded permutation per pass over the
    data, so every process takes its own, and a resumed run the same ones."""
    import numpy as np

    start = (step * world + rank) * size
    out = []
    for pos in range(start, start + size):
        epoch, index = divmod(pos, len(prompts))
        out.append(prompts[np.random.default_rng(seed + epoch).permutation(len(prompts))[index]])
    return out
