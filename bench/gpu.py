"""GPU benchmark of the three training shapes at a real size, in one call (at most ~5 minutes).

An OPT-1.3B-shaped model with random weights in bf16 on one GPU: OPT-1.3B's sizes (24 layers,
hidden 2048, 32 heads, vocabulary 50272, tied embeddings, 1.32B parameters) in the Llama block
that the demo model and SmolLM2 use (rotary positions, SwiGLU FFN of 5504 keeping OPT's FFN
parameter count, RMSNorm): transformers' OPT does not keep packed sequences apart under SDPA (it
passes no ``position_ids`` to its mask), Llama does, and this benchmark checks it. No download,
no dataset (random token ids of realistic lengths); each measurement runs for ``--seconds``
after a warm-up:

* **SFT**: AdamW steps on variable-length sequences (uniform 64..``--seq-len`` tokens), once
  padded to the batch's longest and once padding-free (the batch packed into one row, positions
  restarting per sequence, no KV cache: transformers' SDPA masking then keeps the sequences
  apart, which the run checks by comparing each sequence's logits alone and packed). Tokens/s
  counts real tokens only; MFU = tokens/s x FLOPs per token / the GPU's peak bf16 FLOP/s, with
  FLOPs per token = 6 N + 6 L h s (N parameters, L layers, h hidden size, s the mean sequence
  length: the causal attention scores), the usual accounting (no recomputation counted).
* **Reward model**: the same body as a sequence classifier (``LlamaForSequenceClassification``,
  one label) on chosen/rejected pairs, pairwise loss ``-log sigmoid(r_c - r_r)``: step time.
* **PPO**: a rollout (sampling ``--ppo-new-tokens`` tokens for ``--ppo-batch`` prompts), the
  scoring pass (policy, frozen reference, value model and reward model), kuberlhf's own PPO math
  (``kuberlhf.rlhf.ppo_core``: KL, per-token rewards, GAE, clipped policy and value losses) and
  one update of policy and value model: samples/s, tokens/s and generation's share of the time.

Peak GPU memory is reported per part (``torch.cuda.max_memory_allocated``). The peak FLOP/s
comes from the device name (H100/H200 989.4 TFLOP/s dense bf16, A100 312) or ``--peak-tflops``.

$ python bench/gpu.py                           # one CUDA GPU; prints one markdown table
$ python bench/gpu.py --json-out gpu.json       # also the figures as JSON
$ python bench/gpu.py --tiny --device cpu       # a seconds-long run of the script itself (no GPU)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# OPT-1.3B's sizes; intermediate_size 5504 = OPT's 2 x 8192 FFN parameters in SwiGLU's 3 matrices (rounded to 64)
OPT_1_3B = dict(hidden_size=2048, num_hidden_layers=24, intermediate_size=5504, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=50272, max_position_embeddings=2048)
TINY = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=512, max_position_embeddings=512)
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.05, "A10": 125.0}


def model_config(shape: dict, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(**shape, tie_word_embeddings=True, attention_dropout=0.0, pad_token_id=1, bos_token_id=2,
                       eos_token_id=2, use_cache=False, **extra)


def build(cls, config, device, dtype):
    import torch

    with torch.device(device):
        model = cls._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.to(device)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def timed(fn, seconds: float, warmup: int, device) -> tuple[float, int]:
    """Run ``fn`` ``warmup`` times, then for at least ``seconds`` (at least twice): (seconds per call, calls)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    sync(device)
    return (time.perf_counter() - start) / calls, calls


def lengths(batch: int, low: int, high: int, seed: int) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(batch)]


