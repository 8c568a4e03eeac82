"""What a finished artifact carries besides its weights: the model card, ``metrics.json`` and
``train_log.jsonl``; and publishing the staged artifact (manifest last)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from kuberlhf.artifacts import storage
from kuberlhf.artifacts.rundir import RunDir
from kuberlhf.config import to_yaml

log = logging.getLogger(__name__)
TRAIN_LOG = "train_log.jsonl"


def write_train_log(staging: Path, history: list[dict]) -> None:
    """One JSON record per logged step (``train_log.jsonl``): the curves of the evaluation report."""
    staging.mkdir(parents=True, exist_ok=True)
    (staging / TRAIN_LOG).write_text("".join(json.dumps(h) + "\n" for h in history))


def model_card(stage: str, cfg: Any, metrics: dict, base_model: str) -> str:
    """README.md of an artifact: Hugging Face card metadata, the metrics and the full config."""
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in metrics.items() if not isinstance(v, dict | list))
    return (
        f"---\nlibrary_name: transformers\ntags:\n- kuberlhf\n- {stage}\nbase_model: {base_model}\n---\n\n"
        f"# kuberlhf {stage} model\n\nTrained by `kuberlhf {stage}` from `{base_model}`.\n\n"
        f"## Metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        f"## Config\n\n```yaml\n{to_yaml(cfg)}```\n"
    )


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def publish(run: RunDir, staging: Path, metrics: dict, card: str) -> dict:
    """Write the card and ``metrics.json`` into the staged artifact, then publish it (manifest last)."""
    (staging / "README.md").write_text(card)
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    manifest = storage.publish_dir(staging, run.output_dir)
    shutil.rmtree(staging, ignore_errors=True)
    log.info("published %d files (%d bytes) to %s", len(manifest["files"]), manifest["total_bytes"], run.output_dir)
    return manifest
