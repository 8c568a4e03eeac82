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

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from kuberlhf.config import option, require
from kuberlhf.config.sections import (
    DataConfig,
    LoraConfig,
    ModelConfig,
    StageConfig,
    TrainingConfig,
    check_trainer_stage,
)
from kuberlhf.errors import ConfigError, DataError
from kuberlhf.stages.generate import SamplingConfig
from kuberlhf.stages.sft import SftConfig, SftHooks
from kuberlhf.stages.trainer import StageRun

log = logging.getLogger(__name__)

SAMPLES, HISTORY, IMPROVE_LOG = "samples.jsonl", "history.jsonl", "sft_log.jsonl"


@dataclass
class ImproveConfig:
    thresholds: list[float] = option([0.5, 0.75], "one per Improve step, rising: the reward a kept sample reaches")
    threshold_kind: Literal["quantile", "absolute"] = option(
        "quantile", "quantile: a threshold is a quantile of the Grow set's rewards; absolute: a reward value")
    start_from: Literal["current", "base"] = option(
        "current", "current: fine-tune the policy further; base: from the SFT policy at each iteration (ReST-EM)")

    def __post_init__(self) -> None:
        t = self.thresholds
        require(len(t) > 0, "improve.thresholds", "needs at least one threshold (one per Improve step)")
        require(all(a < b for a, b in zip(t, t[1:], strict=False)), "improve.thresholds",
                f"must rise from step to step, got {t}")
        if self.threshold_kind == "quantile":
            require(all(0 <= q < 1 for q in t), "improve.thresholds", f"quantiles must be in [0, 1), got {t}")


@dataclass
class RestConfig(StageConfig):
    TRL_ARGS: ClassVar[str] = "SFTConfig"  # the Improve steps' TRL config; training.<key> may set its fields
    TRL_OWNED: ClassVar[tuple[str, ...]] = SftConfig.TRL_OWNED

    policy: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/sft"),
                                 "the SFT policy: where iteration 1 starts, the KL reference, ReST-EM's base")
    reward_model: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/reward"), "scores the Grow samples")
    data: DataConfig = option(DataConfig, "prompts of the Grow steps (data.train; data.max_rows takes the first N)")
    sampling: SamplingConfig = option(SamplingConfig, "Grow: K samples per prompt and how they are sampled")
    iterations: int = option(2, "Grow steps (N)")
    improve: ImproveConfig = option(ImproveConfig, "Improve steps after each Grow: thresholds and starting point")
    finetune: Literal["full", "lora"] = option("full", "Improve updates all weights, or a LoRA adapter (merged)")
    lora: LoraConfig = option(LoraConfig, "adapter settings (finetune=lora)")
    max_length: int = option(128, "tokens per Improve training sequence (prompt + response)")
    reward_max_length: int = option(512, "tokens of prompt + response the reward model reads")
    gold_prompts: str | None = option(
        None, "held-out prompts for the KL to the SFT policy and judge scores (e.g. demo://prompts?n=200&split=test)")
    gold_eval: bool = option(True, "score samples and policies with the gold judge where it applies (the demo task)")
    max_new_tokens: int = option(16, "response length of the held-out evaluation")
    save_every: int = option(256, "Grow prompts per sealed part (a killed Grow resumes after the last one)")
    training: TrainingConfig = option(TrainingConfig, "optimisation of each Improve step (SFT loss)")
    phase: Literal["all", "grow", "improve"] = option(
        "all", "all: the whole loop; grow or improve: one step into output_dir (the pipeline's steps)")
    iteration: int = option(1, "phase=grow|improve: the iteration the step belongs to")
    step: int = option(1, "phase=improve: the Improve step (its threshold is improve.thresholds[step - 1])")
    samples: str | None = option(None, "phase=improve: the Grow artifact to filter (local path or s3://)")
    reference: str | None = option(None, "the SFT policy when policy is a later one (phase=grow|improve)")

    def __post_init__(self) -> None:
        check_trainer_stage(self)
        require(self.iterations >= 1, "iterations", "must be at least 1")
        require(self.max_length > 0, "max_length", "must be positive")
        require(self.save_every > 0, "save_every", "must be positive")
        require(not self.data.streaming, "data.streaming", "Grow reads its prompts up front; set it to false")
        require(self.iteration >= 1, "iteration", "must be at least 1")
        require(1 <= self.step <= len(self.improve.thresholds), "step",
                f"must be in 1..{len(self.improve.thresholds)} (one per improve.thresholds)")
        require(self.phase != "improve" or bool(self.samples), "samples", "phase=improve needs the Grow artifact")

    @property
    def sft_policy(self) -> str:
        return self.reference or self.policy.name_or_path