def sft(args, shape: dict, device, dtype) -> dict:
    """Padded and padding-free SFT steps: real tokens/s and MFU of each."""
    import torch
    from transformers import LlamaForCausalLM

    config = model_config(shape)
    model = build(LlamaForCausalLM, config, device, dtype)
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    n_params = sum(p.numel() for p in model.parameters())
    seqs = lengths(args.sft_batch, min(64, args.seq_len), args.seq_len, seed=0)
    real = sum(seqs)
    gen = torch.Generator().manual_seed(0)
    tokens = [torch.randint(3, config.vocab_size, (n,), generator=gen) for n in seqs]

    longest = max(seqs)
    padded = torch.full((len(seqs), longest), config.pad_token_id)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, t in enumerate(tokens):
        padded[i, : len(t)], mask[i, : len(t)] = t, 1
    labels = padded.masked_fill(mask == 0, -100)
    padded, mask, labels = padded.to(device), mask.to(device), labels.to(device)
    packed = torch.cat(tokens)[None].to(device)
    positions = torch.cat([torch.arange(n) for n in seqs])[None].to(device)
    packed_labels = torch.cat([torch.cat([torch.full((1,), -100), t[1:]]) for t in tokens])[None].to(device)

    with torch.no_grad():  # packing must keep the sequences apart: each one's logits as if alone
        model.eval()
        first = seqs[:3]
        row = torch.cat(tokens[:3])[None].to(device)
        alone = torch.cat([model(input_ids=t[None].to(device)).logits[0].float() for t in tokens[:3]])
        restart = torch.cat([torch.arange(n) for n in first])[None].to(device)
        apart = (model(input_ids=row, position_ids=restart).logits[0].float() - alone).abs().max().item()
        mixed = (model(input_ids=row).logits[0].float() - alone).abs().max().item()  # one long sequence
        model.train()

    def step(**batch):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    flops_per_token = 6 * n_params + 6 * shape["num_hidden_layers"] * shape["hidden_size"] * (real / len(seqs))
    out = {"sft_params_m": n_params / 1e6, "sft_batch_tokens": real, "sft_padded_tokens": padded.numel(),
           "sft_packed_logit_diff": apart, "sft_unpacked_logit_diff": mixed}
    for name, batch in (("padded", dict(input_ids=padded, attention_mask=mask, labels=labels)),
                        ("packed", dict(input_ids=packed, position_ids=positions, labels=packed_labels))):
        reset_peak(device)
        seconds, calls = timed(lambda b=batch: step(**b), args.seconds, args.warmup, device)
        out[f"sft_{name}_tokens_per_s"] = real / seconds
        out[f"sft_{name}_step_s"] = seconds
        out[f"sft_{name}_steps"] = calls
        out[f"sft_{name}_mfu"] = (real / seconds * flops_per_token / (args.peak_tflops * 1e12)
                                  if args.peak_tflops else None)
        out[f"sft_{name}_peak_gib"] = peak_gib(device)
    return out  # the models go with this frame


