"""A handful of the fault trials of ``make faults`` (tests/faults.py): kill -9 at each of the four moments
and rerun, one object-store outage during a run (these two in ``make faults`` only, beside its 30 kill and
10 outage trials), and every kind of corruption, local and on S3 (in the suite). (PPO's kill trials, which
also check it ends where an uninterrupted run ends, are in ``make faults``; its exact resume is
``tests/integration/test_ppo.py::test_killed_ppo_run_resumes_exactly``.)"""

from __future__ import annotations

import random

import faults
import pytest


@pytest.mark.faults
def test_runs_killed_at_the_dangerous_moments_resume_and_verify(tmp_path, trained, monkeypatch):
    monkeypatch.setenv("KUBERLHF_CACHE", str(tmp_path / "cache"))
    plan = [("sft", "during-checkpoint-write"), ("dpo", "during-publish"), ("reward", "between-checkpoints"),
            ("rloo", "before-first-checkpoint")]
    tally = faults.kill_trials(plan, tmp_path, trained, random.Random(0))
    assert tally.trials == 4 and (tally.lost, tally.corrupt, tally.diverged) == (0, 0, 0), tally.notes
    assert tally.resumed >= 3, tally  # the failpoint kills land after a seal: their reruns resume


@pytest.mark.faults
def test_a_run_through_an_outage_rides_it_out_or_exits_200_and_a_rerun_finishes(tmp_path):
    tally = faults.outage_trials(1, tmp_path, random.Random(1))
    assert tally.trials == 1 and (tally.lost, tally.corrupt) == (0, 0), tally.notes


def test_every_kind_of_corruption_is_refused_naming_the_file(tmp_path, trained):
    tally = faults.corruption_trials(tmp_path, trained)
    assert tally.trials == 2 * len(faults.DAMAGE) and tally.lost == 0, tally.notes
