"""Score policies on held-out prompts with a judge, and compare a trained policy with its reference.

$ kuberlhf evaluate --model outputs/demo/sft --prompts "demo://prompts?n=200&split=test"
$ kuberlhf evaluate --model s3://bucket/runs/ppo --prompts "demo://prompts?n=200&split=test" --greedy

The score is the judge's mean over prompts of one sampled (or greedy) response each; the demo
task's gold judge (``gold``) is the default, any ``kuberlhf.judges`` plug-in can stand in.
"""

from __future__ import annotations

import logging
from typing import Any

from kuberlhf.eval.judges import Judge, get_judge
from kuberlhf.models.generation import batches, generate

log = logging.getLogger(__name__)


def judge_eval(model_path: str, prompts_uri: str, *, judge: str | Judge = "gold", greedy: bool = False,
               seed: int = 0, samples: int = 5) -> dict:
    """Mean judge score of the policy at ``model_path`` on the prompts at ``prompts_uri``.

    Returns ``{"<judge>_score", "well_formed" (share scored above 0), "prompts", "scores" (one per prompt),
    "samples"}``.
    """
    from kuberlhf.config.sections import ModelConfig
    from kuberlhf.data import load_examples
    from kuberlhf.models import loading

    judge = get_judge(judge) if isinstance(judge, str) else judge
    cfg = ModelConfig(name_or_path=model_path)
    path = loading.resolve_model_path(model_path, "causal-lm", seed)
    tokenizer = loading.load_tokenizer(cfg, path)
    model = loading.load_causal_lm(cfg, path)
    dataset, _ = load_examples(prompts_uri, "prompt")
    prompts = list(dataset["prompt"])
    responses = generate(model, tokenizer, prompts, greedy=greedy, seed=seed)
    scores = judge.score(prompts, responses)
    return {
        f"{judge.name}_score": sum(scores) / len(scores),
        "well_formed": sum(s > 0 for s in scores) / len(scores),
        "prompts": len(scores),
        "scores": scores,
        "samples": [
            {"prompt": p, "response": r, judge.name: s}
            for p, r, s in list(zip(prompts, responses, scores, strict=True))[:samples]
        ],
    }


def compare_to_reference(
    policy: Any,
    reference: Any | None,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    seed: int = 0,
    judge: str | Judge | None = "gold",
) -> dict:
    """KL of ``policy`` to its reference on its own held-out samples, and both policies' judge scores.

    ``reference=None`` means ``policy`` is a PEFT model whose disabled adapter is the reference.
    ``kl`` is the mean over prompts of the summed per-token log-ratio (k1) on the response;
    with a judge that applies to ``prompts``, ``<judge>_score_before`` (reference), ``<judge>_score_after``
    (policy) and ``judge`` (its name). A judge that does not apply (the gold judge off the demo task) is
    left out with a warning: no score is better than a meaningless one.
    """
    import contextlib

    import torch

    from kuberlhf.models.generation import sequence_logprobs

    def reference_ctx():  # a fresh context each time: a PEFT model's adapter switched off
        return policy.disable_adapter() if reference is None else contextlib.nullcontext()

    after, kls = [], []
    with torch.no_grad():
        for batch in batches(policy, tokenizer, prompts, max_new_tokens, 64, False, seed):
            ids, attn, start = batch.input_ids, batch.attention_mask, batch.start
            logp, _ = sequence_logprobs(policy, ids, attn, start)
            with reference_ctx():
                ref_logp, _ = sequence_logprobs(policy if reference is None else reference, ids, attn, start)
            kls += ((logp - ref_logp) * batch.mask).sum(1).tolist()
            after += batch.texts
        with reference_ctx():
            before = generate(policy if reference is None else reference, tokenizer, prompts,
                              max_new_tokens=max_new_tokens, seed=seed)
    metrics: dict[str, Any] = {"kl": sum(kls) / len(kls), "eval_prompts": len(prompts)}
    judge = get_judge(judge) if isinstance(judge, str) else judge
    if judge is not None and not judge.applies(prompts):
        log.warning("the %s judge does not apply to these held-out prompts: no judge scores", judge.name)
        judge = None
    if judge is not None:
        metrics["judge"] = judge.name
        metrics[f"{judge.name}_score_before"] = sum(judge.score(prompts, before)) / len(prompts)
        metrics[f"{judge.name}_score_after"] = sum(judge.score(prompts, after)) / len(prompts)
        metrics["samples"] = [
            {"prompt": p, "before": b, "after": a} for p, b, a in list(zip(prompts, before, after, strict=True))[:5]
        ]
    return metrics
