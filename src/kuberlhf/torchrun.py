"""``torchrun`` that exits with its workers' exit code: the training pods' launcher.

$ python -m kuberlhf.torchrun --nproc_per_node=8 -m kuberlhf.cli ppo --config ...

torchrun itself exits 1 when a worker fails, whatever the worker's own code was, and the pod's
``restartPolicy: ExitCode`` then reads every failure as permanent. This runs torchrun's own ``main``
and, when workers fail, exits with the first failure's code (a signal N as 128 + N), so a storage
outage's 200 (:data:`kuberlhf.errors.EXIT_TRANSIENT`) and an OOM kill's 137 stay retryable and bad
input's 2 stays permanent.
"""

from __future__ import annotations

import sys


def exit_code_of(err: BaseException) -> int:
    """The exit code a ``ChildFailedError`` stands for: its first failure's (signals as 128 + N)."""
    _, failure = err.get_first_failure()
    code = int(failure.exitcode)
    return 128 - code if code < 0 else code or 1


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(argv)
    except ChildFailedError as err:
        code = exit_code_of(err)
        print(f"kuberlhf.torchrun: a worker failed; exiting {code}", file=sys.stderr)
        return code
    except SignalException as err:  # SIGTERM of a deleted or preempted pod: retryable, as its signal says
        code = 128 + int(err.sigval)
        print(f"kuberlhf.torchrun: stopped by {err.sigval.name}; exiting {code}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
