"""A stage's run directory: its ``output_dir``, the local work dir, and resume from checkpoints.

An ``output_dir`` (local path or ``s3://`` prefix) holds the finished artifact (model,
tokenizer, ``README.md`` card, ``metrics.json``; ``manifest.json`` written last) and
``checkpoints/checkpoint-N`` directories, each complete only once its own manifest is
written (:mod:`kuberlhf.artifacts.checkpoints`). Training runs in a local work dir:
``output_dir`` itself when local, a cache directory when remote (checkpoints are uploaded as
they are saved). Rerunning a command resumes from the newest complete checkpoint; a finished
artifact is never overwritten unless ``overwrite=true``.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kuberlhf.artifacts import storage
from kuberlhf.artifacts.cache import cache_root, fingerprint
from kuberlhf.errors import KuberlhfError

log = logging.getLogger(__name__)
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
    return next(sealed_checkpoints(run), None)


def sealed_checkpoints(run: RunDir) -> Iterator[str]:
    """Local paths of the complete checkpoints, newest first, each downloaded (when remote) as it is reached."""
    if run.remote:
        for _, name in _by_step(storage.list_subdirs(run.remote_checkpoints())):
            uri = f"{run.remote_checkpoints()}/{name}"
            if storage.is_complete(uri):
                yield str(storage.download_dir(uri, run.checkpoints / name))
        return
    names = [p.name for p in run.checkpoints.iterdir()] if run.checkpoints.is_dir() else []
    for _, name in _by_step(names):
        try:
            storage.verify_local(run.checkpoints / name)
        except storage.StorageError as err:
            log.warning("skipping incomplete checkpoint: %s", err)
            continue
        yield str(run.checkpoints / name)


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


