"""PPO's rollout batch: the policy's samples and what scoring adds to them, typed.

The reward model may use another tokenizer than the policy: responses are decoded to
text and re-encoded with the reward model's own tokenizer before scoring
(:func:`reward_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kuberlhf.models.generation import Samples
from kuberlhf.models.scoring import score_texts


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


def reward_scores(model: nn.Module, tokenizer: Any, texts: list[str], max_length: int) -> torch.Tensor:
    """Scores of full texts by the reward model (its own tokenizer, EOS appended as in training)."""
    return torch.tensor(score_texts(model, tokenizer, texts, max_length), dtype=torch.float32)
