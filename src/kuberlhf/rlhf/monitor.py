"""Watching a PPO run on held-out prompts: which judge scores it, and its score now and then during training.

The judge is the gold judge where it applies (the demo task's prompts), else the run's own reward
model. A score during training (``eval.every_steps``) sits next to the reward in ``train_log.jsonl``
and the report, so over-optimisation (reward up, judge flat or down) shows as it happens.
"""

from __future__ import annotations

from typing import Any

import torch

from kuberlhf.eval.judges import Judge, RewardModelJudge, pick_judge
from kuberlhf.models.generation import generate


def run_judge(gold: bool, prompts: list[str], reward_model: Any, reward_tokenizer: Any, max_length: int) -> Judge:
    """The gold judge when asked for and it applies to ``prompts``, else the run's reward model as the judge."""
    return pick_judge(prompts, gold=gold, fallback=lambda: RewardModelJudge(reward_model, reward_tokenizer, max_length))


def judge_score(policy: Any, tokenizer: Any, prompts: list[str], judge: Judge, *, max_new_tokens: int,
                seed: int) -> float:
    """Mean judge score of one seeded sample per prompt; the training's RNG stream is left where it was."""
    with torch.random.fork_rng(devices=[]):
        responses = generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed)
    scores = judge.score(prompts, responses)
    return sum(scores) / len(scores)
