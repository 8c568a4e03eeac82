"""Sealing checkpoints: a checkpoint is complete once its manifest is written, on one node or many.

On several nodes each node's local main uploads the files its node wrote (ZeRO shards, per-rank
RNG states) and the global main writes the manifest once all have; rotation keeps the newest
``save_total_limit`` checkpoints.
"""

from __future__ import annotations

import logging
import shutil

from kuberlhf.artifacts import storage
from kuberlhf.artifacts.rundir import RunDir, _by_step

log = logging.getLogger(__name__)


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


