"""The whole rlhf-ppo pipeline on the built-in task, run locally by kfp.local as `make demo` runs it.

Shorter than the demo (SFT 4 epochs, PPO 40 steps) but long enough that PPO beats the SFT
policy on the gold judge.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import cli_command, run

pytestmark = pytest.mark.slow


def test_rlhf_ppo_pipeline_runs_locally_and_reports(tmp_path):
    root = tmp_path / "pipeline"
    proc = run(cli_command(
        "pipeline", "run", "--local", "--root", root,
        "--param", 'sft_overrides=["training.num_train_epochs=4"]',
        "--param", 'ppo_overrides=["training.max_steps=40", "training.save_steps=20"]',
        "--param", "report_samples=4",
    ), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("report: "), lines[-8:]
    report = Path(lines[-1].removeprefix("report: "))
    assert report == root.resolve() / "rlhf-ppo-report.html" and report.is_file()
    assert re.search(r"SFT \d\.\d{3} -> PPO \d\.\d{3} \(KL ", proc.stdout)

    run_dir = Path(re.search(r"pipeline rlhf-ppo finished: (\S+)", proc.stdout).group(1))
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "data", "data-2", "data-3", "evaluate", "merge", "ppo", "reward", "sft"]
    # each training step read its data step's validated JSON Lines: the configs' demo data, row for row
    for step, kind, rows, eval_rows in (("data", "sft", 3000, 300), ("data-2", "preference", 2000, 500),
                                        ("data-3", "prompt", 2000, 200)):
        (item,) = json.loads((run_dir / step / "executor_output.json").read_text())["artifacts"]["dataset"]["artifacts"]
        meta = item["metadata"]
        assert (meta["kind"], meta["rows"], meta["rows_skipped"], meta["eval_rows"]) == (kind, rows, 0, eval_rows)
        assert sum(1 for _ in (run_dir / step / "dataset" / "train.jsonl").open()) == rows
        assert (run_dir / step / "dataset" / "eval.jsonl").is_file()
    for stage, step in (("sft", "data"), ("reward", "data-2"), ("ppo", "data-3")):
        wired = f"{stage} reads its data from the data step's dataset: data.format=jsonl data.train={run_dir / step}"
        assert wired in proc.stdout + proc.stderr, stage
    metrics = _metrics(run_dir / "evaluate")
    assert metrics["gold_score_final"] > metrics["gold_score_sft"], metrics
    assert metrics["reward_accuracy"] > 0.7 and metrics["kl"] > 0, metrics

    page = report.read_text()
    assert page.count('src="data:image/png;base64,') == 4  # gold scores, SFT loss, reward accuracy, PPO reward/KL
    assert page.count("<tr><td><pre>Question:") == 4  # the samples, SFT and PPO side by side
    assert f"SFT <b>{metrics['gold_score_sft']:.3f}</b> &rarr; PPO <b>{metrics['gold_score_final']:.3f}</b>" in page

    from kuberlhf.artifacts import storage

    for step, name in (("sft", "model"), ("merge", "merged"), ("reward", "model"), ("ppo", "model")):
        listed = {f["path"] for f in storage.verify_local(run_dir / step / name)["files"]}
        assert {"model.safetensors", "metrics.json"} <= listed, step
        if step != "merge":
            assert "train_log.jsonl" in listed, step
            assert not (run_dir / step / name / "checkpoints").exists(), step
            assert "mode=local" in (run_dir / step / "job_manifest").read_text()
    sft_log = [json.loads(line) for line in (run_dir / "sft" / "model" / "train_log.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in sft_log) >= 5


def _metrics(step_dir: Path) -> dict:
    output = json.loads((step_dir / "executor_output.json").read_text())
    (item,) = output["artifacts"]["metrics"]["artifacts"]
    return item["metadata"]