# ---------------------------------------------------------------------------------------------- Grow

def _grow_settings(cfg: RestConfig) -> dict:
    return {"policy.name_or_path": cfg.policy.name_or_path, "reward_model.name_or_path": cfg.reward_model.name_or_path,
            "sampling": asdict(cfg.sampling), "iteration": cfg.iteration}


def _sample_ids(ids: list[str], k: int) -> list[str]:
    return [f"{pid}:{n}" for pid in ids for n in range(k)]


def score_part(rows: list[dict], reward: Any, gold: Any | None) -> list[dict]:
    """One row per sample (``id`` = prompt id : candidate number) with its reward (and gold score)."""
    samples = [{"id": f"{r['id']}:{n}", "prompt_id": r["id"], "prompt": r["prompt"], "response": text,
                "has_eos": r["has_eos"][n]} for r in rows for n, text in enumerate(r["candidates"])]
    prompts, responses = [s["prompt"] for s in samples], [s["response"] for s in samples]
    for s, value in zip(samples, reward.score(prompts, responses), strict=True):
        s["reward"] = float(value)
    if gold is not None:
        for s, value in zip(samples, gold.score(prompts, responses), strict=True):
            s["gold"] = float(value)
    return samples


def grow(cfg: RestConfig, history: list[dict] | None = None) -> dict:
    """One Grow step into ``cfg.output_dir``: K scored samples per prompt of ``cfg.policy``, in sealed parts
    that the processes of a torchrun share. ``history``: the ReST rows of the policy that grows (carried on)."""
    from kuberlhf.artifacts import cards, rundir
    from kuberlhf.data import load_data
    from kuberlhf.distributed import (
        all_gather_object,
        barrier,
        is_world_main,
        local_main_first,
        world_rank,
        world_size,
    )
    from kuberlhf.eval.judges import RewardModelJudge, pick_judge
    from kuberlhf.models import loading
    from kuberlhf.stages import parts as resumable
    from kuberlhf.stages.generate import generate_part, prompt_id

    run_dir = rundir.prepare_run(cfg.output_dir, "rest grow", cfg.overwrite, is_main=is_world_main(), cfg=cfg)
    barrier()
    data, _, stats = load_data(cfg.data, "prompt", cfg.sampling.seed)
    prompts = list(data["prompt"])
    ids = [prompt_id(i, p) for i, p in enumerate(prompts)]
    k, settings = cfg.sampling.num_candidates, _grow_settings(cfg)
    spans = resumable.spans(len(prompts), cfg.save_every)
    expected = [_sample_ids([ids[i] for i in span], k) for span in spans]
    # the main process reads what is sealed (downloading it, when remote); the others learn which parts
    sealed = resumable.sealed(run_dir, expected, settings, "data.train", "sampling") if is_world_main() else {}
    done_parts = all_gather_object(sorted(sealed))[0]
    todo = [p for p in range(len(spans)) if p not in done_parts and p % world_size() == world_rank()]
    started, generated = time.perf_counter(), 0
    if len(done_parts) < len(spans):
        with local_main_first():  # every process: one download of each model per node
            path = loading.resolve_model_path(cfg.policy.name_or_path, "causal-lm", cfg.sampling.seed)
            reward_path = loading.resolve_model_path(cfg.reward_model.name_or_path, "sequence-classification")
    if todo:
        tokenizer = loading.load_tokenizer(cfg.policy, path, padding_side="left")
        with loading.whole_under_zero3():
            policy = loading.load_causal_lm(cfg.policy, path)
        reward = RewardModelJudge.load(reward_path, cfg.reward_max_length)
        gold = pick_judge(prompts, gold=cfg.gold_eval, fallback=None)
        for part in resumable.each(todo):
            span = spans[part]
            rows, _ = generate_part(policy, tokenizer, [prompts[i] for i in span], [ids[i] for i in span],
                                    cfg.sampling, {}, cfg.sampling.seed + 1000 * cfg.iteration + part)
            resumable.seal(run_dir, part, score_part(rows, reward, gold), settings, len(spans))
            generated += len(span)
            log.info("grow %d, part %d/%d: %d prompts x %d samples", cfg.iteration, part + 1, len(spans), len(span), k)
    barrier()  # every process's parts are sealed
    if not is_world_main():
        barrier()
        return {}
    done = resumable.sealed(run_dir, expected, settings, "data.train", "sampling")
    missing = [p + 1 for p in range(len(spans)) if p not in done]
    if missing:
        raise DataError(f"grow {cfg.iteration}: parts {missing} were not sealed by their processes")
    samples = [s for part in range(len(spans)) for s in done[part]]
    metrics = {"phase": "grow", "iteration": cfg.iteration, "prompts": len(prompts), "samples": len(samples),
               "samples_per_prompt": k, "generated_prompts": generated,
               "seconds": time.perf_counter() - started, "settings": settings, "data": stats.to_dict(),
               **_means(samples, "all")}
    staging = run_dir.staging
    staging.mkdir(parents=True, exist_ok=True)
    _write_jsonl(staging / SAMPLES, samples)
    _write_jsonl(staging / HISTORY, history or [])
    card = (f"# ReST Grow {cfg.iteration}\n\n{len(samples)} samples ({len(prompts)} prompts x {k}) from "
            f"`{cfg.policy.name_or_path}`, each scored by `{cfg.reward_model.name_or_path}` (`kuberlhf rest`).\n")
    cards.publish(run_dir, staging, metrics, card)
    barrier()
    return metrics


