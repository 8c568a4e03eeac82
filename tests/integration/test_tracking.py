"""Tracking everywhere: PPO reports to TensorBoard and W&B like the Trainer stages, and every stage's tracker
logs are published inside its artifact (logs/), listed in its manifest."""

from __future__ import annotations

import json

from helpers import cli_command, run, run_cli, sft_args
from test_ppo import ppo_args


def manifest_paths(out) -> list[str]:
    return [f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]]


def test_sft_publishes_its_tensorboard_events(tmp_path):
    out = tmp_path / "sft"
    assert run_cli(sft_args(out, "training.report_to=[tensorboard]", "training.max_steps=2")) == 0
    events = [p for p in manifest_paths(out) if p.startswith("logs/tensorboard/") and "tfevents" in p]
    assert events, manifest_paths(out)
    assert (out / events[0]).stat().st_size > 0


def test_ppo_reports_to_tensorboard_and_wandb_and_publishes_both(tmp_path, trained, monkeypatch):
    """In a process of its own, as a stage runs: W&B keeps its first settings for the life of a process."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    out = tmp_path / "ppo"
    proc = run(cli_command(*ppo_args(out, trained, "training.report_to=[tensorboard,wandb]", "training.max_steps=2",
                                     "data.eval=null")), WANDB_MODE="offline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = manifest_paths(out)
    assert any(p.startswith("logs/tensorboard/") and "tfevents" in p for p in paths), paths
    assert any(p.startswith("logs/wandb/offline-run-") and p.endswith(".wandb") for p in paths), paths
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars = {}
    for event_dir in {p.rsplit("/", 1)[0] for p in paths if "tfevents" in p}:
        acc = EventAccumulator(str(out / event_dir))
        acc.Reload()
        scalars.update({tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]})
    assert [e.step for e in scalars["train/reward"]] == [1, 2] and "train/kl" in scalars
