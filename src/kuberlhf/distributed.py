"""Process-group facts read from the launcher's environment (torchrun, accelerate, deepspeed)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

# what gloo and NCCL say when the other end of a collective is gone (its pod deleted, its node lost)
_LOST_PEER = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "gloo/transport",
              "NCCL communicator was aborted", "Socket Timeout")


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` means another process of the run was lost mid-collective: worth a restart of the job's
    pods (which resume from the last checkpoint), not a permanent failure."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(err, getattr(dist, "DistError", ())):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in _LOST_PEER)


def world_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_world_main() -> bool:
    """True on the one process that writes shared outputs (rank 0, or a single process)."""
    return world_rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_local_main() -> bool:
    """True on one process per node (local rank 0): the one that moves the node's files."""
    return local_rank() == 0


def _group():
    """``torch.distributed`` when a process group of more than one process is up, else None."""
    if world_size() == 1:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def is_distributed() -> bool:
    return _group() is not None


def all_gather_object(obj: object) -> list:
    """``obj`` (picklable) from every process, in rank order; ``[obj]`` without a process group.

    Collective: every process must call it. It also serves as a barrier.
    """
    dist = _group()
    if dist is None:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def init_deepspeed(config_path: str | None) -> None:
    """Join the process group through DeepSpeed before any model is built.

    Under ZeRO-3, ``from_pretrained`` partitions weights as it loads them (``zero.Init``);
    without an initialised group it sees a world of one and DeepSpeed's batch-size check
    fails. gloo on CPU, NCCL on GPUs.
    """
    if not config_path or world_size() == 1:
        return
    import deepspeed
    import torch

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


# what DeepSpeed's ZeRO checkpoints hold besides tensors and plain data (deepspeed 0.19, stages 1-3)
DEEPSPEED_SAFE_GLOBALS = ("deepspeed.runtime.zero.config.ZeroStageEnum",
                          "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                          "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",  # fp16's default
                          "deepspeed.utils.tensor_fragment.fragment_address")


def restrict_deepspeed_loading(unpickle: bool = False) -> None:
    """Make DeepSpeed load its checkpoints with ``torch.load(weights_only=True)`` and an allow-list of its own
    classes (:data:`DEEPSPEED_SAFE_GLOBALS`) instead of a full unpickle (its default), which runs any code a
    planted file carries. ``unpickle`` (``training.deepspeed_unpickle``) keeps DeepSpeed's default."""
    import importlib
    import pickle

    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from kuberlhf.errors import StorageError

    original = getattr(TorchCheckpointEngine.load, "__wrapped__", TorchCheckpointEngine.load)
    if unpickle:
        TorchCheckpointEngine.load = original
        return
    allowed = []
    for path in DEEPSPEED_SAFE_GLOBALS:
        module, _, name = path.rpartition(".")
        allowed.append(getattr(importlib.import_module(module), name))

    def load(self, path, map_location=None):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise StorageError(f"{path}: refusing to load this DeepSpeed checkpoint file: it holds objects beyond "
                               f"tensors, plain data and DeepSpeed's own classes ({first}); set "
                               "training.deepspeed_unpickle=true only if nobody untrusted can write the store") from err

    load.__wrapped__ = original
    TorchCheckpointEngine.load = load


def init_distributed(deepspeed_config: str | None) -> None:
    """Join the process group before any model is built: through DeepSpeed when a config is named
    (:func:`init_deepspeed`), else through accelerate's state, as the Trainer later does (gloo on CPU)."""
    if world_size() == 1:
        return
    if deepspeed_config:
        init_deepspeed(deepspeed_config)
        return
    from accelerate import PartialState

    PartialState()


def local_main_first():
    """A context in which the node's main process goes first (it fetches, the others then read its cache)."""
    import contextlib

    if _group() is None:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().local_main_process_first()


def barrier() -> None:
    """Wait until every process gets here (nothing without a process group)."""
    dist = _group()
    if dist is not None:
        dist.barrier()


