"""A stage's run directory: its ``output_dir``, the local work dir, and resume from checkpoints.

An ``output_dir`` (local path or ``s3://`` prefix) holds the finished artifact (model,
tokenizer, ``README.md`` card, ``metrics.json``; ``manifest.json`` written last) and
``checkpoints/checkpoint-N`` directories, each complete only once its own manifest is
written (:mod:`kuberlhf.artifacts.checkpoints`). Training runs in a local work dir:
``output_dir`` itself when local, a cache directory when remote (checkpoints are uploaded as
they are saved). One run writes an ``output_dir`` at a time (:mod:`kuberlhf.artifacts.lease`).

Every manifest records the settings of the run that made it (the flattened config, less
:data:`IGNORED`). Rerunning a command resumes from the newest complete checkpoint made with the
same settings (:data:`RESUME_MAY_CHANGE` may differ; ``resume=force`` resumes despite other
changes); on a finished artifact of the same settings it has nothing to do (exit 0); a finished
artifact of other settings is never overwritten unless ``overwrite=true``.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuberlhf.artifacts import lease, storage
from kuberlhf.artifacts.cache import cache_root, fingerprint
from kuberlhf.artifacts.location import Location, LocationLike
from kuberlhf.errors import AlreadyFinished, ConfigError, IntegrityError, KuberlhfError

log = logging.getLogger(__name__)
CHECKPOINTS = storage.CHECKPOINTS
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")

# config keys that do not change what a run makes (where it is stored, how it logs and checkpoints)
IGNORED = ("output_dir", "overwrite", "resume", "storage.", "training.logging_steps", "training.save_steps",
           "training.save_total_limit", "training.report_to", "training.run_name", "training.disable_tqdm",
           "training.dataloader_num_workers", "training.deepspeed_unpickle")
# what marks a local folder as a kuberlhf run's (anything else in it would be lost to a publish)
MARKERS = (storage.MANIFEST_NAME, CHECKPOINTS, ".final", ".logs", lease.LOCK, lease.LEASE)
# keys a resumed run may change besides: how long it trains and how it is evaluated
RESUME_MAY_CHANGE = ("training.max_steps", "training.num_train_epochs", "training.eval_steps",
                     "training.per_device_eval_batch_size")


def run_settings(cfg: Any) -> dict:
    """The settings a stage config records in its manifests: every key but :data:`IGNORED`, with each local
    data file or artifact it reads named by its content (:func:`content_id`), not its path."""
    from kuberlhf.config import flatten, to_dict
    from kuberlhf.config.sections import named_locations

    settings = {k: v for k, v in flatten(to_dict(cfg)).items() if not k.startswith(IGNORED)}
    for key, value in named_locations(cfg):
        if key != "output_dir" and key in settings:
            settings[key] = content_id(value)
    return settings


def content_id(location: str) -> str:
    """A local file as the sha256 of its bytes, a local or ``s3://`` artifact as that of its manifest's file list;
    anything else (hub names, ``demo://``, plain folders, other ``s3://`` objects) as it is written."""
    import hashlib
    import json

    if storage.is_remote(location):  # an s3:// artifact by its manifest (one request), anything else as written
        manifest = storage.retrying(lambda: storage.read_manifest(location), f"reading {location}")
        if manifest is None:
            return location
        return f"artifact-sha256:{hashlib.sha256(json.dumps(manifest['files'], sort_keys=True).encode()).hexdigest()}"
    if not location or "://" in location:
        return location
    path = Path(location)
    if path.is_file():
        return f"sha256:{storage.sha256_of(path)}"
    if (path / storage.MANIFEST_NAME).is_file():
        files = storage.read_manifest(str(path))["files"]
        return f"artifact-sha256:{hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()}"
    return location


def changed_keys(made: dict, now: dict, may_change: tuple[str, ...] = ()) -> list[str]:
    """The keys whose values differ between two recorded settings, less ``may_change`` (prefixes)."""
    return sorted(k for k in set(made) | set(now)
                  if made.get(k) != now.get(k) and not k.startswith(IGNORED + may_change))


@dataclass
class RunDir:
    """A run's ``output_dir`` (given as text, kept parsed), its local ``work_dir`` and what it records."""

    output_dir: Location
    work_dir: Path
    stage: str = ""
    settings: dict | None = None  # what this run records in its manifests (None: nothing, no checks)
    force_resume: bool = False
    lease_ttl_s: float = 1800.0
    _leased: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.output_dir = Location.parse(self.output_dir)

    @property
    def remote(self) -> bool:
        return self.output_dir.is_remote

    @property
    def checkpoints(self) -> Path:
        return self.work_dir / CHECKPOINTS

    @property
    def staging(self) -> Path:
        return self.work_dir / ".final"

    def remote_checkpoints(self) -> Location:
        return self.output_dir / CHECKPOINTS

    def record(self) -> dict:
        """The manifest entries that name the run: its stage and settings."""
        return {"run": {"stage": self.stage, "settings": self.settings}} if self.settings is not None else {}

    def check_lease(self) -> None:
        """Before a seal: stop when another run took the ``s3://`` output over; renew the lease."""
        if self._leased:
            storage.retrying(lambda: lease.check(self.output_dir, renew=True),
                             f"renewing the lease of {self.output_dir}")

    def finish(self) -> None:
        """After the publish: give the output back."""
        if self._leased:
            lease.drop(self.output_dir)
            self._leased = False
        lease.release(self.work_dir)


def finished(output_dir: LocationLike) -> bool:
    """Whether ``output_dir`` holds a finished artifact (its manifest written, last): a rerun or a retried step
    finds it there instead of training again. Whether it was made with this config is :func:`prepare_run`'s
    question (the stage asks it in its own process, a pipeline step's job in its pods)."""
    return storage.is_complete(output_dir)


def prepare_run(output_dir: LocationLike, stage: str, overwrite: bool, is_main: bool = True,
                cfg: Any = None) -> RunDir:
    """Check ``output_dir`` and pick the local work dir; refuse to clobber a finished artifact.

    ``cfg``: the stage config, whose settings are recorded and checked (:func:`run_settings`). Every
    process decides alike; only the main one discards (``overwrite``), locks and leases. On a finished
    artifact of the same settings it raises :class:`AlreadyFinished` (nothing to do; exit 0).
    """
    output_dir = Location.parse(output_dir)
    if output_dir.is_remote:
        work_dir = cache_root() / "runs" / fingerprint(str(output_dir).rstrip("/"))
    else:
        work_dir = output_dir.local
    run = RunDir(output_dir, work_dir, stage, run_settings(cfg) if cfg is not None else None,
                 getattr(cfg, "resume", "auto") == "force",
                 cfg.storage.lease_ttl_s if cfg is not None and hasattr(cfg, "storage") else 1800.0)
    manifest = storage.retrying(lambda: storage.read_manifest(output_dir), f"reading {output_dir}")
    if manifest is not None:
        made = (manifest.get("run") or {}).get("settings")
        changed = changed_keys(made, run.settings) if made is not None and run.settings is not None else None
        if not overwrite:
            if changed == []:
                raise AlreadyFinished(f"{output_dir} already holds the finished {stage} artifact of this config: "
                                      "nothing to do", _metrics_of(output_dir))
            other = f" made with other settings ({', '.join(changed)} changed)" if changed else ""
            raise KuberlhfError(f"{output_dir} already holds a finished {stage} artifact{other}; pass overwrite=true "
                                "to train again from scratch, or choose another output_dir")
    if is_main:
        _refuse_foreign(run, manifest is not None)
        lease.lock_work_dir(work_dir, output_dir)
        if run.remote:
            storage.retrying(lambda: lease.acquire(output_dir, run.lease_ttl_s), f"leasing {output_dir}")
            lease.heartbeat(output_dir, run.lease_ttl_s)
            run._leased = True
        if overwrite:  # the finished artifact and every checkpoint, also when there is no artifact yet
            log.warning("overwrite=true: discarding any artifact and checkpoints in %s", output_dir)
            _discard(run)
        shutil.rmtree(run.staging, ignore_errors=True)  # what a killed run staged is no part of this one
        work_dir.mkdir(parents=True, exist_ok=True)
    return run


def _metrics_of(output_dir: Location) -> dict:
    import json

    try:
        with storage.open_uri(output_dir / "metrics.json") as fh:
            return json.loads(fh.read())
    except (storage.StorageError, ValueError):
        return {}


def _refuse_foreign(run: RunDir, finished: bool) -> None:
    """Refuse a local ``output_dir`` that holds files but is no kuberlhf run's: publishing there removes
    what its manifest does not list, and no data is lost to a mistyped path."""
    root = run.work_dir
    if run.remote or finished or not root.is_dir():
        return
    entries = [p.name for p in root.iterdir()]
    if entries and not any(name in MARKERS for name in entries):
        raise KuberlhfError(f"output_dir {root} holds files ({sorted(entries)[0]!r}, ...) but no kuberlhf run or "
                            "artifact; choose an empty or new folder")


def _discard(run: RunDir) -> None:
    if run.remote:
        storage.remove_dir(run.output_dir, keep=(lease.LEASE,))
        for name in (p.name for p in run.work_dir.iterdir()) if run.work_dir.is_dir() else ():
            if name not in (lease.LOCK,):
                path = run.work_dir / name
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    else:
        (run.work_dir / storage.MANIFEST_NAME).unlink(missing_ok=True)
        for name in (CHECKPOINTS, ".final", ".logs"):  # the old run's checkpoints, staging and tracker logs
            shutil.rmtree(run.work_dir / name, ignore_errors=True)
        storage.remove_unlisted(run.work_dir, {"files": []})  # the old artifact's files: none outlives it


def by_step(names: list[str]) -> list[tuple[int, str]]:
    """The checkpoints among ``names`` (``checkpoint-N``; other names are left out) as ``(N, name)``, newest first."""
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


def resume_point(run: RunDir) -> str | None:
    """:func:`latest_checkpoint`, and the checkpoints newer than it (cut off, damaged: a timeline the run
    abandons) deleted, so that rotation, which keeps the newest sealed ones, never counts them."""
    found = latest_checkpoint(run)
    step = step_of(found)
    names = [p.name for p in run.checkpoints.iterdir()] if run.checkpoints.is_dir() else []
    for newer, name in by_step(names):
        if newer > step:
            log.warning("removing %s, newer than the checkpoint this run resumes from", name)
            shutil.rmtree(run.checkpoints / name, ignore_errors=True)
    if run.remote:
        for newer, name in by_step(storage.list_subdirs(run.remote_checkpoints())):
            if newer > step:
                log.warning("removing %s/%s, newer than the checkpoint this run resumes from", run.output_dir, name)
                storage.remove_dir(run.remote_checkpoints() / name)
    return found


def sealed_checkpoints(run: RunDir) -> Iterator[str]:
    """Local paths of the complete checkpoints, newest first, each downloaded (when remote) as it is reached.

    One whose files do not match its manifest (a missing or corrupt object) is passed over with a
    warning, for the previous one; one made with other settings stops the run (:func:`_check_settings`);
    any other failure (the store unreachable, a permission) stops it too rather than start it over.
    """
    if run.remote:
        for _, name in by_step(storage.list_subdirs(run.remote_checkpoints())):
            uri = run.remote_checkpoints() / name
            try:
                manifest = storage.retrying(lambda u=uri: storage.read_manifest(u), f"reading {uri}")
                if manifest is None:
                    continue
                _check_settings(run, manifest, name)
                path = storage.retrying(lambda u=uri, n=name: storage.download_dir(u, run.checkpoints / n),
                                        f"downloading {uri}")
            except IntegrityError as err:  # damaged (a missing or changed object): the one before it
                log.warning("skipping checkpoint %s, which cannot be restored: %s", name, err)
                continue
            yield str(path)
        return
    names = [p.name for p in run.checkpoints.iterdir()] if run.checkpoints.is_dir() else []
    for _, name in by_step(names):
        try:
            manifest = storage.verify_local(run.checkpoints / name)
        except IntegrityError as err:
            log.warning("skipping incomplete checkpoint: %s", err)
            continue
        _check_settings(run, manifest, name)
        yield str(run.checkpoints / name)


def _check_settings(run: RunDir, manifest: dict, name: str) -> None:
    """Refuse to resume from a checkpoint made with other settings (``resume=force`` resumes anyway)."""
    made = (manifest.get("run") or {}).get("settings")
    if made is None or run.settings is None:
        return
    if changed := changed_keys(made, run.settings, RESUME_MAY_CHANGE):
        if run.force_resume:
            log.warning("resume=force: resuming from %s although %s changed", name, ", ".join(changed))
            return
        raise ConfigError(f"config key '{changed[0]}': checkpoint {name} in {run.output_dir} was made with other "
                          f"settings ({', '.join(changed)} changed); pass resume=force to resume from it anyway, "
                          "or overwrite=true to start again")


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


