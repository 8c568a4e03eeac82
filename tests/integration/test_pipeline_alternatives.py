"""The rest and rlhf-rlaif pipelines on the built-in task, run locally by kfp.local on tiny settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import cli_command, run

pytestmark = pytest.mark.slow

TINY_SFT = 'sft_overrides=["training.max_steps=60", "data.train=demo://sft?n=480"]'
TINY_REWARD = 'reward_overrides=["training.max_steps=40", "training.per_device_train_batch_size=8"]'


def _metrics(step_dir: Path) -> dict:
    (item,) = json.loads((step_dir / "executor_output.json").read_text())["artifacts"]["metrics"]["artifacts"]
    return item["metadata"]


def _run_dir(pipeline: str, stdout: str) -> Path:
    return Path(re.search(rf"pipeline {pipeline} finished: (\S+)", stdout).group(1))


def test_rest_pipeline_unrolls_grow_and_improve_steps_and_reports(tmp_path):
    root = tmp_path / "pipeline"
    proc = run(cli_command(
        "pipeline", "run", "--local", "--pipeline", "rest", "--root", root,
        "--param", "iterations=2", "--param", "improve_steps=1",
        "--param", TINY_SFT, "--param", TINY_REWARD,
        "--param", 'rest_overrides=["data.train=demo://prompts?n=24", "sampling.num_candidates=3", '
                   '"improve.thresholds=[0.5]", "training.num_train_epochs=1", '
                   '"gold_prompts=demo://prompts?n=16&split=test"]',
        "--param", "eval_prompts=demo://prompts?n=32&split=test", "--param", "report_samples=2",
    ), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"SFT \d\.\d{3} -> REST \d\.\d{3}", proc.stdout), proc.stdout[-1500:]
    run_dir = _run_dir("rest", proc.stdout)
    steps = sorted(p.name for p in run_dir.iterdir())
    assert [s for s in steps if s.startswith("rest")] == ["rest-grow", "rest-grow-2", "rest-improve", "rest-improve-2"]
    # the Grow sets are artifacts of their own; the last Improve's policy carries the history of both iterations
    grow = run_dir / "rest-grow-2" / "samples"
    assert sum(1 for _ in (grow / "samples.jsonl").open()) == 24 * 3
    assert len((grow / "history.jsonl").read_text().splitlines()) == 1
    log = [json.loads(line) for line in (run_dir / "rest-improve-2" / "model" / "train_log.jsonl").open()]
    assert [(r["iteration"], r["improve_step"]) for r in log] == [(1, 1), (2, 1)]
    assert all(r["kept"] == 36 for r in log)
    metrics = _metrics(run_dir / "evaluate")
    assert {"gold_score_sft", "gold_score_final", "kl"} <= set(metrics)
    page = Path(proc.stdout.strip().splitlines()[-1].removeprefix("report: ")).read_text()
    assert page.count('src="data:image/png;base64,') == 4  # gold scores, SFT loss, reward accuracy, ReST steps


def test_rlhf_rlaif_pipeline_labels_with_the_judge_and_reports_the_labels(tmp_path):
    root = tmp_path / "pipeline"
    proc = run(cli_command(
        "pipeline", "run", "--local", "--pipeline", "rlhf-rlaif", "--root", root,
        "--param", TINY_SFT, "--param", TINY_REWARD,
        "--param", 'generate_overrides=["data.train=demo://prompts?n=16", "sampling.num_candidates=3"]',
        "--param", 'ppo_overrides=["training.max_steps=4", "training.save_steps=4", "rollout.batch_size=16"]',
        "--param", "eval_prompts=demo://prompts?n=32&split=test", "--param", "report_samples=2",
    ), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = _run_dir("rlhf-rlaif", proc.stdout)
    labels = json.loads((run_dir / "rlaif" / "pairs" / "metrics.json").read_text())
    assert labels["pairs_judged"] == 16 * 3 and labels["judge"] == str(run_dir / "merge" / "merged")
    assert labels["constitution"] == "cheerful-on-topic"
    metrics = _metrics(run_dir / "evaluate")
    assert metrics["ai_labels_pairs_judged"] == 48 and metrics["ai_labels_flip_share"] == labels["flip_share"]
    # (the agreement with the gold judge needs pairs it tells apart: a briefly trained policy may write none)
    assert metrics.get("ai_labels_gold_agreement") == labels.get("gold_agreement")
    page = Path(proc.stdout.strip().splitlines()[-1].removeprefix("report: ")).read_text()
    # gold scores, SFT loss, reward accuracy, the labels' confidence histogram, PPO reward/KL
    assert page.count('src="data:image/png;base64,') == 5
    assert "ai_labels_flip_share" in page
