"""Process-group facts read from the launcher's environment (torchrun, accelerate, deepspeed)."""

from __future__ import annotations

import os


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
