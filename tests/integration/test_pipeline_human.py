"""The whole rlhf-human pipeline on the built-in task, run locally by kfp.local against a real Label Studio,
with a labeler (the demo's gold judge, through Label Studio's API) ranking the tasks as they arrive."""

from __future__ import annotations

import html
import json
import re
import threading
import uuid
from pathlib import Path

import pytest
from helpers import cli_command, subprocess_env

pytestmark = pytest.mark.slow


def _labeler(client, title: str, stop: threading.Event, ranked: list[int]) -> None:
    from kuberlhf.demo.task import gold_score

    while not stop.is_set():
        project = client.find_project(title)
        if project is not None:
            for task in client.tasks(project["id"]):
                if task.get("total_annotations"):
                    continue
                prompt, items = task["data"]["prompt"], task["data"]["items"]
                order = sorted(range(len(items)),
                               key=lambda i: (-gold_score(prompt, html.unescape(items[i]["body"])), i))
                client.annotate(task["id"], [{"type": "ranker", "from_name": "rank", "to_name": "candidates",
                                              "value": {"ranker": {"rank": [f"c{i}" for i in order]}}}])
                ranked.append(task["id"])
        stop.wait(1.0)


def test_rlhf_human_pipeline_runs_locally_with_rankings_from_label_studio(tmp_path, label_studio):
    import subprocess

    from kuberlhf.feedback.labelstudio import Client

    title = f"human-{uuid.uuid4().hex[:8]}"
    stop, ranked = threading.Event(), []
    labeler = threading.Thread(target=_labeler, args=(Client(label_studio.url, label_studio.token), title, stop,
                                                      ranked), daemon=True)
    labeler.start()
    root = tmp_path / "pipeline"
    try:
        proc = subprocess.run(cli_command(
            "pipeline", "run", "--local", "--pipeline", "rlhf-human", "--root", root,
            "--param", 'sft_overrides=["training.num_train_epochs=2"]',
            "--param", 'generate_overrides=["data.train=demo://prompts?n=96"]',
            "--param", f"feedback_project={title}", "--param", "feedback_poll_s=2",
            "--param", "feedback_timeout_s=600",
            "--param", 'reward_overrides=["training.max_steps=80", "data.group_by_prompt=true", '
                       '"training.per_device_train_batch_size=4"]',
            "--param", 'ppo_overrides=["training.max_steps=8", "training.save_steps=8", "rollout.batch_size=32"]',
            "--param", "eval_prompts=demo://prompts?n=64&split=test",
            "--param", "report_samples=2",
        ), env=subprocess_env(**label_studio.env()), capture_output=True, text=True, timeout=900)
    finally:
        stop.set()
        labeler.join(timeout=30)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(ranked) == 96
    run_dir = Path(re.search(r"pipeline rlhf-human finished: (\S+)", proc.stdout).group(1))
    imported = json.loads((run_dir / "feedback-import" / "pairs" / "metrics.json").read_text())
    assert imported["tasks_ranked"] == 96 and imported["eval_pairs"] > 0
    output = json.loads((run_dir / "evaluate" / "executor_output.json").read_text())
    (item,) = output["artifacts"]["metrics"]["artifacts"]
    metrics = item["metadata"]
    assert metrics["reward_accuracy"] > 0.6, metrics  # the reward model learnt the rankers' preferences
    assert re.search(r"SFT \d\.\d{3} -> PPO \d\.\d{3} \(KL ", proc.stdout)
