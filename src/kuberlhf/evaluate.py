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
    """Responses to ``prompts`` (batched, left-padded, KV cache on); sampling is pure (top_k 0, top_p 1)."""
    import torch

    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    out: list[str] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True).to(device)
            tokens = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=not greedy,
                top_k=0,
                top_p=1.0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            out += tokenizer.batch_decode(tokens[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    tokenizer.padding_side = padding_side
    return out


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

    device = next(policy.parameters()).device
    after = generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    start = tokenizer(prompts, return_tensors="pt", padding=True)["input_ids"].shape[1]
    enc = tokenizer([p + r for p, r in zip(prompts, after, strict=True)], return_tensors="pt", padding=True)
    tokenizer.padding_side = padding_side
    ids, attn = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    mask = attn[:, start:].float()  # left padding keeps the prompt block aligned; score the responses only
    reference_ctx = policy.disable_adapter() if reference is None else contextlib.nullcontext()
    with torch.no_grad():
        logp, _ = sequence_logprobs(policy, ids, attn, start)
        with reference_ctx:
            ref = policy if reference is None else reference
            ref_logp, _ = sequence_logprobs(ref, ids, attn, start)
            before = generate(ref, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed)
    metrics: dict[str, Any] = {"kl": ((logp - ref_logp) * mask).sum(1).mean().item(), "eval_prompts": len(prompts)}
    if gold:
        from kuberlhf.demo.task import gold_score

        metrics["gold_score_before"] = sum(map(gold_score, prompts, before)) / len(prompts)
        metrics["gold_score_after"] = sum(map(gold_score, prompts, after)) / len(prompts)
        metrics["samples"] = [
            {"prompt": p, "before": b, "after": a} for p, b, a in list(zip(prompts, before, after, strict=True))[:5]
        ]
    return metrics