def reward(args, shape: dict, device, dtype) -> dict:
    """Pairwise reward-model steps: seconds per step of ``--rm-batch`` pairs."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaForSequenceClassification

    config = model_config(shape, num_labels=1)
    model = build(LlamaForSequenceClassification, config, device, dtype)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    pairs, length = args.rm_batch, args.seq_len // 2
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (2 * pairs, length), generator=gen).to(device)

    def step():
        scores = model(input_ids=ids).logits.squeeze(-1).float()
        loss = -F.logsigmoid(scores[:pairs] - scores[pairs:]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    seconds, calls = timed(step, args.seconds, args.warmup, device)
    return {"rm_step_s": seconds, "rm_pairs_per_s": pairs / seconds, "rm_steps": calls, "rm_peak_gib": peak_gib(device)}


def ppo(args, shape: dict, device, dtype) -> dict:
    """PPO iterations: rollout, scoring, kuberlhf's PPO math and one update; time per part."""
    import torch
    from torch import nn
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel

    from kuberlhf.rlhf import ppo_core

    config = model_config(shape)
    policy = build(LlamaForCausalLM, config, device, dtype)
    ref = build(LlamaForCausalLM, config, device, dtype).eval().requires_grad_(False)
    reward_model = build(LlamaForSequenceClassification, model_config(shape, num_labels=1), device, dtype)
    reward_model.eval().requires_grad_(False)

    class Value(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = build(LlamaModel, config, device, dtype)
            self.head = nn.Linear(shape["hidden_size"], 1, device=device, dtype=dtype)

        def forward(self, input_ids, attention_mask):
            hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.head(hidden).squeeze(-1)

    value = Value()
    params = [*policy.parameters(), *value.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-6, fused=device.type == "cuda")
    batch, prompt_len, new = args.ppo_batch, args.ppo_prompt_len, args.ppo_new_tokens
    gen = torch.Generator().manual_seed(2)
    prompts = torch.randint(3, config.vocab_size, (batch, prompt_len), generator=gen).to(device)
    micro = max(1, min(args.ppo_micro_batch, batch))
    parts = {"generate": 0.0, "score": 0.0, "update": 0.0}

    def logprobs_of(model, ids, mask):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, prompt_len - 1: -1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)

    def clock(part, start):
        sync(device)
        parts[part] += time.perf_counter() - start
        return time.perf_counter()

    def iteration():
        start = time.perf_counter()
        policy.eval()
        with torch.no_grad():
            ids = policy.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, top_k=0,
                                  max_new_tokens=new, min_new_tokens=new, pad_token_id=config.pad_token_id)
        start = clock("generate", start)
        mask = torch.ones_like(ids)
        response_mask = mask[:, prompt_len:]
        with torch.no_grad():
            chunks = [range(i, min(i + micro, batch)) for i in range(0, batch, micro)]
            old_lp = torch.cat([logprobs_of(policy, ids[c], mask[c]) for c in chunks])
            ref_lp = torch.cat([logprobs_of(ref, ids[c], mask[c]) for c in chunks])
            old_v = torch.cat([value(ids[c], mask[c])[:, prompt_len - 1: -1].float() for c in chunks])
            scores = torch.cat([reward_model(input_ids=ids[c], attention_mask=mask[c]).logits[:, 0].float()
                                for c in chunks])
            kl = ppo_core.kl_estimate(old_lp, ref_lp)
            rewards, _ = ppo_core.per_token_rewards(scores, kl, 0.05, response_mask)
            advantages, returns = ppo_core.gae(rewards, old_v, response_mask, gamma=1.0, lam=0.95)
            advantages = ppo_core.masked_whiten(advantages, response_mask)
        start = clock("score", start)
        policy.train()
        for c in chunks:  # one epoch, one mini-batch of the whole rollout, accumulated over micro-batches
            lp = logprobs_of(policy, ids[c], mask[c])
            v = value(ids[c], mask[c])[:, prompt_len - 1: -1].float()
            pg, _ = ppo_core.policy_loss(lp, old_lp[c], advantages[c], response_mask[c], 0.2)
            vf, _ = ppo_core.value_loss(v, old_v[c], returns[c], response_mask[c], 0.2)
            ((pg + 0.1 * vf) * len(c) / batch).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock("update", start)

    reset_peak(device)
    for _ in range(args.warmup):
        iteration()
    parts.update(generate=0.0, score=0.0, update=0.0)
    seconds, calls = timed(iteration, args.seconds, 0, device)
    total = sum(parts.values())
    return {"ppo_iteration_s": seconds, "ppo_samples_per_s": batch / seconds,
            "ppo_tokens_per_s": batch * (prompt_len + new) / seconds, "ppo_generation_share": parts["generate"] / total,
            "ppo_scoring_share": parts["score"] / total, "ppo_update_share": parts["update"] / total,
            "ppo_iterations": calls, "ppo_peak_gib": peak_gib(device)}