def _means(samples: list[dict], which: str) -> dict:
    out = {f"reward_{which}": sum(s["reward"] for s in samples) / len(samples) if samples else 0.0}
    if samples and "gold" in samples[0]:
        out[f"gold_{which}"] = sum(s["gold"] for s in samples) / len(samples)
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------- Improve

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


def read_samples(uri: str) -> tuple[list[dict], list[dict]]:
    """(samples, history) of a Grow artifact (local path or ``s3://``)."""
    from kuberlhf.artifacts import storage

    local = storage.fetch_dir(uri) if storage.is_remote(uri) else Path(uri)
    if not (local / SAMPLES).is_file():
        raise DataError(f"config key 'samples': {uri} holds no {SAMPLES}; is it a `kuberlhf rest phase=grow` artifact?")
    samples = _read_jsonl(local / SAMPLES)
    for n, s in enumerate(samples):
        for key in ("prompt", "response", "reward"):
            if key not in s:
                raise DataError(f"{uri}/{SAMPLES} row {n}: missing field '{key}'")
    history = _read_jsonl(local / HISTORY) if (local / HISTORY).is_file() else []
    return samples, history


def policy_history(path: str) -> list[dict]:
    """The ReST rows of a policy's ``train_log.jsonl`` (an Improve artifact's); [] for any other model."""
    log_file = Path(path) / "train_log.jsonl"
    if not log_file.is_file():
        return []
    return [r for r in _read_jsonl(log_file) if "improve_step" in r]


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
                "settings": _improve_settings(self.rest)}

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
        _write_jsonl(trainer_log, rows)
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
           **_means(samples, "all"), **_means(kept, "kept")}
    log.info("improve %d.%d: %d of %d samples reach the threshold %.4g", cfg.iteration, cfg.step, len(kept),
             len(samples), threshold)
    # an empty response is no SFT example (the data loader refuses it): counted, not trained on
    trainable = [{"prompt": s["prompt"], "completion": s["response"]} for s in kept if s["response"].strip()]
    row["empty_dropped"] = len(kept) - len(trainable)
    if not trainable:
        raise DataError(f"config key 'improve.thresholds': step {cfg.step}'s threshold {threshold:.4g} keeps only "
                        f"empty responses ({len(kept)})")
    kept_file = Path(tempfile.mkdtemp(prefix="kuberlhf-rest-")) / "kept.jsonl"  # each process its own
    _write_jsonl(kept_file, trainable)
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


def _improve_settings(cfg: RestConfig) -> dict:
    training = {k: v for k, v in asdict(cfg.training).items() if k not in _MAY_CHANGE}
    return {"improve": asdict(cfg.improve), "finetune": cfg.finetune, "training": training,
            "iteration": cfg.iteration, "step": cfg.step}


# -------------------------------------------------------------------------------------- the whole loop

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
        if not _reuse(grow_dir, _grow_settings(grow_cfg), f"grow {i}"):
            grow(grow_cfg, history)
        for m in range(1, steps + 1):
            last = i == cfg.iterations and m == steps
            out = cfg.output_dir if last else _join(cfg.output_dir, rundir.CHECKPOINTS, f"improve-{i}-{m}")
            step_cfg = replace(grow_cfg, phase="improve", step=m, samples=grow_dir, output_dir=out)
            if not _reuse(out, _improve_settings(step_cfg), f"improve {i}.{m}"):
                metrics = improve(step_cfg, history)
            barrier()  # the step is published before anyone loads it
            metrics = read_metrics(out)
            history = list(metrics.get("rest_log", history))
            policy = out
            grow_cfg = replace(grow_cfg, policy=replace(cfg.policy, name_or_path=policy))
    return metrics
