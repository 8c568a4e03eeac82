"""Resumable work in parts: each finished part of a long pass over rows (candidates to generate, pairs to
label) is sealed as ``checkpoints/checkpoint-N`` (uploaded at once for an ``s3://`` output), so a killed
run redoes nothing it finished. A part records the row ids it covers and the settings it was made with;
a rerun with other rows or settings is refused rather than mixed. SIGTERM (a pod deleted, preempted or
drained) ends the run after the part in hand is sealed (:func:`each`)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path

from kuberlhf.artifacts import checkpoints, rundir
from kuberlhf.distributed import StopSignal
from kuberlhf.errors import ConfigError, Preempted

ROWS, SETTINGS = "part.jsonl", "settings.json"


def spans(count: int, size: int) -> list[range]:
    """The rows of each part: ``size`` at a time."""
    return [range(i, min(i + size, count)) for i in range(0, count, size)]


def sealed(run_dir: rundir.RunDir, ids: list[list[str]], settings: dict, rows_key: str,
           settings_key: str) -> dict[int, list[dict]]:
    """Part number -> its rows, for every sealed part of this run; ``ids[n]`` are the row ids part n must hold.
    A part made from other rows or with other settings stops the run, naming the config key of each."""
    done: dict[int, list[dict]] = {}
    for path in map(Path, rundir.sealed_checkpoints(run_dir)):
        part = rundir.step_of(str(path)) - 1
        if not 0 <= part < len(ids) or part in done:
            continue
        rows = [json.loads(line) for line in (path / ROWS).read_text().splitlines()]
        if [r["id"] for r in rows] != ids[part]:
            raise ConfigError(f"config key '{rows_key}': checkpoint {path.name} holds other rows than this run's part "
                              f"{part + 1}; pass overwrite=true to start again")
        if json.loads((path / SETTINGS).read_text()) != json.loads(json.dumps(settings, sort_keys=True)):
            raise ConfigError(f"config key '{settings_key}': checkpoint {path.name} was made with other settings; "
                              "pass overwrite=true to start again")
        done[part] = rows
    return done


def seal(run_dir: rundir.RunDir, part: int, rows: list[dict], settings: dict, parts: int) -> None:
    """Write part ``part`` and seal it (every part is kept: together they are the result)."""
    name = f"checkpoint-{part + 1}"
    folder = run_dir.checkpoints / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ROWS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / SETTINGS).write_text(json.dumps(settings, sort_keys=True) + "\n")
    checkpoints.seal_checkpoint(run_dir, name, keep=parts)


def each(todo: Iterable[int]) -> Iterator[int]:
    """The parts of ``todo`` in order; the caller seals each before asking for the next. After SIGTERM the
    part in hand is finished and sealed, then :class:`~kuberlhf.errors.Preempted` (exit 143) stops the run
    instead of the next part (or the publishing, after the last): the same command resumes after it."""
    last = None
    with StopSignal() as stop:
        for part in todo:
            _stop_if_asked(stop, last)
            yield part
            last = part
        _stop_if_asked(stop, last)


def _stop_if_asked(stop: StopSignal, last: int | None) -> None:
    if stop.received is None:
        return
    where = f"after sealing part {last + 1}" if last is not None else "before its first part"
    raise Preempted(stop.received, f"stopped by {signal.Signals(stop.received).name} {where}; the same command "
                                   "resumes after the sealed parts")
