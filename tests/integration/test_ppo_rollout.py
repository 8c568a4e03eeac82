"""PPO on the paths of pretrained models: dropout, temperature, truncation, micro-batched scoring, and a
non-finite value on one of two processes."""

from __future__ import annotations

import json
import time

import pytest
import torch
from helpers import REPO, run, run_cli
from test_ppo import ppo_args


def spy(monkeypatch, owner, name, record):
    """Replace ``owner.name`` with a wrapper that calls ``record(result, *args, **kwargs)``."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        record(result, *args, **kwargs)
        return result

    monkeypatch.setattr(owner, name, wrapper)


def test_with_dropout_in_the_policy_the_first_minibatch_ratio_is_one(tmp_path, trained, monkeypatch):
    """demo://tiny-opt has dropout 0.1 (as OPT has): every step's first mini-batch sees the network that scored
    the rollout, so its ratio is 1 and its approximate KL 0 (dropout on in either pass would move both)."""
    from kuberlhf.rlhf import ppo_core

    calls: list[dict] = []
    spy(monkeypatch, ppo_core, "policy_loss", lambda out, *a, **k: calls.append({n: float(v) for n, v in out[1].items()}))
    out = tmp_path / "ppo-opt"
    args = ppo_args(out, trained, "policy.name_or_path=demo://tiny-opt", "value_init=policy", "training.max_steps=3",
                    "ppo.num_ppo_epochs=2", "ppo.num_mini_batches=2", "training.learning_rate=1e-3")
    assert run_cli(args) == 0
    per_step = 2 * 2
    assert len(calls) == 3 * per_step
    for step in range(3):
        first = calls[step * per_step]
        assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-6), (step, first)
        assert first["approx_kl"] == pytest.approx(0.0, abs=1e-10), (step, first)
    assert any(abs(c["ratio_mean"] - 1) > 1e-4 for c in calls), "the updates changed nothing"


def first_minibatch_stats(monkeypatch) -> list[dict]:
    from kuberlhf.rlhf import ppo_core

    calls: list[dict] = []
    spy(monkeypatch, ppo_core, "policy_loss", lambda out, *a, **k: calls.append({n: float(v) for n, v in out[1].items()}))
    return calls


def test_gradient_checkpointing_recomputes_in_train_mode_with_dropout_off(tmp_path, trained, monkeypatch):
    """Checkpointing runs only in train mode; dropout is zeroed, so the first mini-batch still has ratio 1."""
    import transformers.modeling_utils as hf_modeling

    calls = first_minibatch_stats(monkeypatch)
    recomputed: list[int] = []
    spy(monkeypatch, hf_modeling, "checkpoint", lambda out, *a, **k: recomputed.append(1))
    args = ppo_args(tmp_path / "ppo-gc", trained, "policy.name_or_path=demo://tiny-opt", "value_init=policy",
                    "training.max_steps=2", "ppo.num_ppo_epochs=1", "ppo.num_mini_batches=2",
                    "training.learning_rate=1e-3", "training.gradient_checkpointing=true")
    assert run_cli(args) == 0
    assert recomputed, "no layer was checkpointed"
    for step in range(2):
        assert calls[step * 2]["ratio_mean"] == pytest.approx(1.0, abs=1e-6), (step, calls[step * 2])


def test_bf16_precision_scores_and_updates_under_the_same_autocast(tmp_path, trained, monkeypatch):
    """training.precision=bf16 (CPU autocast here): the policy, the reference and the updates all run in bf16, so
    at step 1 (reference = policy) the KL is 0 and the first mini-batch's ratio 1; a reference scored in fp32
    beside a bf16 policy would show a KL of ~1e-2 before any update."""
    import accelerate

    from kuberlhf.rlhf.loop import PpoLoop

    calls = first_minibatch_stats(monkeypatch)
    precisions: list[str] = []
    spy(monkeypatch, accelerate.Accelerator, "__init__", lambda out, self, *a, **k: precisions.append(self.mixed_precision))
    batches: list = []
    spy(monkeypatch, PpoLoop, "score", lambda batch, self, samples: batches.append(batch))
    args = ppo_args(tmp_path / "ppo-bf16", trained, "training.max_steps=2", "ppo.num_ppo_epochs=1",
                    "ppo.num_mini_batches=2", "training.precision=bf16")
    assert run_cli(args) == 0
    assert precisions == ["bf16"]
    assert batches[0].kl.abs().max().item() < 1e-6
    for step in range(2):
        assert calls[step * 2]["ratio_mean"] == pytest.approx(1.0, abs=1e-6), (step, calls[step * 2])


def test_fp16_without_deepspeed_is_refused_naming_the_key(tmp_path, trained):
    code, err = run_cli(ppo_args(tmp_path / "fp16", trained, "training.precision=fp16"), capture=True)
    assert code == 2 and "'training.precision': fp16 needs training.deepspeed" in err, err


def test_a_tempered_run_scores_what_it_sampled(tmp_path, trained, monkeypatch):
    """With rollout.temperature=0.5 the old log-probs are of softmax(logits / 0.5), the sampling distribution."""
    from transformers import AutoModelForCausalLM

    from kuberlhf.rlhf.loop import PpoLoop

    seen = []
    spy(monkeypatch, PpoLoop, "score", lambda batch, self, samples: seen.append(batch))
    out = tmp_path / "ppo-t"
    assert run_cli(ppo_args(out, trained, "rollout.temperature=0.5", "training.max_steps=1")) == 0
    batch = seen[0]
    samples, mask = batch.samples, batch.samples.mask.bool()
    policy = AutoModelForCausalLM.from_pretrained(trained / "sft").eval()  # the weights that sampled step 1
    with torch.no_grad():
        pos = (samples.attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = policy(input_ids=samples.input_ids, attention_mask=samples.attention_mask, position_ids=pos).logits
    logits = logits[:, samples.start - 1 : -1].float() / 0.5
    expected = torch.log_softmax(logits, -1).gather(-1, samples.input_ids[:, samples.start:, None]).squeeze(-1)
    assert torch.allclose(batch.logprobs[mask], expected[mask], atol=1e-4)
    assert torch.allclose(batch.ref_logprobs[mask], expected[mask], atol=1e-4)  # the reference too: KL 0 at step 1


def test_long_prompts_and_reward_texts_are_cut_from_the_left_and_counted(tmp_path, trained):
    out = tmp_path / "ppo-cut"
    assert run_cli(ppo_args(out, trained, "rollout.max_prompt_length=8", "rollout.reward_max_length=12",
                            "training.max_steps=1")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prompts_truncated"] == 16 and metrics["reward_texts_truncated"] == 16
    default = tmp_path / "ppo-whole"
    assert run_cli(ppo_args(default, trained, "training.max_steps=1")) == 0
    metrics = json.loads((default / "metrics.json").read_text())
    assert metrics["prompts_truncated"] == 0 and metrics["reward_texts_truncated"] == 0


def test_forward_batch_size_bounds_the_scoring_pass(tmp_path, trained, monkeypatch):
    """rollout.batch_size=16 scored 4 rows at a time by the policy, the reference, the value and reward models."""
    from transformers import DebertaV2ForSequenceClassification

    from kuberlhf.models import generation
    from kuberlhf.rlhf.value import ValueModel

    scoring: dict[str, list[int]] = {"logprobs": [], "value": [], "reward": []}

    def rows(key):
        def record(result, *args, **kwargs):
            if not torch.is_grad_enabled():  # the scoring pass, not the update's forward
                ids = kwargs.get("input_ids", args[1] if len(args) > 1 else None)
                scoring[key].append(ids.shape[0])
        return record

    spy(monkeypatch, generation, "sequence_logprobs", lambda r, model, ids, *a, **k: rows("logprobs")(r, None, ids))
    spy(monkeypatch, ValueModel, "forward", rows("value"))
    spy(monkeypatch, DebertaV2ForSequenceClassification, "forward", rows("reward"))
    out = tmp_path / "ppo-fb"
    assert run_cli(ppo_args(out, trained, "rollout.forward_batch_size=4", "ppo.num_mini_batches=2",
                            "training.max_steps=1", "data.eval=null")) == 0
    assert scoring["logprobs"] == [4] * 8  # policy and reference, 16 rows each
    assert scoring["value"] == [4] * 4 and scoring["reward"] == [4] * 4


NAN_ON_RANK_1 = """
import os, sys
import torch
from kuberlhf.rlhf import rollout
real, calls = rollout.reward_scores, []
def poisoned(*args, **kwargs):
    calls.append(1)
    scores = real(*args, **kwargs)
    return scores * float("nan") if os.environ["RANK"] == "1" and len(calls) == 2 else scores
rollout.reward_scores = poisoned
from kuberlhf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_nan_on_one_of_two_processes_stops_both_at_once(tmp_path, trained):
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    out = tmp_path / "ppo-nan"
    cmd = [str(REPO / ".venv/bin/python"), "-m", "torch.distributed.run", "--nproc_per_node=2", str(script),
           *map(str, ppo_args(out, trained, "training.max_steps=6", "training.save_steps=1"))]
    started = time.monotonic()
    proc = run(cmd, timeout=300)
    elapsed = time.monotonic() - started
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    # each process reports it (the one without a NaN too) and exits 2
    assert text.count("kuberlhf ppo: error: stopping at step 2: non-finite reward") == 2, text[-3000:]
    assert "on process 1 of 2" in text and "exitcode  : 2" in text
    assert elapsed < 240, f"the processes waited on each other for {elapsed:.0f} s"
    assert not (out / "manifest.json").exists()
