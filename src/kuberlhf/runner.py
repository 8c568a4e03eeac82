"""What every training stage shares: its output directory, checkpoints, resume and publishing.

An ``output_dir`` (local path or ``s3://`` prefix) holds the finished artifact (model,
tokenizer, ``README.md`` card, ``metrics.json``; ``manifest.json`` written last) and
``checkpoints/checkpoint-N`` directories, each complete only once its own manifest is
written. Training runs in a local work dir: ``output_dir`` itself when local, a cache
directory when remote (checkpoints are uploaded as they are saved). On several nodes each
node's local main uploads the files its node wrote (ZeRO shards, per-rank RNG states) and the
global main writes the manifest once all have; on resume every node downloads the whole
checkpoint. Rerunning a command resumes from the newest complete checkpoint; a finished
artifact is never overwritten unless ``overwrite=true``.
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


def check_same_checkpoint(resume: str | None) -> None:
    """Refuse to go on when the processes picked different checkpoints to resume from (collective).

    Each node picks and downloads the newest complete checkpoint on its own; they differ only
    when the object store changed meanwhile (another job writing to the same ``output_dir``).
    """
    from kuberlhf.distributed import all_gather_object

    names = all_gather_object(Path(resume).name if resume else None)
    if len(set(names)) > 1:
        raise KuberlhfError(f"the processes of this run would resume from different checkpoints ({names} by rank); "
                            "is another job writing to the same output_dir?")


def seal_checkpoint(run: RunDir, name: str, keep: int) -> None:
    """Write a saved checkpoint's manifest (it is complete from then on), upload it, rotate old ones."""
    storage.write_manifest(run.checkpoints / name)
    if run.remote:
        storage.upload_dir(run.checkpoints / name, f"{run.remote_checkpoints()}/{name}")
        _rotate_remote(run, keep)
    else:
        _rotate_local(run, keep)
    log.info("checkpoint %s sealed%s", name, f" and uploaded to {run.output_dir}" if run.remote else "")


def _rotate_remote(run: RunDir, keep: int) -> None:
    for _, old in _by_step(storage.list_subdirs(run.remote_checkpoints()))[keep:]:
        storage.remove_dir(f"{run.remote_checkpoints()}/{old}")


def _rotate_local(run: RunDir, keep: int) -> None:
    names = [p.name for p in run.checkpoints.iterdir() if p.is_dir()] if run.checkpoints.is_dir() else []
    for _, old in _by_step(names)[keep:]:
        shutil.rmtree(run.checkpoints / old, ignore_errors=True)


def seal_checkpoint_collective(run: RunDir, name: str, keep: int) -> None:
    """Seal checkpoint ``name`` once every process has written its part; every process calls it.

    One node, or a local ``output_dir``: the global main seals it with :func:`seal_checkpoint`.
    Several nodes writing to ``s3://``: each node's disk holds only what its own processes
    wrote (ZeRO shards, per-rank RNG states). Each node's local main uploads the files that
    no node before it (in rank order) holds; once all have, the global main writes the
    manifest of every node's files, so "manifest present = complete" holds for the whole
    checkpoint. Rotation stays with the global main; the other nodes prune their local copies.
    """
    from kuberlhf import distributed as dist

    nodes = sum(dist.all_gather_object(dist.is_local_main()))  # also: every process has written its files
    if nodes <= 1 or not run.remote:
        if dist.is_world_main():
            seal_checkpoint(run, name, keep)
        return
    uri, here = f"{run.remote_checkpoints()}/{name}", run.checkpoints / name
    files, error = None, None
    try:
        if dist.is_world_main():
            storage.delete_manifest(uri)  # a stale copy of this checkpoint is incomplete until the end
        if dist.is_local_main():
            files = storage.build_manifest(here)["files"] if here.is_dir() else []
    except storage.StorageError as err:
        error = str(err)
    reports = dist.all_gather_object((files, error))
    _raise_first(name, [e for _, e in reports])
    owned, mine = _assign([f for f, _ in reports], dist.world_rank())
    error = None
    if mine:
        try:
            storage.upload_files(here, uri, mine)
        except storage.StorageError as err:
            error = str(err)
    _raise_first(name, dist.all_gather_object(error))  # every node has uploaded its part
    if dist.is_world_main():
        storage.put_manifest(uri, storage.manifest_of(owned))
        _rotate_remote(run, keep)
        log.info("checkpoint %s sealed and uploaded to %s from %d nodes", name, run.output_dir, nodes)
    elif dist.is_local_main():
        _rotate_local(run, keep)


def _raise_first(name: str, errors: list) -> None:
    if problems := [e for e in errors if e]:
        raise storage.StorageError(f"checkpoint {name} could not be uploaded from every node: {problems[0]}")


def _assign(listings: list[list[dict] | None], rank: int) -> tuple[list[dict], list[dict]]:
    """Which process uploads which file: the first in rank order that holds it.

    Returns (every file of the checkpoint, the files ``rank`` uploads).
    """
    owner: dict[str, tuple[int, dict]] = {}
    for r, files in enumerate(listings):
        for entry in files or []:
            first = owner.setdefault(entry["path"], (r, entry))
            if first[0] != r and first[1]["sha256"] != entry["sha256"]:
                log.warning("%s differs between ranks %d and %d; keeping rank %d's", entry["path"], first[0], r,
                            first[0])
    return [e for _, e in owner.values()], [e for r, e in owner.values() if r == rank]


def checkpoint_callback(run: RunDir, keep: int) -> Any:
    """A TrainerCallback that seals each checkpoint the Trainer saves and keeps the staged artifact's
    ``train_log.jsonl`` (the Trainer's log history, resumed runs included) up to date."""
    from transformers import TrainerCallback

    class SealCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            seal_checkpoint_collective(run, f"checkpoint-{state.global_step}", keep)

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
    check_same_checkpoint(resume)
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
