"""One writer per ``output_dir``: a lock on this machine and a lease in the object store.

Two jobs writing one ``output_dir`` would interleave checkpoints and publish each other's files. The
first to start takes the output: on this machine an exclusive ``flock`` on the run's work dir (the
kernel lets go when the process dies, ``kill -9`` included), and for an ``s3://`` output a lease object
``.lease.json`` naming the run (``KUBERLHF_RUN_ID``, which the launcher sets to the job's run id, else
this host's name). A later run is refused while the lease is held; the holder renews it at every
checkpoint and checks it is still its own before sealing, so a run that lost it stops rather than
overwrite. A lease not renewed for ``storage.lease_ttl_s`` (its holder died) may be taken over; so may
one of the same run id (a restarted pod of the same job). S3 has no compare-and-swap on every store:
the lease is written, then read back, which narrows the race to that moment rather than closing it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import IO

from kuberlhf.artifacts import storage
from kuberlhf.artifacts.location import Location, LocationLike
from kuberlhf.errors import KuberlhfError

log = logging.getLogger(__name__)
LEASE = ".lease.json"
LOCK = ".lock"
_held: dict[str, IO[str]] = {}  # work dir -> its open, locked file (this process holds the run)


def run_id() -> str:
    """Who writes: the launcher's run id (``KUBERLHF_RUN_ID``), else this host."""
    return os.environ.get("KUBERLHF_RUN_ID") or socket.gethostname()


def lock_work_dir(work_dir: Path, output_dir: LocationLike) -> None:
    """Take this machine's exclusive lock on ``work_dir`` (kept until the process ends or :func:`release`)."""
    key = str(work_dir.resolve())
    if key in _held:
        return
    work_dir.mkdir(parents=True, exist_ok=True)
    fh = open(work_dir / LOCK, "a+")  # noqa: SIM115 (held open: the lock lives as long as it)
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise KuberlhfError(f"{output_dir} is being written by {holder} on this machine; wait for it to finish, "
                            "or choose another output_dir") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}\n")
    fh.flush()
    _held[key] = fh


def release(work_dir: Path) -> None:
    """Let go of the lock of :func:`lock_work_dir` (at the end of a run)."""
    if fh := _held.pop(str(work_dir.resolve()), None):
        fh.close()


def _read(output_dir: Location) -> dict | None:
    raw = storage.read_object(output_dir / LEASE)
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None  # a torn lease is no lease


def _write(output_dir: Location, rid: str) -> None:
    body = json.dumps({"run_id": rid, "renewed": time.time(), "host": socket.gethostname()})
    storage.write_object(output_dir / LEASE, body.encode())


def acquire(output_dir: LocationLike, ttl_s: float) -> None:
    """Take the lease of the ``s3://`` ``output_dir`` for this run, or refuse naming its holder."""
    output_dir = Location.parse(output_dir)
    rid, lease = run_id(), _read(output_dir)
    if lease and lease.get("run_id") != rid:
        age = time.time() - float(lease.get("renewed", 0))
        if age < ttl_s:
            raise KuberlhfError(
                f"{output_dir} is leased by run {lease.get('run_id')!r} (renewed {age:.0f} s ago): another job is "
                f"writing it; wait for it, choose another output_dir, or delete {output_dir / LEASE} if that job is "
                f"gone (a lease not renewed for storage.lease_ttl_s={ttl_s:g} s is taken over)")
        log.warning("taking over the lease of %s from run %r (not renewed for %.0f s)", output_dir,
                    lease.get("run_id"), age)
    _write(output_dir, rid)
    check(output_dir)


def check(output_dir: LocationLike, renew: bool = False) -> None:
    """Refuse to go on when the lease of ``output_dir`` is no longer this run's (before a seal); ``renew``."""
    output_dir = Location.parse(output_dir)
    rid, lease = run_id(), _read(output_dir)
    if lease is None or lease.get("run_id") != rid:
        holder = lease.get("run_id") if lease else "nobody"
        raise KuberlhfError(f"lost the lease of {output_dir} to run {holder!r}: another job is writing it; "
                            "this run stops without sealing")
    if renew:
        _write(output_dir, rid)


def drop(output_dir: LocationLike) -> None:
    """Give the lease back (after the publish, or when the run stops on an error); best effort: a lease
    left behind expires after ``storage.lease_ttl_s``, and the same run takes its own back at once."""
    output_dir = Location.parse(output_dir)
    _heartbeats.pop(output_dir, threading.Event()).set()
    try:
        if (lease := _read(output_dir)) and lease.get("run_id") == run_id():
            storage.delete_object(output_dir / LEASE)
    except storage.StorageError as err:
        log.warning("could not give back the lease of %s: %s", output_dir, err)


_heartbeats: dict[Location, threading.Event] = {}  # output dir -> the stop signal of its renewing thread
lost: set[Location] = set()  # outputs whose lease the heartbeat found taken


def heartbeat(output_dir: LocationLike, ttl_s: float) -> None:
    """Renew the lease every ``ttl_s / 3`` from a daemon thread, between the seals too (a run whose
    checkpoints are further apart than the TTL keeps its output)."""
    output_dir = Location.parse(output_dir)
    if output_dir in _heartbeats:
        return
    stop = _heartbeats[output_dir] = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            try:
                check(output_dir, renew=True)
            except KuberlhfError as err:  # taken over: the next seal stops the run
                log.error("%s", err)
                lost.add(output_dir)
                return
            except Exception as err:  # noqa: BLE001 (an outage: the next seal retries within its budget)
                log.warning("could not renew the lease of %s: %s", output_dir, err)

    threading.Thread(target=renew, name=f"lease {output_dir}", daemon=True).start()


def held() -> list[Location]:
    """The outputs this process leases (for :func:`drop` on an error exit)."""
    return list(_heartbeats)
