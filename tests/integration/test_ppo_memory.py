"""PPO's memory settings on tiny models: gradient accumulation (one process, DDP, ZeRO-3), a scoring pass of
log-probs only, and ZeRO-3 generation on weights gathered once per rollout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import REPO, load_state, run, run_cli, torchrun_command
from test_ppo import ppo_args

# one PPO update: one epoch, one mini-batch of all 16 rows, one AdamW step per model; clipping off, so the
# gradients at the step are the accumulated ones
ONE_UPDATE = ("training.max_steps=1", "ppo.num_ppo_epochs=1", "ppo.num_mini_batches=1", "data.eval=null",
              "training.max_grad_norm=1e9")


def _record_steps(monkeypatch) -> list[list[torch.Tensor]]:
    """The gradients of the policy and the value model at each optimizer step of SeparateLearner."""
    from kuberlhf.rlhf.learner import SeparateLearner

    steps: list[list[torch.Tensor]] = []
    real = SeparateLearner.step

    def step(self):
        steps.append([p.grad.detach().clone() for model in (self.policy_model, self.value_model)
                      for p in model.parameters() if p.grad is not None])
        real(self)

    monkeypatch.setattr(SeparateLearner, "step", step)
    return steps


def _same(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float = 1e-5) -> bool:
    """Equal up to float32 summation order: within ``rtol`` of each tensor's largest entry."""
    return len(a) == len(b) and all(torch.allclose(x, y, rtol=0, atol=rtol * float(x.abs().max()) + 1e-12)
                                    for x, y in zip(a, b, strict=True))


