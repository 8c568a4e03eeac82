"""ReST (Gulcehre et al. 2023): Grow samples from the policy, Improve it on those the reward model ranks high.

$ kuberlhf rest --config configs/rest/demo.yaml
$ kuberlhf rest --config configs/rest/demo.yaml iterations=3 "improve.thresholds=[0.5,0.7,0.9]" \
    output_dir=s3://bucket/runs/rest
$ torchrun --nproc_per_node 2 -m kuberlhf.cli rest --config configs/rest/demo.yaml output_dir=outputs/demo/rest-ddp

``iterations`` Grow steps, each followed by one Improve step per threshold. **Grow** samples K
responses per prompt from the current policy (batched, part N of iteration i seeded from
``sampling.seed + 1000 i + N``) and scores each with the reward model (and, on the demo task, the
gold judge). **Improve** step m keeps the samples whose reward is at least ``improve.thresholds[m]``
(a reward quantile of the Grow set, or an absolute value), rising with m, and fine-tunes with the
SFT loss (full or LoRA, DDP/DeepSpeed as the SFT stage) from the current policy, or, with
``improve.start_from=base`` (ReST-EM), from the SFT policy at each iteration's first step.

Each Grow and Improve step is an artifact of its own (``phase=grow|improve`` runs one: the pipeline's
steps): under ``output_dir/checkpoints/`` (``grow-I``, ``improve-I-M``), the last Improve's being the
stage's output. A killed run resumes at the step it was in: a Grow after its last sealed part, an
Improve from its last Trainer checkpoint. ``train_log.jsonl`` holds one row per Improve step: the
threshold, the kept-set size, the mean reward (and gold score) of the kept and of all samples, and
the policy's KL to the SFT policy and gold score on held-out prompts; reward rising while gold does
not is reward hacking.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from kuberlhf.errors import ConfigError
from kuberlhf.stages.rest.config import ImproveConfig, RestConfig
from kuberlhf.stages.rest.grow import grow, grow_settings
from kuberlhf.stages.rest.improve import improve, improve_settings, policy_history

log = logging.getLogger(__name__)

__all__ = ["ImproveConfig", "RestConfig", "grow", "improve", "run"]


def _join(uri: str, *names: str) -> str:
    return "/".join([uri.rstrip("/"), *names])


def _reuse(uri: str, settings: dict, what: str) -> bool:
    """Whether the step at ``uri`` is finished with these settings (then the loop goes on from it); a
    finished step made with other settings stops the run, naming the keys that changed."""
    from kuberlhf.artifacts import rundir
    from kuberlhf.artifacts.cards import read_metrics

    if not rundir.finished(uri):
        return False
    made = read_metrics(uri).get("settings", {})
    changed = sorted(k for k in set(made) | set(settings) if made.get(k) != settings.get(k))
    if changed:
        raise ConfigError(f"config key '{changed[0]}': {what} in {uri} was made with other settings "
                          f"({', '.join(changed)} changed); pass overwrite=true to start again")
    log.info("%s is done: going on from %s", what, uri)
    return True


def run(cfg: RestConfig) -> dict:
    """Run ReST (or one of its steps, ``phase``) and publish the final policy; returns its metrics."""
    from kuberlhf.artifacts import rundir
    from kuberlhf.artifacts.cards import read_metrics
    from kuberlhf.artifacts.s3 import configure_from
    from kuberlhf.distributed import barrier, init_distributed, is_world_main, local_main_first
    from kuberlhf.models import loading

    configure_from(cfg.storage)
    init_distributed(cfg.training.deepspeed)
    if cfg.phase == "grow":  # the history comes with the policy that grows (an Improve step's)
        with local_main_first():
            history = policy_history(loading.resolve_model_path(cfg.policy.name_or_path, "causal-lm",
                                                                cfg.sampling.seed))
        return grow(cfg, history)
    if cfg.phase == "improve":
        return improve(cfg)
    if cfg.overwrite or not rundir.finished(cfg.output_dir):  # finished: each step is reused below
        rundir.prepare_run(cfg.output_dir, "rest", cfg.overwrite, is_main=is_world_main())  # overwrite: all steps
    barrier()
    steps, sft = len(cfg.improve.thresholds), cfg.sft_policy
    policy, history, metrics = cfg.policy.name_or_path, [], {}
    for i in range(1, cfg.iterations + 1):
        grow_dir = _join(cfg.output_dir, rundir.CHECKPOINTS, f"grow-{i}")
        grow_cfg = replace(cfg, phase="grow", iteration=i, output_dir=grow_dir, overwrite=False, reference=sft,
                           policy=replace(cfg.policy, name_or_path=policy))
        if not _reuse(grow_dir, grow_settings(grow_cfg), f"grow {i}"):
            grow(grow_cfg, history)
        for m in range(1, steps + 1):
            last = i == cfg.iterations and m == steps
            out = cfg.output_dir if last else _join(cfg.output_dir, rundir.CHECKPOINTS, f"improve-{i}-{m}")
            step_cfg = replace(grow_cfg, phase="improve", step=m, samples=grow_dir, output_dir=out)
            if not _reuse(out, improve_settings(step_cfg), f"improve {i}.{m}"):
                metrics = improve(step_cfg, history)
            barrier()  # the step is published before anyone loads it
            metrics = read_metrics(out)
            history = list(metrics.get("rest_log", history))
            policy = out
            grow_cfg = replace(grow_cfg, policy=replace(cfg.policy, name_or_path=policy))
    return metrics
