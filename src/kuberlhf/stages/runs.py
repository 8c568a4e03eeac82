"""What every stage does first and last, whatever trains it (a TRL Trainer, the PPO loop, a loop of sealed
parts): :func:`open_run` sets the object store's defaults, checks the trackers, readies DeepSpeed and
prepares the run directory (refusing to clobber a finished artifact; every process alike, the main one
leases it); :func:`publish_files` stages an artifact's files and publishes it with its card and
``metrics.json`` (manifest last)."""

from __future__ import annotations

from typing import Any

from kuberlhf.artifacts import cards, rundir, tracking


def open_run(cfg: Any, stage: str, *, deepspeed_group: bool = False) -> rundir.RunDir:
    """The run directory of ``stage`` in ``cfg.output_dir``, after the shared set-up. ``deepspeed_group``: make
    DeepSpeed's process group now, before any model loads (the Trainer stages; PPO's accelerate makes its
    own)."""
    from kuberlhf.artifacts.s3 import configure_from
    from kuberlhf.distributed import init_deepspeed, is_world_main, restrict_deepspeed_loading

    configure_from(cfg.storage)
    training = getattr(cfg, "training", None)
    if training is not None:
        tracking.check(training)
        if deepspeed_group:
            init_deepspeed(training.deepspeed)
        if training.deepspeed:
            restrict_deepspeed_loading(training.deepspeed_unpickle)
    run_dir = rundir.prepare_run(cfg.output_dir, stage, cfg.overwrite, is_main=is_world_main(), cfg=cfg)
    if training is not None:
        tracking.tracking_env(training, run_dir)
    return run_dir


def publish_files(run_dir: rundir.RunDir, files: dict[str, str], metrics: dict, card: str) -> None:
    """Write ``files`` (name -> text) into the run's staging folder and publish it as the artifact."""
    staging = run_dir.staging
    staging.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (staging / name).write_text(text)
    cards.publish(run_dir, staging, metrics, card)