def table(figures: dict, args, device_name: str) -> str:
    def fmt(value, unit=""):
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:,.3g}{unit}" if abs(value) < 100 else f"{value:,.0f}{unit}"
        return f"{value}{unit}"

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}%"

    f = figures
    rows = [
        ("SFT padded: tokens/s (real tokens)", fmt(f["sft_padded_tokens_per_s"])),
        ("SFT padded: MFU", pct(f["sft_padded_mfu"])),
        ("SFT padding-free packed: tokens/s", fmt(f["sft_packed_tokens_per_s"])),
        ("SFT padding-free packed: MFU", pct(f["sft_packed_mfu"])),
        ("SFT padded / packed tokens in a batch", f"{f['sft_padded_tokens']} / {f['sft_batch_tokens']}"),
        ("SFT packing check: max logit change packed / run together", f"{f['sft_packed_logit_diff']:.3g} / "
                                                                       f"{f['sft_unpacked_logit_diff']:.3g}"),
        ("SFT peak memory (padded, packed)", f"{fmt(f['sft_padded_peak_gib'], ' GiB')}, "
                                             f"{fmt(f['sft_packed_peak_gib'], ' GiB')}"),
        (f"Reward model: step ({args.rm_batch} pairs x {args.seq_len // 2} tokens)", fmt(f["rm_step_s"], " s")),
        ("Reward model: pairs/s", fmt(f["rm_pairs_per_s"])),
        ("Reward model peak memory", fmt(f["rm_peak_gib"], " GiB")),
        (f"PPO: samples/s ({args.ppo_batch} x {args.ppo_prompt_len}+{args.ppo_new_tokens} tokens)",
         fmt(f["ppo_samples_per_s"])),
        ("PPO: tokens/s", fmt(f["ppo_tokens_per_s"])),
        ("PPO: generation / scoring / update share", f"{pct(f['ppo_generation_share'])} / "
                                                    f"{pct(f['ppo_scoring_share'])} / {pct(f['ppo_update_share'])}"),
        ("PPO peak memory (4 models, AdamW on 2)", fmt(f["ppo_peak_gib"], " GiB")),
    ]
    head = (f"{device_name}, {args.shape} shape ({f['sft_params_m']:,.3g}M parameters), {args.dtype}, "
            f"SFT batch {args.sft_batch} sequences of 64..{args.seq_len} tokens, "
            f"peak {fmt(args.peak_tflops, ' TFLOP/s') if args.peak_tflops else 'unknown (no MFU)'}, "
            f"{f['seconds_total']:.0f} s in all")
    return "\n".join([head, "", "| measure | value |", "| --- | --- |", *[f"| {a} | {b} |" for a, b in rows]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and batch: checks the script in seconds")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time of each part after warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each measurement")
    parser.add_argument("--seq-len", type=int, default=1024, help="longest SFT sequence")
    parser.add_argument("--sft-batch", type=int, default=16, help="sequences per SFT step")
    parser.add_argument("--rm-batch", type=int, default=16, help="chosen/rejected pairs per reward-model step")
    parser.add_argument("--ppo-batch", type=int, default=64, help="prompts per PPO rollout")
    parser.add_argument("--ppo-micro-batch", type=int, default=16, help="rows per forward/backward in scoring/update")
    parser.add_argument("--ppo-prompt-len", type=int, default=128)
    parser.add_argument("--ppo-new-tokens", type=int, default=128)
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in SFT")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak dense bf16 TFLOP/s")
    parser.add_argument("--json-out", help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device (use --device cpu --tiny to check the script)", file=sys.stderr)
        return 2
    args.shape, args.dtype = ("tiny" if args.tiny else "OPT-1.3B-sized Llama-block"), "bfloat16"
    shape = TINY if args.tiny else OPT_1_3B
    if args.tiny:
        args.seq_len, args.sft_batch = min(args.seq_len, 96), min(args.sft_batch, 4)
        args.rm_batch = min(args.rm_batch, 2)
        args.ppo_batch, args.ppo_prompt_len, args.ppo_new_tokens = min(args.ppo_batch, 4), 8, 8
        args.ppo_micro_batch = min(args.ppo_micro_batch, 2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    if args.peak_tflops is None and device.type == "cuda":
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    torch.manual_seed(0)
    start = time.perf_counter()
    figures: dict = {}
    for part in (sft, reward, ppo):
        figures.update(part(args, shape, device, torch.bfloat16))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    figures["seconds_total"] = time.perf_counter() - start
    figures.update(device=name, shape=args.shape, torch=torch.__version__, peak_tflops=args.peak_tflops)
    bad = [k for k, v in figures.items() if isinstance(v, float) and not math.isfinite(v)]
    if not figures["sft_packed_logit_diff"] < 0.1 * figures["sft_unpacked_logit_diff"]:
        bad.append("sft_packed_logit_diff")  # the packed sequences saw each other
    print(table(figures, args, name))
    if bad:
        print(f"bench/gpu.py: wrong figures: {', '.join(bad)}", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