def all_gather(tensor):
    """``tensor`` from every process, concatenated along dim 0 (a 0-dim tensor counts as one row).

    ``torch.distributed.all_gather`` into a list: gloo has no ``all_gather_into_tensor``, which
    accelerate's ``gather`` uses under DeepSpeed. Every process must pass the same shape.
    """
    import torch
    import torch.distributed as dist

    tensor = tensor.reshape(1) if tensor.dim() == 0 else tensor
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def resolve_precision(precision: str, use_cpu: bool = False) -> str:
    """``training.precision`` made concrete: ``auto`` is bf16 on a GPU that supports it, else fp32."""
    if precision != "auto":
        return precision
    import torch

    on_gpu = torch.cuda.is_available() and not use_cpu
    return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"


# the pod's terminationGracePeriodSeconds, set by the job builders: how long a stage has after SIGTERM
GRACE_ENV = "KUBERLHF_GRACE_PERIOD_S"


class StopSignal:
    """SIGTERM taken as a request to stop at the next safe point rather than at once: Kubernetes sends it
    to a pod it deletes, preempts or drains, then waits ``terminationGracePeriodSeconds``.

    Installed in the main thread for the duration of a training loop (``with StopSignal() as stop``);
    ``stop.requested(device)`` is collective: every process learns at the same step that one of them got
    the signal, so all save the same checkpoint. A second signal ends the process as if this were not
    installed; a checkpoint is sealed last, so one cut short is never taken for complete. ``stop.save_fits(seconds)``
    says whether a save that long still fits in the grace period (``KUBERLHF_GRACE_PERIOD_S``).
    """

    def __init__(self, signals: tuple[int, ...] | None = None,
                 then: str = "stopping after this step, with a checkpoint") -> None:
        self.signals = signals if signals is not None else (signal.SIGTERM,)
        self.then = then  # what the stage does about it, for the log
        self.received: int | None = None
        self.received_at = 0.0
        self._previous: dict[int, object] = {}
        grace = os.environ.get(GRACE_ENV, "")
        self.grace_s = float(grace) if grace.replace(".", "", 1).isdigit() else None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None:  # asked twice: stop now
            self.restore()
            os.kill(os.getpid(), signum)
            return
        self.received, self.received_at = signum, time.monotonic()
        log.warning("%s received: %s", signal.Signals(signum).name, self.then)

    @classmethod
    def finishing(cls) -> StopSignal:
        """For what a stage does after its last step (held-out scores, publishing): SIGTERM then lets it
        finish, the artifact complete, rather than losing the steps since the last checkpoint; a second
        signal stops it at once (the publish writes the manifest last: nothing cut short looks complete)."""
        return cls(then="finishing the artifact first (a second signal stops at once)")

    def requested(self, device: object = None) -> bool:
        """Whether any process of the run got the signal (collective under a process group)."""
        import torch

        local = torch.tensor([1.0 if self.received is not None else 0.0], device=device)
        return bool(all_gather(local).max().item() > 0)

    def left_s(self) -> float | None:
        """Seconds of the grace period left since the signal; None = no known grace period."""
        if self.grace_s is None or self.received is None:
            return None
        return self.grace_s - (time.monotonic() - self.received_at)

    def save_fits(self, save_s: float | None, device: object = None) -> bool:
        """Whether a save as long as ``save_s`` (the last one's; None = none yet) fits in what is left of the
        grace period, with half as much again and 5 s to spare; collective: False if not on any process."""
        import torch

        left = self.left_s()
        fits = left is None or save_s is None or left > 1.5 * save_s + 5.0
        return bool(all_gather(torch.tensor([1.0 if fits else 0.0], device=device)).min().item() > 0)

    def stopped(self, step: int, saved: bool, save_s: float | None = None) -> Exception:
        """The error (``errors.Preempted``: exit 128 + N) a run stopped at ``step`` ends with: that step's
        checkpoint sealed, or (``saved`` False) none begun, the grace period left being too short for one."""
        from kuberlhf.errors import Preempted

        signum = self.received or signal.SIGTERM
        name = signal.Signals(signum).name
        if saved:
            return Preempted(signum, f"stopped by {name} at step {step}: checkpoint-{step} is sealed; the same "
                                     "command resumes from it")
        return Preempted(signum, f"stopped by {name} at step {step} without a checkpoint: {self.left_s() or 0:.0f} s "
                                 f"of the grace period left, the last save took {save_s or 0:.0f} s; the same "
                                 "command resumes from the newest sealed checkpoint")
