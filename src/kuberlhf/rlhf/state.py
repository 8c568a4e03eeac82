"""A PPO run's checkpoint: what :class:`~kuberlhf.rlhf.loop.PpoLoop` saves and restores so that a resumed run
continues exactly where it stopped (the learner's models and optimizers, the step, the KL controller, the
history, every process's random generators), and how its files load without running code."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kuberlhf.artifacts import checkpoints
from kuberlhf.errors import StorageError

log = logging.getLogger(__name__)


def save_checkpoint(loop: Any) -> None:
    """Write and seal ``checkpoint-<step>`` of ``loop`` (collective: every process calls it)."""
    acc = loop.accelerator
    name = f"checkpoint-{loop.step}"
    directory = loop.run_dir.checkpoints / name
    acc.wait_for_everyone()
    if acc.is_local_main_process:  # each node writes its own ranks' files on its own disk
        directory.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    loop.learner.save(directory, acc.is_main_process)  # collective under DeepSpeed
    if acc.is_main_process:
        state = {"step": loop.step, **loop.learner.state_dict(), "kl_ctl": loop.kl_ctl.state_dict(),
                 "history": loop.history}
        torch.save(state, directory / "state.pt")
    acc.wait_for_everyone()
    torch.save(rng_state(loop.generator), directory / f"rng_state_{acc.process_index}.pt")
    checkpoints.seal_checkpoint_collective(loop.run_dir, name, loop.cfg.training.save_total_limit)
    acc.wait_for_everyone()


def load_checkpoint(loop: Any, directory: Path) -> None:
    """Restore ``loop`` from a checkpoint :func:`save_checkpoint` wrote."""
    state = load_plain(directory / "state.pt")
    loop.step = state["step"]
    loop.learner.load(directory, state)
    loop.kl_ctl.load_state_dict(state["kl_ctl"])
    loop.history = state["history"]
    rng_file = directory / f"rng_state_{loop.accelerator.process_index}.pt"
    if not rng_file.exists():
        log.warning("%s is missing: this process's sampling does not continue where it stopped", rng_file)
    else:
        set_rng_state(load_plain(rng_file), loop.generator)


def rng_state(generator: torch.Generator) -> dict:
    """This process's random generators: Python's, NumPy's, torch's (CPU and CUDA) and the sampling one;
    tensors and plain data only, so that it loads with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
    }


def set_rng_state(rng: dict, generator: torch.Generator) -> None:
    random.setstate(rng["python"])
    n = rng["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    generator.set_state(rng["generator"])


def load_plain(path: Path) -> Any:
    """A ``torch.save`` file of tensors and plain data (dicts, lists, numbers, strings), loaded without
    running code: ``weights_only=True``. A checkpoint comes from the bucket on resume, and whoever can
    write there could plant a pickle that runs code on load; such a file is refused, naming it."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StorageError(f"{path}: refusing to load it: it holds objects other than tensors and plain data, "
                           f"and loading those could run code ({first})") from err
