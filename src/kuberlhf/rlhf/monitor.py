"""Watching a PPO run on held-out prompts: which judge scores it, and its score now and then during training.

The judge is the gold judge where it applies (the demo task's prompts), else the run's own reward
model. A score during training (``eval.every_steps``) sits next to the reward in ``train_log.jsonl``
and the report, so over-optimisation (reward up, judge flat or down) shows as it happens.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from kuberlhf.artifacts import rundir
from kuberlhf.distributed import all_gather
from kuberlhf.eval.judges import Judge, RewardModelJudge, pick_judge
from kuberlhf.models.generation import generate

log = logging.getLogger(__name__)


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


def final_metrics(loop: Any, gen_time: float, train_time: float, samples: int, elapsed: float) -> dict:
    """A finished PPO run's metrics: its last steps' reward and KL, speed, texts cut, the held-out comparison."""
    last = loop.history[-10:]
    metrics: dict[str, Any] = {
        "steps": loop.step,
        "resumed_from_step": rundir.step_of(loop.resume),
        "reward": sum(h["reward"] for h in last) / max(len(last), 1),
        "kl_train": sum(h["kl"] for h in last) / max(len(last), 1),
        "samples_per_second": samples / max(elapsed, 1e-9),
        "generation_time_share": gen_time / max(gen_time + train_time, 1e-9),
        "skipped_minibatches": sum(h["skipped_minibatches"] for h in loop.history),
        "kl_coef": float(loop.kl_ctl.value),
        "world_size": loop.accelerator.num_processes,
        "zero_stage": loop.learner.stage if loop.zero else 0,
    }
    keys = sorted(loop.truncated)  # cut texts of this run, all processes (this session's steps)
    totals = all_gather(torch.tensor([float(loop.truncated[k]) for k in keys], device=loop.device))
    for key, total in zip(keys, totals.reshape(-1, len(keys)).sum(0).tolist(), strict=True):
        metrics[key] = int(total)
        if total:
            log.warning("%d %s during this run (see rollout.max_prompt_length, rollout.reward_max_length)",
                        int(total), key.replace("_", " "))
    if loop.accelerator.is_main_process and loop.eval_prompts:  # the reference's and the final policy's
        from kuberlhf.eval.heldout import compare_to_reference

        metrics.update(compare_to_reference(
            loop.final, loop.reference, loop.tokenizer, loop.eval_prompts, judge=loop.judge,
            max_new_tokens=loop.cfg.rollout.max_new_tokens, seed=loop.cfg.training.seed))
    return metrics
