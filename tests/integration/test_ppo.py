"""The PPO stage on tiny models: training, resume, guards, LoRA, torchrun."""

from __future__ import annotations

import json
import math

import pytest
from helpers import REPO, cli_command, run, run_cli, stage_command, stop_with_sigterm, torchrun_command
from test_distributed import _kill_after_first_checkpoint


def ppo_args(out, trained, *extra):
    return [
        "ppo",
        "--config",
        str(REPO / "configs/ppo/demo.yaml"),
        f"output_dir={out}",
        f"policy.name_or_path={trained / 'sft'}",
        f"reward_model.name_or_path={trained / 'reward'}",
        "data.eval=demo://prompts?n=32&split=test",
        "rollout.batch_size=16",
        "training.max_steps=4",
        "training.logging_steps=1",
        *extra,
    ]


def test_ppo_trains_and_reports_gold_scores(tmp_path, trained):
    out = tmp_path / "ppo"
    assert run_cli(ppo_args(out, trained)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("gold_score_before", "gold_score_after", "kl", "reward", "samples_per_second", "generation_time_share"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["steps"] == 4 and metrics["eval_prompts"] == 32 and metrics["stopped_early"] == ""
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log] == [1, 2, 3, 4]
    assert all(0 < h["generation_share"] < 1 and h["value_loss"] >= 0 for h in log)
    from safetensors.torch import load_file

    before, after = load_file(str(trained / "sft/model.safetensors")), load_file(str(out / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before), "the policy did not change"


def test_value_model_from_a_reward_model_with_another_tokenizer_is_refused(tmp_path, trained):
    code, err = run_cli([*ppo_args(tmp_path / "ppo", trained), "value_init=reward"], capture=True)
    assert code == 2 and "value_init" in err and "tokenizer" in err


def test_killed_ppo_run_resumes_exactly(tmp_path, trained):
    """An uninterrupted run and a run killed after step 3 and resumed log the same steps 1-6.

    Equal rewards and KL after the resume mean the policy, value model, optimizers, KL
    controller, RNG and prompt position all came back from the checkpoint.
    """
    common = ["training.save_steps=3", "training.lr_scheduler_type=constant", "ppo.adaptive_kl=true",
              "ppo.kl_target=0.5", "ppo.kl_horizon=100"]
    straight = tmp_path / "straight"
    assert run_cli([*ppo_args(straight, trained, *common), "training.max_steps=6"]) == 0
    resumed = tmp_path / "resumed"
    _kill_after_first_checkpoint(
        cli_command(*ppo_args(resumed, trained, *common), "training.max_steps=500"),
        lambda: (resumed / "checkpoints/checkpoint-3/manifest.json").exists(),
    )
    assert not (resumed / "metrics.json").exists()
    proc = run(cli_command(*ppo_args(resumed, trained, *common), "training.max_steps=6"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 3 and metrics["steps"] == 6
    a = [json.loads(x) for x in (straight / "train_log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b, strict=True):
        for key in ("reward", "kl", "kl_coef", "policy_loss", "value_loss"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (x["step"], key)
    assert a[-1]["kl_coef"] != 0.2  # the adaptive controller moved, and the resume carried it on


def test_nan_reward_stops_cleanly_and_keeps_the_last_checkpoint(tmp_path, trained, monkeypatch):
    import torch

    from kuberlhf.artifacts import storage
    from kuberlhf.rlhf import rollout

    real, calls = rollout.reward_scores, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        scores = real(*args, **kwargs)
        return scores * float("nan") if len(calls) == 3 else scores

    monkeypatch.setattr(rollout, "reward_scores", poisoned)
    out = tmp_path / "ppo"
    code, err = run_cli(ppo_args(out, trained, "training.save_steps=2", "training.max_steps=10"), capture=True)
    assert code == 2
    assert "stopping at step 3: non-finite reward" in err and "checkpoint-2" in err
    assert not (out / "manifest.json").exists()
    storage.verify_local(out / "checkpoints/checkpoint-2")
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(out / "checkpoints/checkpoint-2/policy")
    assert all(torch.isfinite(p).all() for p in policy.parameters())


def test_kl_bound_stops_early(tmp_path, trained):
    out = tmp_path / "ppo"
    assert run_cli(ppo_args(out, trained, "ppo.max_kl=1e-6", "training.learning_rate=0.01", "training.max_steps=20")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "exceeded ppo.max_kl" in metrics["stopped_early"] and metrics["steps"] < 20


def test_ppo_lora_uses_the_disabled_adapter_as_reference(tmp_path, trained):
    out = tmp_path / "ppo-lora"
    assert run_cli(ppo_args(out, trained, "finetune=lora", "lora.r=4", "training.max_steps=2")) == 0
    assert (out / "adapter/adapter_config.json").is_file() and not (out / "adapter_config.json").exists()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


def test_ppo_under_torchrun(tmp_path, trained):
    out = tmp_path / "ppo-ddp"
    proc = run(torchrun_command(2, *ppo_args(out, trained, "training.max_steps=2")), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log] == [1, 2]
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


def test_direct_rlaif_ppo_rewards_the_judges_answers_and_needs_no_reward_model(tmp_path, trained, monkeypatch):
    """judge.name_or_path: each rollout's reward is the judge's mean log-odds of yes to the constitution's
    questions (the tiny demo tokenizer answers A/B), no reward model is read, the value model starts from the
    policy; a constitution without questions and value_init=reward are refused."""
    from kuberlhf.eval import constitution

    constitution_file = tmp_path / "c.yaml"
    constitution_file.write_text((REPO / "configs/constitutions/demo.yaml").read_text() + "answers: [A, B]\n")
    seen, real = [], constitution.point_scores
    monkeypatch.setattr(constitution, "point_scores",
                        lambda ask, c, items: seen.append(len(items)) or real(ask, c, items))
    judge = [f"judge.name_or_path={trained / 'sft'}", f"judge.constitution={constitution_file}",
             f"reward_model.name_or_path={tmp_path / 'no-reward-model'}"]
    out = tmp_path / "ppo"
    assert run_cli(ppo_args(out, trained, *judge)) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert seen[: len(log)] == [16] * len(log)  # a rollout batch of 16 responses each step
    assert all(math.isfinite(r["reward"]) for r in log)
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["gold_score_after"]) and metrics["judge"] == "gold"
    bare = tmp_path / "bare.yaml"
    bare.write_text("principles: ['Which is better?']\n")
    assert run_cli(ppo_args(tmp_path / "bare", trained, *judge[:2], f"judge.constitution={bare}")) == 2
    assert run_cli(ppo_args(tmp_path / "vr", trained, *judge, "value_init=reward")) == 2


def test_a_planted_pickle_in_a_checkpoint_is_refused_and_runs_no_code(tmp_path, trained):
    """Whoever can write the bucket can rewrite a checkpoint and its manifest: the resume loads its
    ``state.pt`` without unpickling objects, so a planted pickle is refused and its code never runs."""
    import torch

    from kuberlhf.artifacts import storage

    out, marker = tmp_path / "ppo", tmp_path / "pwned"
    assert run_cli(ppo_args(out, trained, "training.save_steps=2", "training.max_steps=2")) == 0
    (out / storage.MANIFEST_NAME).unlink()  # as if killed during its publish: the rerun resumes

    class Planted:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    ckpt = out / "checkpoints/checkpoint-2"
    state = torch.load(ckpt / "state.pt", weights_only=True)
    torch.save({**state, "planted": Planted()}, ckpt / "state.pt")
    storage.write_manifest(ckpt)  # a consistent manifest: integrity is not authorship
    code, err = run_cli(ppo_args(out, trained, "training.save_steps=2", "training.max_steps=3"), capture=True)
    assert not marker.exists(), "loading the checkpoint ran the planted code"
    assert code == 2 and "state.pt" in err and "refusing to load" in err, err[-2000:]



@pytest.mark.faults  # a real signal to a process and to torchrun; the suite's own test follows
@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_stops_ppo_with_a_sealed_checkpoint_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path, trained,
                                                                                               nproc):
    """SIGTERM (a pod deleted or preempted) mid-run: every process stops at the same step, seals a checkpoint
    of it, and the run exits 143, retryable; the same command then resumes from it, no step redone, and
    ends as a run that was never stopped. Under torchrun the signal goes to the launcher, as in a pod."""

    def command(out, *extra):
        return stage_command(nproc, *ppo_args(out, trained, "training.save_steps=1000",
                                              "training.lr_scheduler_type=constant", *extra))

    stopped = tmp_path / "stopped"
    n = stop_with_sigterm(command(stopped, "training.max_steps=500"), stopped, lambda text: "ppo step=2 " in text)
    resumed = run(command(stopped, f"training.max_steps={n + 2}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = tmp_path / "straight"
    assert run(command(straight, f"training.max_steps={n + 2}")).returncode == 0
    metrics = json.loads((stopped / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == n and metrics["steps"] == n + 2
    a = [json.loads(x) for x in (straight / "train_log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (stopped / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in b] == list(range(1, n + 3))
    for x, y in zip(a, b, strict=True):
        for key in ("reward", "kl", "kl_coef", "policy_loss", "value_loss"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (x["step"], key)


def test_sigterm_mid_step_stops_ppo_after_it_with_a_sealed_checkpoint_and_the_rerun_ends_as_an_uninterrupted_run(
        tmp_path, trained, monkeypatch, sigterm_kept_from_pytest):
    """SIGTERM in the middle of step 3's update (sent from inside, in this process): the loop finishes the
    step, seals checkpoint-3 and exits 143; the rerun resumes from it, no step redone, and ends as a run that
    was never stopped."""
    import os
    import signal

    from kuberlhf.rlhf import loop

    real = loop.PpoLoop.update

    def update(self, batch):
        if self.step == 2:  # the update of step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, batch)

    def argv(out, steps):
        return ppo_args(out, trained, "training.save_steps=1000", "training.lr_scheduler_type=constant",
                        f"training.max_steps={steps}")

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(loop.PpoLoop, "update", update)
        code, err = run_cli(argv(stopped, 500), capture=True)
    assert code == 143 and "stopped by SIGTERM at step 3: checkpoint-3 is sealed" in err, err[-3000:]
    assert not sigterm_kept_from_pytest  # the stage took it
    assert run_cli(argv(stopped, 5)) == 0
    straight = tmp_path / "straight"
    assert run_cli(argv(straight, 5)) == 0
    metrics = json.loads((stopped / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 3 and metrics["steps"] == 5
    a = [json.loads(x) for x in (straight / "train_log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (stopped / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in b] == [1, 2, 3, 4, 5]
    for x, y in zip(a, b, strict=True):
        for key in ("reward", "kl", "kl_coef", "policy_loss", "value_loss"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (x["step"], key)
