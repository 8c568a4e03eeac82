"""What a finished artifact carries besides its weights: the model card, ``metrics.json`` and
``train_log.jsonl``; and publishing the staged artifact (manifest last)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from kuberlhf.artifacts import storage
from kuberlhf.artifacts.rundir import RunDir
from kuberlhf.config import to_yaml

log = logging.getLogger(__name__)
TRAIN_LOG = "train_log.jsonl"


LOGS = "logs"


def tracker_dirs(work_dir: Path) -> dict[str, Path]:
    """Where a run's trackers write on this machine: TensorBoard events and W&B's (offline) runs, in the
    work dir's reserved ``.logs/`` (not part of the artifact until :func:`collect_logs` copies them in)."""
    return {"tensorboard": work_dir / f".{LOGS}" / "tensorboard",
            "wandb": Path(os.environ.get("WANDB_DIR") or work_dir / f".{LOGS}") / "wandb"}


def collect_logs(work_dir: Path, staging: Path) -> list[str]:
    """Copy the trackers' logs of this run into the staged artifact's ``logs/``: they are published with it
    (an ``s3://`` run and a pipeline step keep them). Returns what was copied."""
    copied = []
    for name, source in tracker_dirs(work_dir).items():
        # W&B: this run's, the newest (WANDB_DIR may hold the runs of other stages)
        runs = [source] if name == "tensorboard" else sorted(
            [*source.glob("offline-run-*"), *source.glob("run-*")], key=lambda p: p.stat().st_mtime)[-1:]
        for run in (r for r in runs if r.is_dir() and any(p.is_file() for p in r.rglob("*"))):
            target = staging / LOGS / name / (run.name if name == "wandb" else "")
            shutil.copytree(run, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.lock", "*.sock"))
            copied.append(f"{LOGS}/{name}/{run.name if name == 'wandb' else ''}".rstrip("/"))
    return copied


def write_train_log(staging: Path, history: list[dict]) -> None:
    """One JSON record per logged step (``train_log.jsonl``): the curves of the evaluation report."""
    staging.mkdir(parents=True, exist_ok=True)
    (staging / TRAIN_LOG).write_text("".join(json.dumps(h) + "\n" for h in history))


def model_card(stage: str, cfg: Any, metrics: dict, base_model: str) -> str:
    """README.md of an artifact: a Hugging Face model card (``huggingface_hub.ModelCard``) with its metadata,
    the metrics (also as model-index results) and the full config.

    ``base_model`` and ``datasets`` are Hub ids only when they are ones (a local path, an ``s3://`` URI
    or a ``demo://`` name is named in the text instead); the config block is what ``kuberlhf merge``
    reads the base model from.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    data = getattr(cfg, "data", None)
    sources = [s for s in (getattr(data, "train", ""), getattr(data, "eval", None) or "") if s]
    datasets = [s.removeprefix("hf://").removeprefix("datasets/") for s in sources if _hub_dataset(s)]
    scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    task, evaluated = _TASKS.get(stage, "text-generation"), sources[-1] if sources else "unknown"
    results = [EvalResult(task_type=task, dataset_type=evaluated, dataset_name=evaluated, metric_type=k, metric_value=v)
               for k, v in scalars.items() if k.startswith(("eval_", "gold_", "kl"))]
    card_data = ModelCardData(
        library_name="transformers", tags=["kuberlhf", stage], pipeline_tag=task,
        base_model=base_model if _hub_model(base_model) else None, datasets=datasets or None,
        model_name=f"kuberlhf-{stage}" if results else None, eval_results=results or None,
    )
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in metrics.items() if not isinstance(v, dict | list))
    text = (
        f"---\n{card_data.to_yaml()}\n---\n\n"
        f"# kuberlhf {stage} model\n\nTrained by `kuberlhf {stage}` from `{base_model}`"
        + (f" on `{'`, `'.join(sources)}`" if sources else "") + ".\n\n"
        f"## Metrics\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        f"## Config\n\n```yaml\n{to_yaml(cfg)}```\n"
    )
    return str(ModelCard(text))


_TASKS = {"reward": "text-classification"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _hub_model(name: str) -> bool:
    """A Hub model id (``facebook/opt-1.3b``), not a path, URI or GGUF file."""
    return bool(_HUB_ID.match(name or "")) and "/" in name and not name.endswith(".gguf") and not os.path.exists(name)


def _hub_dataset(source: str) -> bool:
    if source.startswith("hf://"):
        return True
    return "://" not in source and _hub_model(source) and os.path.splitext(source)[1] not in (".jsonl", ".json",
                                                                                              ".parquet")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def read_metrics(output_dir: str) -> dict:
    """``metrics.json`` of a finished artifact (local dir or ``s3://`` prefix)."""
    with storage.open_uri(f"{output_dir.rstrip('/')}/metrics.json", "rb") as fh:
        return json.loads(fh.read())


def publish(run: RunDir, staging: Path, metrics: dict, card: str) -> dict:
    """Write the card and ``metrics.json`` into the staged artifact, then publish it (manifest last)."""
    (staging / "README.md").write_text(card)
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    run.check_lease()  # a run that lost its output to another does not publish over it
    manifest = storage.publish_dir(staging, run.output_dir, extra=run.record())
    shutil.rmtree(staging, ignore_errors=True)
    run.finish()
    log.info("published %d files (%d bytes) to %s", len(manifest["files"]), manifest["total_bytes"], run.output_dir)
    return manifest
