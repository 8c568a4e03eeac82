"""What every training stage shares: its output directory, checkpoints, resume and publishing.

An ``output_dir`` (local path or ``s3://`` prefix) holds the finished artifact (model,
tokenizer, ``README.md`` card, ``metrics.json``; ``manifest.json`` written last) and
``checkpoints/checkpoint-N`` directories, each complete only once its own manifest is
written. Training runs in a local work dir: ``output_dir`` itself when local, a cache
directory when remote (checkpoints are uploaded as they are saved). Rerunning a command
resumes from the newest complete checkpoint; a finished artifact is never overwritten
unless ``overwrite=true``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberlhf import storage
from kuberlhf.config import to_yaml
from kuberlhf.errors import KuberlhfError
from kuberlhf.modeling import cache_root, fingerprint

log = logging.getLogger("kuberlhf")
CHECKPOINTS = "checkpoints"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class RunDir:
    output_dir: str
    work_dir: Path

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.output_dir)

    @property
    def checkpoints(self) -> Path:
        return self.work_dir / CHECKPOINTS

    @property
    def staging(self) -> Path:
        return self.work_dir / ".final"

    def remote_checkpoints(self) -> str:
        return f"{self.output_dir.rstrip('/')}/{CHECKPOINTS}"


def prepare_run(output_dir: str, stage: str, overwrite: bool, is_main: bool = True) -> RunDir:
    """Check ``output_dir`` and pick the local work dir; refuse to clobber a finished artifact."""
    if storage.is_remote(output_dir):
        storage.parse_s3_uri(output_dir)
        work_dir = cache_root() / "runs" / fingerprint(output_dir.rstrip("/"))
    else:
        work_dir = Path(output_dir)
    run = RunDir(output_dir, work_dir)
    if is_main and storage.is_complete(output_dir):
        if not overwrite:
            raise KuberlhfError(
                f"{output_dir} already holds a finished {stage} artifact; "
                "pass overwrite=true to train again from scratch, or choose another output_dir"
            )
        log.warning("overwrite=true: discarding the finished artifact and checkpoints in %s", output_dir)
        _discard(run)
    if is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
    return run


def _discard(run: RunDir) -> None:
    if run.remote:
        storage.remove_dir(run.output_dir)
        shutil.rmtree(run.work_dir, ignore_errors=True)
    else:
        (run.work_dir / storage.MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(run.checkpoints, ignore_errors=True)


def _by_step(names: list[str]) -> list[tuple[int, str]]:
    found = [(int(m.group(1)), name) for name in names if (m := _CKPT_RE.match(name))]
    return sorted(found, reverse=True)


def step_of(checkpoint: str | None) -> int:
    """The global step of a checkpoint path (0 for None)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0


def latest_checkpoint(run: RunDir) -> str | None:
    """Local path of the newest complete checkpoint (downloaded first when remote), or None.

    A checkpoint without a manifest, or whose files do not match it, was cut off mid-save
    and is passed over.
    """
    if run.remote:
        for _, name in _by_step(storage.list_subdirs(run.remote_checkpoints())):
            uri = f"{run.remote_checkpoints()}/{name}"
            if storage.is_complete(uri):
                return str(storage.download_dir(uri, run.checkpoints / name))
        return None
    names = [p.name for p in run.checkpoints.iterdir()] if run.checkpoints.is_dir() else []
    for _, name in _by_step(names):
        try:
            storage.verify_local(run.checkpoints / name)
        except storage.StorageError as err:
            log.warning("skipping incomplete checkpoint: %s", err)
            continue
        return str(run.checkpoints / name)
    return None


def seal_checkpoint(run: RunDir, name: str, keep: int) -> None:
    """Write a saved checkpoint's manifest (it is complete from then on), upload it, rotate old ones."""
    storage.write_manifest(run.checkpoints / name)
    if run.remote:
        storage.upload_dir(run.checkpoints / name, f"{run.remote_checkpoints()}/{name}")
        for _, old in _by_step(storage.list_subdirs(run.remote_checkpoints()))[keep:]:
            storage.remove_dir(f"{run.remote_checkpoints()}/{old}")
    else:
        for _, old in _by_step([p.name for p in run.checkpoints.iterdir()])[keep:]:
            shutil.rmtree(run.checkpoints / old, ignore_errors=True)
    log.info("checkpoint %s sealed%s", name, f" and uploaded to {run.output_dir}" if run.remote else "")


def checkpoint_callback(run: RunDir, keep: int) -> Any:
    """A TrainerCallback that seals each checkpoint the Trainer saves and keeps the staged artifact's
    ``train_log.jsonl`` (the Trainer's log history, resumed runs included) up to date."""
    from transformers import TrainerCallback

    class SealCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                seal_checkpoint(run, f"checkpoint-{state.global_step}", keep)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                write_train_log(run.staging, state.log_history)

    return SealCheckpoint()


TRAIN_LOG = "train_log.jsonl"


def write_train_log(staging: Path, history: list[dict]) -> None:
    """One JSON record per logged step (``train_log.jsonl``): the curves of the evaluation report."""
    staging.mkdir(parents=True, exist_ok=True)
    (staging / TRAIN_LOG).write_text("".join(json.dumps(h) + "\n" for h in history))


def start(cfg: Any, stage: str, kind: str) -> tuple[RunDir, tuple]:
    """The common start of a Trainer stage: storage defaults, DeepSpeed's process group (before any
    model loads), the run dir, and the data of ``kind``: (run dir, (train, eval or None, DataStats))."""
    from kuberlhf.distributed import init_deepspeed, is_world_main

    cfg.storage.apply()
    init_deepspeed(cfg.training.deepspeed)
    run_dir = prepare_run(cfg.output_dir, stage, cfg.overwrite, is_main=is_world_main())
    return run_dir, cfg.data.load(kind, cfg.training.seed)


def train(trainer: Any, resume: str | None, finetune: str, stats: Any) -> tuple[Any, dict]:
    """Run a Trainer (resuming from ``resume`` when given); (result, the metrics every stage reports)."""
    if resume:
        log.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {
        "train_loss": result.metrics["train_loss"],
        "train_runtime": result.metrics["train_runtime"],
        "global_step": trainer.state.global_step,
        "resumed_from_step": step_of(resume),
        "finetune": finetune,
        "data": stats.to_dict(),
    }
    return result, metrics


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
