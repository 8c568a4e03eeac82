"""`make e2e`: the training stages as real jobs on the test cluster, then the cluster as it was.

$ .venv/bin/python cluster/e2e.py [pytest arguments]

Brings the test cluster up when it is not running (and down again at the end, only then), loads
the sft, reward and ppo images into its containerd (built on the local base, cached), and runs
tests/e2e against it: every stage's job through the real apiserver's admission, rlhf-ppo's
training stages as two-pod PyTorchJobs and TrainJobs, a deleted worker pod, a killed launcher,
the launcher's RBAC.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster  # noqa: E402  (cluster/cluster.py)

STAGE_IMAGES = ("launcher", "sft", "reward", "ppo")


def main(argv: list[str]) -> int:
    started = time.monotonic()
    was_up = all(cluster.pid_of(name) for name in cluster.PROCESSES)
    try:
        cluster.up()  # idempotent: starts what is not running, waits until everything is ready
        cluster.project_images(STAGE_IMAGES)
        cluster.log(f"cluster and images ready in {time.monotonic() - started:.0f} s")
        tests = subprocess.run([sys.executable, "-m", "pytest", "tests/e2e", "-v", "-s", "-p", "no:cacheprovider",
                                "--durations=0", *argv], cwd=cluster.ROOT)
        code = tests.returncode
    except cluster.ClusterError as err:
        print(f"e2e: {err}", file=sys.stderr)
        code = 2
    finally:
        if not was_up:
            cluster.down()
    cluster.log(f"e2e: exit {code} after {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
