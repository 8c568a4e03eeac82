"""Sealing checkpoints: a checkpoint is complete once its manifest is written, on one node or many.

On several nodes each node's local main uploads the files its node wrote (ZeRO shards, per-rank
RNG states) and the global main writes the manifest once all have; rotation, after the seal, keeps
the newest ``save_total_limit`` sealed checkpoints (an unsealed one never counts).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

from kuberlhf.artifacts import storage
from kuberlhf.artifacts.failpoints import failpoint
from kuberlhf.artifacts.rundir import RunDir, by_step, step_of
from kuberlhf.errors import KuberlhfError

log = logging.getLogger(__name__)


def seal_checkpoint(run: RunDir, name: str, keep: int) -> None:
    """Write a saved checkpoint's manifest (it is complete from then on), upload it, rotate old ones.

    The lease is checked first (a run that lost its output to another stops here); the upload rides
    out an outage for ``storage.retry_budget_s``; rotation comes only after the seal.
    """
    run.check_lease()
    failpoint("seal")
    storage.write_manifest(run.checkpoints / name, extra=run.record())
    if run.remote:
        uri = run.remote_checkpoints() / name
        storage.retrying(lambda: storage.upload_dir(run.checkpoints / name, uri, extra=run.record()),
                         f"sealing checkpoint {name}")
        storage.retrying(lambda: _rotate_remote(run, keep), f"rotating the checkpoints of {run.output_dir}")
    _rotate_local(run, keep)
    log.info("checkpoint %s sealed%s", name, f" and uploaded to {run.output_dir}" if run.remote else "")
    failpoint("sealed")


def _rotate(names: list[str], sealed: Callable[[str], bool], keep: int) -> list[str]:
    """The checkpoints to delete: all older than the ``keep`` newest *sealed* ones (sealed or not)."""
    kept = [name for _, name in by_step(names) if sealed(name)][:keep]
    if len(kept) < keep or not kept:
        return []
    oldest = step_of(kept[-1])
    return [name for step, name in by_step(names) if step < oldest]


def _rotate_remote(run: RunDir, keep: int) -> None:
    base = run.remote_checkpoints()
    for old in _rotate(storage.list_subdirs(base), lambda n: storage.is_complete(base / n), keep):
        storage.remove_dir(base / old)


def _rotate_local(run: RunDir, keep: int) -> None:
    """A local output: as :func:`_rotate_remote`. An ``s3://`` one: the local copies (the sealed ones are in
    the store; a node's copy of a multi-node checkpoint has no manifest of its own), the newest ``keep``."""
    names = [p.name for p in run.checkpoints.iterdir() if p.is_dir()] if run.checkpoints.is_dir() else []
    sealed = (lambda n: True) if run.remote else (lambda n: storage.is_complete(run.checkpoints / n))
    for old in _rotate(names, sealed, keep):
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
    uri, here = run.remote_checkpoints() / name, run.checkpoints / name
    files, error = None, None
    try:
        if dist.is_world_main():
            run.check_lease()
            storage.delete_manifest(uri)  # a stale copy of this checkpoint is incomplete until the end
        if dist.is_local_main():
            files = storage.build_manifest(here)["files"] if here.is_dir() else []
    except KuberlhfError as err:  # a lost lease too: every node stops, none waits in the gather below
        error = err
    reports = dist.all_gather_object((files, error))
    _raise_first(name, [e for _, e in reports])
    owned, mine = _assign([f for f, _ in reports], dist.world_rank())
    error = None
    if mine:
        try:
            storage.retrying(lambda: storage.upload_files(here, uri, mine), f"sealing checkpoint {name}")
        except storage.StorageError as err:
            error = err
    _raise_first(name, dist.all_gather_object(error))  # every node has uploaded its part
    if dist.is_world_main():
        storage.retrying(lambda: storage.put_manifest(uri, storage.manifest_of(owned, run.record())),
                         f"sealing checkpoint {name}")
        storage.retrying(lambda: _rotate_remote(run, keep), f"rotating the checkpoints of {run.output_dir}")
        log.info("checkpoint %s sealed and uploaded to %s from %d nodes", name, run.output_dir, nodes)
    if dist.is_local_main():
        _rotate_local(run, keep)


def _raise_first(name: str, errors: list) -> None:
    """Raise the first node's error on every node, keeping its kind (a transient one stays retryable)."""
    if problems := [e for e in errors if e]:
        kind = type(problems[0]) if isinstance(problems[0], KuberlhfError) else storage.StorageError
        raise kind(f"checkpoint {name} could not be uploaded from every node: {problems[0]}")


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


