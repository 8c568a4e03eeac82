"""SIGTERM in a Trainer stage (a pod deleted, preempted or drained): stop at the next step, seal it, exit 143.

The PPO loop's own test is in test_ppo.py; this one covers the Trainer template (sft, reward, dpo,
rloo, grpo and ReST's Improve step share it), with one process and under kuberlhf.torchrun.
"""

from __future__ import annotations

import json

import pytest
from helpers import run, run_cli, sft_args, stage_command, stop_with_sigterm


# a real SIGTERM to a process and to torchrun: make faults (with tests/sigterm_trials.py); the suite's own
# SIGTERM tests below send it from inside the stage, at a step or part they choose
@pytest.mark.faults
@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_stops_sft_with_a_sealed_checkpoint_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path, nproc):
    def command(out, *extra):
        return stage_command(nproc, *sft_args(out, "training.save_steps=1000", "training.logging_steps=1",
                                              "data.train=demo://sft?n=2000", *extra))

    stopped = tmp_path / "stopped"
    n = stop_with_sigterm(command(stopped, "training.max_steps=400"), stopped, lambda text: text.count("'loss'") >= 2)
    resumed = run(command(stopped, f"training.max_steps={n + 2}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = tmp_path / "straight"
    assert run(command(straight, f"training.max_steps={n + 2}")).returncode == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, stopped))
    assert b["resumed_from_step"] == n and b["global_step"] == a["global_step"] == n + 2
    assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4, abs=1e-6)  # the same weights at the end



def test_a_grace_period_too_short_for_a_checkpoint_stops_without_starting_one(tmp_path, monkeypatch,
                                                                            sigterm_kept_from_pytest):
    """KUBERLHF_GRACE_PERIOD_S (the pod's terminationGracePeriodSeconds) of 1 s cannot fit a save that took
    anything at all (with its margin of 5 s): the stage exits 143 at once, its periodic checkpoints intact and
    none half-written, and the rerun resumes from the newest of them."""
    import os
    import signal

    from helpers import sealed_steps

    from kuberlhf.stages import trainer

    real = trainer.stop_callback

    def signalled_at_step_5(stop):
        callback = real(stop)

        class At5(type(callback)):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 5:  # checkpoint-2 and -4 saved: how long a save takes is known
                    os.kill(os.getpid(), signal.SIGTERM)
                return super().on_step_end(args, state, control, **kwargs)

        return At5()

    out = tmp_path / "sft"
    argv = sft_args(out, "training.save_steps=2", "data.train=demo://sft?n=2000", "training.max_steps=400")
    monkeypatch.setenv("KUBERLHF_GRACE_PERIOD_S", "1")
    with monkeypatch.context() as patch:
        patch.setattr(trainer, "stop_callback", signalled_at_step_5)
        code, err = run_cli(argv, capture=True)
    assert code == 143 and "stopped by SIGTERM at step 5 without a checkpoint" in err, err[-3000:]
    assert not sigterm_kept_from_pytest  # the stage took it
    assert sealed_steps(out) == [2, 4]
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert run_cli([*argv[:-1], "training.max_steps=5"]) == 0
    assert json.loads((out / "metrics.json").read_text())["resumed_from_step"] == 4


# ------------------------------------------------------------------ the stages that work in sealed parts


def test_sigterm_stops_generate_after_the_part_in_hand_and_the_rerun_writes_what_a_whole_run_writes(
        tmp_path, trained, monkeypatch, sigterm_kept_from_pytest):
    from helpers import sealed_steps
    from test_generate import generate_args, rows_of

    from kuberlhf.stages import generate

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(generate, "generate_part", sigterm_in_part(generate.generate_part, 2))
        code, err = run_cli(generate_args(stopped, trained), capture=True)
    assert code == 143 and "stopped by SIGTERM after sealing part 2" in err, err[-3000:]
    assert not sigterm_kept_from_pytest
    assert sealed_steps(stopped) == [1, 2] and not (stopped / "manifest.json").exists()  # the part in hand too
    assert run_cli(generate_args(stopped, trained)) == 0
    assert json.loads((stopped / "metrics.json").read_text())["resumed_prompts"] == 16  # 2 parts of 8
    straight = tmp_path / "straight"
    assert run_cli(generate_args(straight, trained)) == 0
    assert rows_of(stopped) == rows_of(straight)


def sigterm_in_part(real, part):
    """A stand-in for a part's work that gets SIGTERM in the middle of the ``part``-th call (1-based)."""
    import os
    import signal

    calls = []

    def work(*args, **kwargs):
        calls.append(1)
        if len(calls) == part:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    work.calls = calls
    return work


def test_sigterm_stops_rlaif_after_sealing_the_part_in_hand(tmp_path, trained, candidates, monkeypatch,
                                                            sigterm_kept_from_pytest):
    from helpers import sealed_steps
    from test_rlaif import rlaif_args

    from kuberlhf.stages import rlaif

    out = tmp_path / "rlaif"
    with monkeypatch.context() as patch:
        patch.setattr(rlaif, "_label_part", sigterm_in_part(rlaif._label_part, 2))
        assert run_cli(rlaif_args(out, trained, candidates)) == 143
    assert not sigterm_kept_from_pytest  # the stage took it
    assert sealed_steps(out) == [1, 2] and not (out / "manifest.json").exists()
    assert run_cli(rlaif_args(out, trained, candidates)) == 0
    assert json.loads((out / "metrics.json").read_text())["prompts_judged_now"] == 2  # parts 1 and 2 kept


def test_sigterm_stops_a_rest_grow_after_sealing_the_part_in_hand(tmp_path, trained, monkeypatch,
                                                                  sigterm_kept_from_pytest):
    from helpers import sealed_steps
    from test_rest import rest_args

    from kuberlhf.stages import generate

    out = tmp_path / "rest"
    argv = rest_args(out, trained, "iterations=1", "save_every=4")
    with monkeypatch.context() as patch:
        patch.setattr(generate, "generate_part", sigterm_in_part(generate.generate_part, 2))
        assert run_cli(argv) == 143
    assert not sigterm_kept_from_pytest
    assert sealed_steps(out / "checkpoints/grow-1") == [1, 2] and not (out / "manifest.json").exists()
    resumed = sigterm_in_part(generate.generate_part, 0)
    with monkeypatch.context() as patch:
        patch.setattr(generate, "generate_part", resumed)
        assert run_cli(argv) == 0
    assert len(resumed.calls) == 6 - 2  # 24 prompts in parts of 4: the two sealed ones not sampled again


def test_sigterm_after_the_last_step_lets_the_stage_finish_publishing(tmp_path, monkeypatch, sigterm_kept_from_pytest):
    """Dying mid-publish would leave the rerun to redo every step since the last checkpoint: the stage takes the
    signal and finishes the artifact instead."""
    import os
    import signal

    from kuberlhf.artifacts import cards

    real = cards.publish

    def publish(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(cards, "publish", publish)
    out = tmp_path / "sft"
    assert run_cli(sft_args(out, "training.max_steps=2")) == 0
    assert not sigterm_kept_from_pytest  # the stage took it
    assert (out / "manifest.json").is_file()
