"""The skeleton every Trainer stage shares (sft, reward, dpo, rloo, grpo), with hooks for what differs.

:func:`run_trainer_stage` does, in order: storage defaults and DeepSpeed's process group (before any
model loads), the run directory (refusing to clobber a finished artifact), the stage's data, the
TRL config (``hooks.args``), the models and resume checkpoint (downloads once per node), the
trainer (``hooks.trainer``) with the callback that seals each checkpoint, training with resume,
the stage's own metrics (``hooks.metrics``), then the published model: full weights, or the LoRA
adapter under ``adapter/`` merged into a standalone model (:func:`kuberlhf.models.publish.save_policy`),
with the model card and ``metrics.json``, manifest last.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

from kuberlhf.artifacts import cards, checkpoints, rundir, tracking
from kuberlhf.data import DataStats
from kuberlhf.distributed import StopSignal

log = logging.getLogger(__name__)


@dataclass
class StageRun:
    """What the template hands the hooks: the run directory, the data and the resolved models."""

    run_dir: rundir.RunDir
    train: Any
    eval: Any | None
    stats: DataStats
    paths: dict[str, str]  # model role -> local path (or hub name) from_pretrained can load
    resume: str | None  # the checkpoint training resumes from
    tokenizer: Any = None  # the tokenizer published with the model (set by the trainer hook)


class TrainerHooks(Protocol):
    """What one Trainer stage supplies to :func:`run_trainer_stage`."""

    def args(self, cfg: Any, work: dict) -> Any:
        """The TRL config; ``work`` holds ``output_dir`` and the common TrainingArguments keywords."""

    def models(self, cfg: Any) -> dict[str, tuple[str, str, int]]:
        """Model role -> (name or path, task, seed): the models to fetch; ``policy`` is the trained one."""

    def trainer(self, cfg: Any, args: Any, run: StageRun, callbacks: list) -> Any:
        """The TRL trainer; sets ``run.tokenizer`` (the one published with the model)."""

    def metrics(self, cfg: Any, trainer: Any, run: StageRun, result: Any) -> dict:
        """Metrics beyond the common ones, computed on every process after training."""

    def held_out(self, cfg: Any, trainer: Any, run: StageRun, policy: Any) -> dict:
        """Metrics of the trained model on held-out data, on the main process only, before publishing."""


def start(cfg: Any, stage: str, kind: str) -> tuple[rundir.RunDir, tuple]:
    """The shared set-up (:func:`kuberlhf.stages.runs.open_run`, DeepSpeed's process group first), the run dir
    and the data of ``kind``."""
    from kuberlhf.data import load_data
    from kuberlhf.stages.runs import open_run

    run_dir = open_run(cfg, stage, deepspeed_group=True)
    return run_dir, load_data(cfg.data, kind, cfg.training.seed)


def train(trainer: Any, resume: str | None, finetune: str, stats: DataStats) -> tuple[Any, dict]:
    """Run a Trainer (resuming from ``resume`` when given); (result, the metrics every stage reports)."""
    rundir.check_same_checkpoint(resume)
    if resume:
        log.info("resuming from %s", resume)
    max_steps = trainer.args.max_steps
    if resume and 0 < max_steps <= rundir.step_of(resume) and hasattr(trainer, "_run_epoch"):
        # The run was killed after its last checkpoint (during its publish). Resuming there, transformers
        # fast-forwards the epoch to the checkpoint's batch and then trains one step past max_steps when
        # max_steps is not at an epoch's end; with nothing left to train, the epochs are skipped: the
        # checkpoint (weights, optimizer, DeepSpeed engine) is restored and training ends at once.
        log.info("%s is at training.max_steps=%d: nothing left to train", resume, max_steps)
        trainer._run_epoch = lambda *args, **kwargs: None
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {
        "train_loss": result.metrics["train_loss"],
        "train_runtime": result.metrics["train_runtime"],
        "global_step": trainer.state.global_step,
        "resumed_from_step": rundir.step_of(resume),
        "finetune": finetune,
        "data": stats.to_dict(),
    }
    return result, metrics


def trainer_kwargs(training: Any, work_dir: str) -> dict:
    """Keyword arguments of transformers' TrainingArguments (and TRL's configs) for a ``training`` section."""
    import torch

    from kuberlhf.distributed import resolve_precision

    on_gpu = torch.cuda.is_available() and not training.use_cpu
    precision = resolve_precision(training.precision, training.use_cpu)
    kwargs = {name: getattr(training, name) for name in _SAME_NAMES}
    # training.<key> pass-throughs of the TRL config win over what the section's own keys imply (bf16)
    kwargs.update(
        data_seed=training.seed,
        save_strategy="steps",
        eval_strategy="steps" if training.eval_steps else "no",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        report_to=[r for r in training.report_to if r != "none"] or "none",
        use_cpu=training.use_cpu or not torch.cuda.is_available(),
        ddp_backend="gloo" if not on_gpu and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        save_only_model=False,
        save_total_limit=None,  # rotation is the seal's (after it, counting sealed checkpoints only)
    )
    from transformers import TrainingArguments

    # transformers 5.2x renamed it (the old name warns until v6)
    renamed = "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    kwargs["activation_checkpointing" if renamed else "gradient_checkpointing"] = training.gradient_checkpointing
    kwargs.update(training.extra)
    return kwargs


# fields of the training section that TrainingArguments takes under the same name
_SAME_NAMES = (
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
    "max_grad_norm", "seed", "logging_steps", "save_steps", "eval_steps",
    "deepspeed", "run_name", "disable_tqdm", "dataloader_num_workers",
)


def checkpoint_callback(run: rundir.RunDir, keep: int) -> Any:
    """A TrainerCallback that seals each checkpoint the Trainer saves and keeps the staged artifact's
    ``train_log.jsonl`` (the Trainer's log history, resumed runs included) up to date."""
    from transformers import TrainerCallback

    class SealCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            checkpoints.seal_checkpoint_collective(run, f"checkpoint-{state.global_step}", keep)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero:
                cards.write_train_log(run.staging, state.log_history)

    return SealCheckpoint()


def config_callback(cfg: Any) -> Any:
    """A TrainerCallback that logs the stage's resolved config as the MLflow run's parameters once the Trainer's
    MLflowCallback (earlier in the list) has started the run and logged TrainingArguments and the model's config
    (whose names win: ``output_dir`` is the Trainer's checkpoints, the artifact's is the run's tag); the main
    process only."""
    from transformers import TrainerCallback

    class LogConfig(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero and "mlflow" in (args.report_to or []):
                config = getattr(model, "config", None)
                tracking.log_config(cfg, set(args.to_dict()) | set(config.to_dict() if config is not None else {}))

    return LogConfig()


def stop_callback(stop: Any) -> Any:
    """A TrainerCallback that, once any process got SIGTERM (``distributed.StopSignal``, asked on every
    process after every optimizer step), has the Trainer save (and the seal callback seal) that step's
    checkpoint and stop; ``stopped_at`` is then its step. When the grace period left cannot fit a save as
    long as the last one, it stops without starting one (``saved`` False): the previous checkpoint stays
    the newest."""
    import time

    from transformers import TrainerCallback

    class StopOnSignal(TrainerCallback):
        stopped_at: int | None = None
        saved = False
        save_s: float | None = None  # how long the last checkpoint took to save
        _save_started: float | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if stop.requested(args.device):
                self.stopped_at = state.global_step
                self.saved = stop.save_fits(self.save_s, args.device)
                control.should_save, control.should_training_stop = self.saved, True
            if control.should_save:
                self._save_started = time.monotonic()
            return control

        def on_save(self, args, state, control, **kwargs):
            if self._save_started is not None:
                self.save_s, self._save_started = time.monotonic() - self._save_started, None
            return control

    return StopOnSignal()


def run_trainer_stage(cfg: Any, stage: str, kind: str, hooks: TrainerHooks, *, merge_from_base: bool = False) -> dict:
    """Train one Trainer stage and publish its model to ``cfg.output_dir``; returns its metrics.

    ``merge_from_base``: merge a LoRA adapter into a fresh load of the ``policy`` base (QLoRA trains
    on a 4-bit base) rather than into the trained model in memory.
    """
    from kuberlhf.models import loading
    from kuberlhf.models.publish import ADAPTER, save_policy

    run_dir, (train_ds, eval_ds, stats) = start(cfg, stage, kind)
    args = hooks.args(cfg, {"output_dir": str(run_dir.checkpoints),
                            **trainer_kwargs(cfg.training, str(run_dir.work_dir))})
    from kuberlhf.distributed import barrier

    barrier()  # the world main's discard (overwrite=true) is done before any node looks for a checkpoint
    # Downloads happen once per node; loading is collective (ZeRO-3 partitions weights as they load).
    with args.main_process_first(local=True, desc="fetch models and checkpoint"):
        paths = {role: loading.resolve_model_path(name, task, seed)
                 for role, (name, task, seed) in hooks.models(cfg).items()}
        resume = rundir.resume_point(run_dir)
    run = StageRun(run_dir, train_ds, eval_ds, stats, paths, resume)
    with tracking.mlflow_run(cfg.training):  # the evaluation after training logs into the training's run
        with StopSignal() as stop:
            stopper = stop_callback(stop)
            callbacks = [checkpoint_callback(run_dir, cfg.training.save_total_limit), stopper, config_callback(cfg)]
            trainer = hooks.trainer(cfg, args, run, callbacks)
            result, metrics = train(trainer, resume, cfg.finetune, stats)
        if stopper.stopped_at is not None:
            raise stop.stopped(stopper.stopped_at, stopper.saved, stopper.save_s)
        with StopSignal.finishing():
            metrics.update(hooks.metrics(cfg, trainer, run, result))
    with StopSignal.finishing():
        staging = run_dir.staging
        lora = cfg.finetune != "full"
        trainer.save_model(str(staging / ADAPTER) if lora else str(staging))  # collective: gathers ZeRO-3 shards
        if trainer.is_world_process_zero():
            policy = trainer.accelerator.unwrap_model(trainer.model)
            metrics.update(hooks.held_out(cfg, trainer, run, policy))
            model_cfg = _trained_model_config(cfg)
            base = (lambda: loading.load_causal_lm(model_cfg, run.paths["policy"])) if merge_from_base else None
            save_policy(policy, run.tokenizer, staging, lora=lora, merge=lora and cfg.lora.merge, base=base,
                        saved=True)
            cards.collect_logs(run_dir.work_dir, staging)
            card = cards.model_card(stage, cfg, metrics, model_cfg.name_or_path)
            cards.publish(run_dir, staging, metrics, card)
    return metrics


def whole_policy(cfg: Any, run: StageRun, policy: Any) -> Any:
    """The trained policy for the held-out scores on the main process: ``policy`` itself, or under ZeRO-3
    (whose parameters are shards, and generate only together) a whole copy loaded from what the Trainer's
    save gathered into the staged artifact: the model, or the base with the adapter."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from kuberlhf.models import loading
    from kuberlhf.models.publish import ADAPTER

    if not is_deepspeed_zero3_enabled():
        return policy
    model_cfg, staging = _trained_model_config(cfg), run.run_dir.staging
    with loading.whole_under_zero3():
        if cfg.finetune == "full":
            return loading.load_causal_lm(model_cfg, str(staging))
        from peft import PeftModel

        return PeftModel.from_pretrained(loading.load_causal_lm(model_cfg, run.paths["policy"]), staging / ADAPTER)


def _trained_model_config(cfg: Any) -> Any:
    """The ModelConfig of the model a stage trains (``model`` or ``policy``)."""
    return cfg.model if hasattr(cfg, "model") else cfg.policy
