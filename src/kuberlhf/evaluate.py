"""Score a policy with the demo task's gold judge on held-out prompts.

$ kuberlhf evaluate --model outputs/demo/sft --prompts "demo://prompts?n=200&split=test"
$ kuberlhf evaluate --model s3://bucket/runs/ppo --prompts "demo://prompts?n=200&split=test" --greedy

The gold judge is the built-in task's ground truth (kuberlhf.demo.task.gold_score); the
score is the mean over prompts of one sampled (or greedy) response each.
"""

from __future__ import annotations

from typing import Any


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int = 24,
    batch_size: int = 64,
    greedy: bool = False,
    seed: int = 0,
) -> list[str]:
    """Responses to ``prompts`` (batched, KV cache on); sampling is pure (top_k 0, top_p 1)."""
    return [text for batch in _batches(model, tokenizer, prompts, max_new_tokens, batch_size, greedy, seed)
            for text in batch["texts"]]


def _batches(model, tokenizer, prompts, max_new_tokens, batch_size, greedy, seed):
    import torch

    from kuberlhf.rlhf.models import sample

    torch.manual_seed(seed)
    for start in range(0, len(prompts), batch_size):
        yield sample(model, tokenizer, prompts[start : start + batch_size], max_new_tokens=max_new_tokens,
                     do_sample=not greedy)


def gold_eval(model_path: str, prompts_uri: str, *, greedy: bool = False, seed: int = 0, samples: int = 5) -> dict:
    """Mean gold-judge score of the policy at ``model_path`` on the prompts at ``prompts_uri``."""
    from kuberlhf import modeling
    from kuberlhf.common import ModelConfig
    from kuberlhf.data import load_examples
    from kuberlhf.demo.task import gold_score

    cfg = ModelConfig(name_or_path=model_path)
    path = modeling.resolve_model_path(model_path, "causal-lm", seed)
    tokenizer = modeling.load_tokenizer(cfg, path)
    model = modeling.load_causal_lm(cfg, path)
    dataset, _ = load_examples(prompts_uri, "prompt")
    prompts = list(dataset["prompt"])
    responses = generate(model, tokenizer, prompts, greedy=greedy, seed=seed)
    scores = [gold_score(p, r) for p, r in zip(prompts, responses, strict=True)]
    return {
        "gold_score": sum(scores) / len(scores),
        "well_formed": sum(s > 0 for s in scores) / len(scores),
        "prompts": len(scores),
        "samples": [
            {"prompt": p, "response": r, "gold": s}
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
    gold: bool = True,
) -> dict:
    """KL of ``policy`` to its reference on its own held-out samples, and both policies' gold scores.

    ``reference=None`` means ``policy`` is a PEFT model whose disabled adapter is the reference.
    ``kl`` is the mean over prompts of the summed per-token log-ratio (k1) on the response.
    """
    import contextlib

    import torch

    from kuberlhf.rlhf.models import sequence_logprobs

    def reference_ctx():  # a fresh context each time: a PEFT model's adapter switched off
        return policy.disable_adapter() if reference is None else contextlib.nullcontext()

    after, kls = [], []
    with torch.no_grad():
        for batch in _batches(policy, tokenizer, prompts, max_new_tokens, 64, False, seed):
            ids, attn, start = batch["input_ids"], batch["attention_mask"], batch["start"]
            logp, _ = sequence_logprobs(policy, ids, attn, start)
            with reference_ctx():
                ref_logp, _ = sequence_logprobs(policy if reference is None else reference, ids, attn, start)
            kls += ((logp - ref_logp) * batch["mask"]).sum(1).tolist()
            after += batch["texts"]
        with reference_ctx():
            before = generate(policy if reference is None else reference, tokenizer, prompts,
                              max_new_tokens=max_new_tokens, seed=seed)
    metrics: dict[str, Any] = {"kl": sum(kls) / len(kls), "eval_prompts": len(prompts)}
    if gold:
        from kuberlhf.demo.task import gold_score

        metrics["gold_score_before"] = sum(map(gold_score, prompts, before)) / len(prompts)
        metrics["gold_score_after"] = sum(map(gold_score, prompts, after)) / len(prompts)
        metrics["samples"] = [
            {"prompt": p, "before": b, "after": a} for p, b, a in list(zip(prompts, before, after, strict=True))[:5]
        ]
    return metrics
