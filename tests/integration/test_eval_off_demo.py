"""Evaluation off the demo task: the gold judge only where it applies; elsewhere the reward model judges,
with the final policy's win rate over SFT, and the report says which judge it used."""

from __future__ import annotations

import json

from test_ppo import ppo_args

PLAIN = ["Tell me about the sea.", "What makes a good breakfast?", "Describe a quiet evening.",
         "Why do people keep diaries?", "Name a reason to learn music.", "How do trains run on time?"]


def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question: {p}\n\nAnswer:"}) + "\n" for p in PLAIN))
    return path


def test_the_report_scores_other_prompts_with_the_reward_model(tmp_path, trained):
    from kuberlhf.workflow.report import write_report

    out = tmp_path / "report.html"
    metrics = write_report(str(out), sft_dir=str(trained / "sft"), policy_dir=str(trained / "sft"),
                           reward_dir=str(trained / "reward"), prompts=str(prompts_file(tmp_path)), gold=True)
    assert not [k for k in metrics if k.startswith("gold_")], metrics
    assert {"reward_score_sft", "reward_score_final", "win_rate", "reward_gain"} <= set(metrics)
    assert metrics["eval_prompts"] == len(PLAIN) and 0 <= metrics["win_rate"] <= 1
    page = out.read_text()
    assert "Judge: the trained reward model." in page and "Gold-judge" not in page


def test_the_report_keeps_the_gold_judge_on_the_demo_prompts(tmp_path, trained):
    from kuberlhf.workflow.report import write_report

    metrics = write_report(str(tmp_path / "r.html"), sft_dir=str(trained / "sft"), policy_dir=str(trained / "sft"),
                           reward_dir=str(trained / "reward"), prompts="demo://prompts?n=16&split=test")
    assert metrics["gold_score_sft"] == metrics["gold_score_final"] and metrics["win_rate"] == 0.5
    assert "reward_score_sft" not in metrics


def test_ppo_off_the_demo_reports_reward_model_scores_not_a_silent_gold_zero(tmp_path, trained):
    out = tmp_path / "ppo"
    from helpers import run_cli

    assert run_cli(ppo_args(out, trained, f"data.eval={prompts_file(tmp_path)}", "training.max_steps=1")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judge"] == "reward" and "gold_score_after" not in metrics
    assert isinstance(metrics["reward_score_before"], float) and isinstance(metrics["reward_score_after"], float)


def test_ppo_scores_held_out_prompts_during_training_without_moving_its_rng(tmp_path, trained):
    """eval.every_steps=2: the judge's score at steps 2 and 4 (train_log.jsonl), and the training itself, its
    samples drawn from the same RNG stream, logs the same rewards as a run without it."""
    from helpers import run_cli

    logs = {}
    for name, extra in (("plain", []), ("watched", ["eval.every_steps=2", "eval.prompts=8"])):
        out = tmp_path / name
        assert run_cli(ppo_args(out, trained, "training.max_steps=4", *extra)) == 0
        logs[name] = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [("eval_score" in h) for h in logs["watched"]] == [False, True, False, True]
    assert all(0 <= h["eval_score"] <= 1 for h in logs["watched"] if "eval_score" in h)  # the gold judge's scale
    assert [h["reward"] for h in logs["plain"]] == [h["reward"] for h in logs["watched"]]