def _same_weights(a: dict, b: dict, atol: float = 2e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


def test_gradient_accumulation_gives_the_update_of_the_whole_mini_batch(tmp_path, trained, monkeypatch):
    """One update of a 16-row mini-batch with ppo.gradient_accumulation_steps 1, 2 and 4: the same gradients at
    the optimizer step, the same policy after it (to ~1e-6; the update moves weights by ~1e-4) and the same
    logged losses.

    Micro-batch i of n_i response tokens (N in the mini-batch, S_i the sum of its per-token losses) backs
    ``n_i / N * (S_i / n_i)``, so the accumulated loss is ``sum_i S_i / N``: the mini-batch's masked mean.
    The micro-batches' token counts differ (asserted), so an equal 1/k per micro-batch is another loss, and so
    is none; both runs give other gradients and another policy: the comparison can fail. The gradients are
    compared besides the weights because AdamW's first step, ``lr * g / (|g| + eps)``, would hide a scale
    common to all of them.
    """
    from kuberlhf.rlhf import loop

    steps = _record_steps(monkeypatch)
    shares: list[float] = []
    real_weight = loop.micro_batch_weight
    monkeypatch.setattr(loop, "micro_batch_weight", lambda mask, n: shares.append(real_weight(mask, n)) or shares[-1])
    weights, logs = {}, {}
    for k in (1, 2, 4):
        out = tmp_path / f"acc{k}"
        assert run_cli(ppo_args(out, trained, *ONE_UPDATE, f"ppo.gradient_accumulation_steps={k}")) == 0
        weights[k], logs[k] = load_state(out), json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert len(steps) == 3, "one optimizer step per run"
    assert shares[0] == 1.0 and len(shares) == 1 + 2 + 4
    assert sum(shares[1:3]) == pytest.approx(1) and sum(shares[3:]) == pytest.approx(1)
    assert len(set(shares[3:])) > 1, "the micro-batches hold as many tokens each: the weighting is not tested"
    before = load_state(trained / "sft")
    assert not _same_weights(before, weights[1]), "the update changed nothing"
    for k in (2, 4):
        assert _same(steps[0], steps[k // 2]), f"accumulation {k}: other gradients"
        assert _same_weights(weights[1], weights[k]), f"accumulation {k}: another policy"
        for key in ("policy_loss", "value_loss", "clip_fraction", "entropy"):
            assert logs[k][key] == pytest.approx(logs[1][key], rel=1e-4, abs=1e-7), (k, key)

    for name, wrong in (("1/k", lambda mask, n: 0.25), ("none", lambda mask, n: 1.0)):
        monkeypatch.setattr(loop, "micro_batch_weight", wrong)
        out = tmp_path / f"wrong-{name.replace('/', '')}"
        assert run_cli(ppo_args(out, trained, *ONE_UPDATE, "ppo.gradient_accumulation_steps=4")) == 0
        assert not _same(steps[0], steps[-1]), f"weights {name}: the same gradients"
        assert not _same_weights(weights[1], load_state(out)), f"weights {name}: the same policy"


def test_a_micro_batch_over_the_ratio_threshold_is_left_out_of_the_update(tmp_path, trained, monkeypatch):
    """Two micro-batches of 8 rows: leaving out the second (it still backs a zero loss, for DDP's all-reduce and
    DeepSpeed's boundary) gives micro-batch 1's share of the gradient, leaving out the first gives the second's,
    and the two add up to the gradient of both; with both left out no optimizer step runs and the policy stays."""
    from kuberlhf.rlhf import ppo_core

    steps = _record_steps(monkeypatch)
    calls, over = [], set()
    real = ppo_core.policy_loss

    def policy_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls.append(1)
        if len(calls) in over:
            stats = {**stats, "ratio_max": torch.tensor(100.0)}
        return loss, stats

    monkeypatch.setattr(ppo_core, "policy_loss", policy_loss)
    grads, skipped = {}, {}
    for name, flagged in (("both-in", set()), ("first-out", {1}), ("second-out", {2}), ("both-out", {1, 2})):
        calls.clear()
        over.clear()
        over.update(flagged)
        out = tmp_path / name
        n_steps = len(steps)
        assert run_cli(ppo_args(out, trained, *ONE_UPDATE, "ppo.gradient_accumulation_steps=2")) == 0
        grads[name] = steps[-1] if len(steps) > n_steps else None
        skipped[name] = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["skipped_minibatches"]
        if name == "both-out":
            assert _same_weights(load_state(trained / "sft"), load_state(out), atol=0)
    assert skipped == {"both-in": 0, "first-out": 1, "second-out": 1, "both-out": 2}
    assert grads["both-out"] is None, "an optimizer step ran with every micro-batch left out"
    added = [a + b for a, b in zip(grads["first-out"], grads["second-out"], strict=True)]
    assert _same(grads["both-in"], added)
    assert not _same(grads["both-in"], grads["first-out"])


def test_gradient_accumulation_must_divide_the_mini_batch(tmp_path, trained):
    code, err = run_cli(ppo_args(tmp_path / "bad", trained, "ppo.num_mini_batches=2",
                                 "ppo.gradient_accumulation_steps=3"), capture=True)
    assert code == 2 and "'ppo.gradient_accumulation_steps': must divide the mini-batch" in err and "8 rows" in err, err


def test_scoring_computes_log_probs_of_the_response_only(tmp_path, trained, monkeypatch):
    """The scoring pass asks the policy and the reference for the logits of the response's positions only
    (logits_to_keep: prompt + response - start + 1 of them, not the prompt's), and computes no entropy; the
    update's forward passes compute it (it is logged), without an autograd graph."""
    import functools

    import transformers

    from kuberlhf.models import generation

    kept: list[tuple[bool, int, int]] = []
    real_forward = transformers.LlamaForCausalLM.forward

    @functools.wraps(real_forward)  # its signature still shows logits_to_keep
    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1 and kwargs.get("attention_mask") is not None and not kwargs.get("use_cache", False):
            kept.append((torch.is_grad_enabled(), ids.shape[1], out.logits.shape[1]))
        return out

    entropies: list[tuple[bool, bool]] = []
    real_entropy = generation.entropy_from_logits

    def entropy(logits):
        h = real_entropy(logits)
        entropies.append((torch.is_grad_enabled(), h.requires_grad))
        return h

    monkeypatch.setattr(transformers.LlamaForCausalLM, "forward", forward)
    monkeypatch.setattr(generation, "entropy_from_logits", entropy)
    args = ppo_args(tmp_path / "ppo", trained, "training.max_steps=1", "ppo.num_ppo_epochs=1",
                    "ppo.num_mini_batches=2", "rollout.max_new_tokens=8", "data.eval=null")
    assert run_cli(args) == 0
    scoring = [k for k in kept if not k[0]]
    update = [k for k in kept if k[0]]
    assert len(scoring) == 2 and len(update) == 2  # policy + reference; two mini-batches
    for _, total, logits in scoring + update:
        assert logits <= 8 + 1 < total, (total, logits)  # the response (at most 8 tokens) and the position before
    assert entropies == [(False, False), (False, False)]  # the update's two mini-batches only, no graph


SAMPLES_RECORDED = """
import json, os, sys
from kuberlhf.models import generation
real = generation.sample
def recording(model, *args, **kwargs):
    samples = real(model, *args, **kwargs)
    record = {"input_ids": samples.input_ids.tolist(), "synced_gpus": kwargs["synced_gpus"],
              "numel": sum(p.numel() for p in model.parameters())}  # a ZeRO-3 shard's parameters hold 0 elements
    with open(os.environ["SAMPLES_OUT"] + "." + os.environ["RANK"], "a") as f:
        f.write(json.dumps(record) + "\\n")
    return samples
generation.sample = recording
from kuberlhf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _recorded(path) -> list[dict]:
    return [json.loads(line) for rank in (0, 1) for line in Path(f"{path}.{rank}").read_text().splitlines()]


@pytest.mark.slow
def test_zero3_generation_on_gathered_weights_samples_what_per_token_gathering_does(tmp_path, trained):
    """Two ZeRO-3 processes, two steps, two micro-batches per mini-batch: with rollout.gather_for_generation the
    policy generates on its whole weights (gathered once, every process on its own: no synced_gpus), without it
    on its shards (each token gathers them: synced_gpus); the same seed samples the same tokens on both
    processes at both steps, the second after an update (the hooks and shards came back). A run without
    accumulation ends with the same policy as one with it."""
    pytest.importorskip("deepspeed", reason="deepspeed is installed by `make install`")
    script = tmp_path / "record_samples.py"
    script.write_text(SAMPLES_RECORDED)
    common = [f"training.deepspeed={REPO / 'configs/deepspeed/zero3.json'}", "training.max_steps=2",
              "ppo.num_ppo_epochs=1", "ppo.num_mini_batches=1", "data.eval=null", "training.max_grad_norm=1e9",
              "training.save_steps=100"]
    runs = {"gathered": ["rollout.gather_for_generation=true", "ppo.gradient_accumulation_steps=2"],
            "per-token": ["rollout.gather_for_generation=false", "ppo.gradient_accumulation_steps=2"],
            "gathered-whole-batch": ["rollout.gather_for_generation=true", "ppo.gradient_accumulation_steps=1"]}
    for name, extra in runs.items():
        cmd = [str(REPO / ".venv/bin/python"), "-m", "torch.distributed.run", "--nproc_per_node=2", str(script),
               *map(str, ppo_args(tmp_path / name, trained, *common, *extra))]
        proc = run(cmd, timeout=500, SAMPLES_OUT=str(tmp_path / f"{name}.samples"),
                   TORCH_EXTENSIONS_DIR=str(REPO / ".cache" / "torch_extensions"))
        assert proc.returncode == 0, proc.stderr[-3000:]
    gathered, per_token = _recorded(tmp_path / "gathered.samples"), _recorded(tmp_path / "per-token.samples")
    assert len(gathered) == len(per_token) == 4  # two steps on each of two processes
    assert [r["input_ids"] for r in gathered] == [r["input_ids"] for r in per_token]
    assert gathered[0]["input_ids"] != gathered[2]["input_ids"]  # the two processes sampled apart
    whole = sum(v.numel() for v in load_state(trained / "sft").values())
    assert all(r["numel"] == whole and r["synced_gpus"] is False for r in gathered)
    assert all(r["numel"] < whole / 2 and r["synced_gpus"] is True for r in per_token)
    assert _same_weights(load_state(tmp_path / "gathered"), load_state(tmp_path / "gathered-whole-batch"), atol=1e-5)
    assert not _same_weights(load_state(trained / "sft"), load_state(tmp_path / "gathered"))


@pytest.mark.slow
def test_gradient_accumulation_under_ddp_all_reduces_the_whole_mini_batch(tmp_path, trained):
    """Two DDP processes, one update: two micro-batches (the first under no_sync, the second's all-reduce
    carrying both) end with the same policy as one forward-backward of the whole mini-batch; were the
    accumulated gradients not all-reduced, process 0 would publish its own update alone."""
    for k in (1, 2):
        out = tmp_path / f"ddp{k}"
        proc = run(torchrun_command(2, *ppo_args(out, trained, *ONE_UPDATE, f"ppo.gradient_accumulation_steps={k}")),
                   timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _same_weights(load_state(tmp_path / "ddp1"), load_state(tmp_path / "ddp2"))
    assert not _same_weights(load_state(trained / "sft"), load_state(tmp_path / "ddp2"))
