"""Failpoints: the named moments where a fault trial kills the process, as ``kill -9`` would.

``KUBERLHF_FAILPOINTS=seal:2,publish:1`` kills the process (SIGKILL: no cleanup, no exit handlers)
the 2nd time it reaches ``seal`` and the 1st time it reaches ``publish``. Unset, a failpoint costs one
environment lookup. The points are the windows a crash must not spoil:

- ``seal``: a checkpoint's files are written, its manifest is not;
- ``sealed``: a checkpoint is sealed and the old ones rotated; training goes on from here;
- ``upload``: some of an artifact's files are in the store, the rest and the manifest are not;
- ``publish``: a local publish has removed the old files and copied some of the new, not the manifest.

``tests/faults.py`` (``make faults``) drives them and measures what survives.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Die here when ``KUBERLHF_FAILPOINTS`` names ``name`` and this is its N-th hit."""
    spec = os.environ.get("KUBERLHF_FAILPOINTS")
    if not spec:
        return
    for item in spec.split(","):
        point, _, count = item.strip().partition(":")
        if point == name:
            _hits[name] += 1
            if _hits[name] == int(count or 1):
                os.kill(os.getpid(), signal.SIGKILL)
