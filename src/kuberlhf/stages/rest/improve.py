"""ReST's Improve step: fine-tune (SFT loss, through the Trainer template) on the Grow samples whose reward
reaches the step's threshold, a quantile of the Grow set's rewards or an absolute value, rising with the step."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from kuberlhf.errors import DataError
from kuberlhf.stages.rest.config import IMPROVE_LOG, RestConfig
from kuberlhf.stages.rest.grow import means, read_jsonl, read_samples, write_jsonl
from kuberlhf.stages.sft import SftConfig, SftHooks
from kuberlhf.stages.trainer import StageRun

log = logging.getLogger(__name__)


def threshold_of(rewards: list[float], cfg: RestConfig, step: int) -> float:
    """The reward a sample must reach to be kept in Improve step ``step`` (1-based)."""
    import numpy as np

    value = cfg.improve.thresholds[step - 1]
    if cfg.improve.threshold_kind == "absolute":
        return float(value)
    return float(np.quantile(np.asarray(rewards, dtype=np.float64), value))


def keep(samples: list[dict], cfg: RestConfig, step: int) -> tuple[list[dict], float]:
    """The samples Improve step ``step`` trains on and its threshold; one that keeps nothing is refused."""
    rewards = [s["reward"] for s in samples]
    threshold = threshold_of(rewards, cfg, step)
    kept = [s for s in samples if s["reward"] >= threshold]
    if not kept:
        raise DataError(f"config key 'improve.thresholds': step {step}'s threshold {threshold:.4g} keeps none of the "
                        f"{len(samples)} samples (highest reward {max(rewards):.4g})")
    return kept, threshold


def policy_history(path: str) -> list[dict]:
    """The ReST rows of a policy's ``train_log.jsonl`` (an Improve artifact's); [] for any other model."""
    log_file = Path(path) / "train_log.jsonl"
    if not log_file.is_file():
        return []
    return [r for r in read_jsonl(log_file) if "improve_step" in r]


@dataclass
class ImproveHooks(SftHooks):
    """The SFT hooks, with the SFT policy fetched too and the ReST figures added on the main process."""

    rest: RestConfig
    row: dict  # this step's ReST figures so far (kept set, threshold, rewards)
    history: list[dict] = field(default_factory=list)  # the rows of the steps before it (when not from the policy)

    def models(self, cfg: SftConfig) -> dict:
        return {**super().models(cfg), "reference": (self.rest.sft_policy, "causal-lm", cfg.training.seed)}

    def metrics(self, cfg: SftConfig, trainer: Any, run: StageRun, result: Any) -> dict:
        return {**super().metrics(cfg, trainer, run, result), "phase": "improve",
                "settings": improve_settings(self.rest)}

    def held_out(self, cfg: SftConfig, trainer: Any, run: StageRun, policy: Any) -> dict:
        from kuberlhf.models import loading
        from kuberlhf.stages.trainer import whole_policy

        row = dict(self.row)
        if self.rest.gold_prompts:
            from kuberlhf.data import load_examples
            from kuberlhf.eval.heldout import compare_to_reference

            prompts, _ = load_examples(self.rest.gold_prompts, "prompt", template_kwargs=cfg.data.template_kwargs)
            whole = whole_policy(cfg, run, policy)
            with loading.whole_under_zero3():
                reference = loading.load_causal_lm(self.rest.policy, run.paths["reference"])
            reference = reference.to(next(whole.parameters()).device)
            scores = compare_to_reference(whole, reference, run.tokenizer, list(prompts["prompt"]),
                                          max_new_tokens=self.rest.max_new_tokens, seed=cfg.training.seed,
                                          judge="gold" if self.rest.gold_eval else None)
            row.update({k: v for k, v in scores.items() if isinstance(v, float)})
            if "gold_score_after" in scores:
                row["eval_score"] = scores["gold_score_after"]
        staging = run.run_dir.staging
        staging.mkdir(parents=True, exist_ok=True)
        trainer_log = staging / "train_log.jsonl"
        if trainer_log.is_file():  # the Trainer's losses of this step
            trainer_log.rename(staging / IMPROVE_LOG)
        rows = [*self.history, {**row, "step": len(self.history) + 1}]
        write_jsonl(trainer_log, rows)
        return {**row, "rest_log": rows}


def improve(cfg: RestConfig, history: list[dict] | None = None) -> dict:
    """One Improve step into ``cfg.output_dir``: fine-tune on the Grow samples that reach the step's threshold.

    ``history``: the ReST rows before this step; None = read them from the Grow artifact (step 1) or the
    policy (a later step), as the pipeline's steps do."""
    from kuberlhf.artifacts.s3 import configure_from
    from kuberlhf.distributed import local_main_first
    from kuberlhf.models import loading
    from kuberlhf.stages.trainer import run_trainer_stage

    configure_from(cfg.storage)
    with local_main_first():  # one download per node
        samples, grow_history = read_samples(cfg.samples)
        if history is None:
            history = grow_history if cfg.step == 1 else policy_history(loading.resolve_model_path(
                cfg.policy.name_or_path, "causal-lm", cfg.training.seed))
    kept, threshold = keep(samples, cfg, cfg.step)
    start = cfg.sft_policy if cfg.improve.start_from == "base" and cfg.step == 1 else cfg.policy.name_or_path
    row = {"iteration": cfg.iteration, "improve_step": cfg.step, "threshold": threshold,
           "threshold_setting": cfg.improve.thresholds[cfg.step - 1], "kept": len(kept), "samples": len(samples),
           "kept_share": len(kept) / len(samples), "started_from": start,
           **means(samples, "all"), **means(kept, "kept")}
    log.info("improve %d.%d: %d of %d samples reach the threshold %.4g", cfg.iteration, cfg.step, len(kept),
             len(samples), threshold)
    # an empty response is no SFT example (the data loader refuses it): counted, not trained on
    trainable = [{"prompt": s["prompt"], "completion": s["response"]} for s in kept if s["response"].strip()]
    row["empty_dropped"] = len(kept) - len(trainable)
    if not trainable:
        raise DataError(f"config key 'improve.thresholds': step {cfg.step}'s threshold {threshold:.4g} keeps only "
                        f"empty responses ({len(kept)})")
    kept_file = Path(tempfile.mkdtemp(prefix="kuberlhf-rest-")) / "kept.jsonl"  # each process its own
    write_jsonl(kept_file, trainable)
    sft_cfg = SftConfig(output_dir=cfg.output_dir, overwrite=cfg.overwrite, storage=cfg.storage,
                        model=replace(cfg.policy, name_or_path=start),
                        data=replace(cfg.data, train=str(kept_file), eval=None, eval_fraction=0.0, max_rows=None),
                        finetune=cfg.finetune, lora=cfg.lora, max_length=cfg.max_length, packing=False,
                        completion_only_loss=True, training=cfg.training)
    hooks = ImproveHooks(rest=cfg, row=row, history=history)
    return run_trainer_stage(sft_cfg, "rest", "sft", hooks, merge_from_base=True)


# training keys a rerun may change without redoing a finished step: they shape no result
_MAY_CHANGE = {"disable_tqdm", "logging_steps", "save_steps", "save_total_limit", "report_to", "run_name",
               "dataloader_num_workers"}


def improve_settings(cfg: RestConfig) -> dict:
    """What an Improve step was made with: a finished one with other settings is not reused."""
    training = {k: v for k, v in asdict(cfg.training).items() if k not in _MAY_CHANGE}
    return {"improve": asdict(cfg.improve), "finetune": cfg.finetune, "training": training,
            "iteration": cfg.iteration, "step": cfg.step}
