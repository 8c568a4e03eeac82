"""The PPO training loop on transformers + accelerate (DDP or DeepSpeed ZeRO-2/3 under torchrun), resumable."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from kuberlhf.artifacts import rundir
from kuberlhf.config import flatten, to_dict
from kuberlhf.distributed import StopSignal, all_gather
from kuberlhf.errors import ConfigError, KuberlhfError
from kuberlhf.models import generation
from kuberlhf.models import loading as modeling
from kuberlhf.rlhf import learner as learners
from kuberlhf.rlhf import monitor, state
from kuberlhf.rlhf import policy as policies
from kuberlhf.rlhf import ppo_core as core
from kuberlhf.rlhf import rollout as rl

log = logging.getLogger(__name__)


class PpoLoop:
    """Owns the models, optimizers and state of one PPO run (see kuberlhf.stages.ppo)."""

    def __init__(self, cfg: Any, run_dir: rundir.RunDir):
        self.cfg, self.run_dir = cfg, run_dir
        self.zero = bool(cfg.training.deepspeed)
        self.save_s: float | None = None  # how long the last checkpoint took to save
        self._setup_accelerator()
        policy_path, reward_path = self._setup_paths()
        self.prompts, self.eval_prompts = self._load_prompts()
        self._setup_models(policy_path, reward_path)
        self._setup_state()

    # ------------------------------------------------------------------ set-up

    def _setup_accelerator(self) -> None:
        """The Accelerator (DDP or a DeepSpeed engine), and the seed of the new weights (value head, LoRA)."""
        t, a = self.cfg.training, self.cfg.ppo
        micro_batch = self.cfg.rollout.batch_size // a.num_mini_batches // a.gradient_accumulation_steps
        self.accelerator = learners.make_accelerator(t, micro_batch, a.gradient_accumulation_steps)
        self.device = self.accelerator.device
        torch.manual_seed(t.seed)  # the same new weights (value head, LoRA) on every process
        self.accelerator.wait_for_everyone()  # the main process has checked (or, on overwrite, cleared) output_dir

    def _setup_paths(self) -> tuple[str, str]:
        """Fetch the policy, the reward model and the checkpoint to resume from (once per node)."""
        cfg, acc = self.cfg, self.accelerator
        with acc.local_main_process_first():
            policy_path = modeling.resolve_model_path(cfg.policy.name_or_path, "causal-lm", cfg.training.seed)
            if cfg.judge.name_or_path:  # direct RLAIF: the judge's path, no reward model
                reward_path = modeling.resolve_model_path(cfg.judge.name_or_path, "causal-lm", cfg.training.seed)
            else:
                reward_path = modeling.resolve_model_path(
                    cfg.reward_model.name_or_path, "sequence-classification", cfg.training.seed
                )
            self.resume = rundir.resume_point(self.run_dir)  # downloaded on every node
        rundir.check_same_checkpoint(self.resume)
        if self.zero and cfg.eval.every_steps and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            raise ConfigError("config key 'eval.every_steps': not under ZeRO-3 (sharded weights generate only "
                              "together); use ZeRO-2 or score at the end only")
        if self.resume and Path(self.resume, "zero").is_dir() != self.zero:
            raise ConfigError(f"config key 'training.deepspeed': checkpoint {self.resume} was written "
                              f"{'with' if not self.zero else 'without'} DeepSpeed; resume it the same way")
        return policy_path, reward_path

    def _setup_models(self, policy_path: str, reward_path: str) -> None:
        """Tokenizers, the frozen reward model (or judge) and reference, and the learner (policy + value model)."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.training
        # Under DeepSpeed the weights come back from its own checkpoint once the engine exists.
        resume_weights = None if self.zero else self.resume
        self.tokenizer = modeling.load_tokenizer(cfg.policy, policy_path, padding_side="left")
        self.rater: Any = None
        if cfg.judge.name_or_path:  # direct RLAIF
            from kuberlhf.eval.constitution import PointJudge, load_judge

            self.rater = PointJudge(*load_judge(cfg.judge, reward_path, self.device, pointwise=True))
            self.reward_model, self.reward_tokenizer = None, None
        else:
            self.reward_tokenizer = modeling.load_tokenizer(cfg.reward_model, reward_path)
            self.reward_model = modeling.load_sequence_classifier(
                cfg.reward_model, reward_path, self.reward_tokenizer.pad_token_id
            ).to(self.device).eval()
            self.reward_model.requires_grad_(False)

        self.reference = None
        if cfg.finetune == "full":
            self.reference = modeling.load_causal_lm(cfg.policy, policy_path).to(self.device).eval()
            self.reference.requires_grad_(False)
        policy = learners.disable_dropout(policies.policy(cfg, policy_path, resume_weights))
        value = learners.disable_dropout(policies.value_model(cfg, policy_path, reward_path, self.tokenizer,
                                                             self.reward_model, self.reward_tokenizer))
        if resume_weights:
            from safetensors.torch import load_file

            value.load_state_dict(load_file(f"{resume_weights}/value.safetensors"))
        if t.gradient_checkpointing:
            learners.enable_checkpointing(policy)
            learners.enable_checkpointing(value)
        if self.zero:
            fresh = functools.partial(policies.policy, cfg, policy_path, None)  # the engine's whole copy
            self.learner: Any = learners.ZeroLearner(acc, policy, value, t, fresh, temperature=cfg.rollout.temperature)
        else:
            self.learner = learners.SeparateLearner(acc, policy, value, t, temperature=cfg.rollout.temperature)
        self.final: Any = None

    def _setup_state(self) -> None:
        """The KL controller, the step and history, the sampling seeds; then the checkpoint's state, if any."""
        a, t, acc = self.cfg.ppo, self.cfg.training, self.accelerator
        if a.adaptive_kl:
            self.kl_ctl = core.AdaptiveKLController(a.kl_coef, a.kl_target, a.kl_horizon)
        else:
            self.kl_ctl = core.FixedKLController(a.kl_coef)
        self.step = 0
        self.history: list[dict] = []
        self.truncated = {"prompts_truncated": 0, "reward_texts_truncated": 0}  # this process, this session
        torch.manual_seed(t.seed + acc.process_index)  # sampling differs between processes
        self.generator = torch.Generator().manual_seed(t.seed + acc.process_index)
        if self.resume:
            self._load_state(Path(self.resume))

    @property
    def judge(self) -> Any:
        r = self.cfg.rollout
        if self.rater is not None:  # direct RLAIF: the gold judge where it applies, else the AI judge
            from kuberlhf.eval.judges import pick_judge

            return pick_judge(self.eval_prompts, gold=self.cfg.gold_eval, fallback=lambda: self.rater)
        return monitor.run_judge(self.cfg.gold_eval, self.eval_prompts, self.reward_model, self.reward_tokenizer,
                                  r.reward_max_length)

    def _score_now(self) -> float:
        """The judge's score of the current policy on the first ``eval.prompts`` held-out prompts (every process
        generates; ZeRO-3 is refused at set-up), the same prompts and seed each time."""
        prompts = self.eval_prompts[: self.cfg.eval.prompts]
        return monitor.judge_score(self.learner.policy, self.tokenizer, prompts, self.judge,
                                   max_new_tokens=self.cfg.rollout.max_new_tokens, seed=self.cfg.training.seed)

    def _load_prompts(self) -> tuple[list[str], list[str]]:
        from kuberlhf.data import load_data

        train, held_out, _ = load_data(self.cfg.data, "prompt", self.cfg.training.seed)
        return list(train["prompt"]), list(held_out["prompt"]) if held_out is not None else []

    # ------------------------------------------------------------------ rollout

    def _batch_prompts(self, step: int) -> list[str]:
        acc = self.accelerator
        return rl.batch_prompts(self.prompts, step, self.cfg.rollout.batch_size, acc.process_index,
                                acc.num_processes, self.cfg.training.seed)

    def rollout(self, prompts: list[str]) -> generation.Samples:
        """This process's samples for ``prompts``; under ZeRO-3 the policy's weights are gathered once for
        them (``rollout.gather_for_generation``), else each token gathers them layer by layer."""
        r = self.cfg.rollout
        with self.learner.generating(r.gather_for_generation) as synced_gpus:
            return generation.sample(
                self.learner.policy,
                self.tokenizer,
                prompts,
                max_new_tokens=r.max_new_tokens,
                temperature=r.temperature,
                top_k=r.top_k,
                top_p=r.top_p,
                stop_at_eos=r.stop_at_eos,
                synced_gpus=synced_gpus,
                max_prompt_length=r.max_prompt_length,
            )

    @torch.no_grad()
    def score(self, samples: generation.Samples) -> rl.RolloutBatch:
        """Old log-probs, reference log-probs, values, scores, rewards and advantages of ``samples``.

        Every forward pass (old log-probs, reference log-probs, values, reward model) runs
        ``rollout.forward_batch_size`` rows at a time; log-probs are at the sampling temperature, for
        the policy and the reference alike; no entropies (the update logs them).
        """
        a, r = self.cfg.ppo, self.cfg.rollout
        mask, start, size = samples.mask, samples.start, r.forward_batch_size
        policy = self.learner.policy

        def logprobs_of(model: Any):
            return lambda ids, attn: generation.sequence_logprobs(model, ids, attn, start, r.temperature,
                                                                  entropy=False)[0]

        logprobs = rl.in_chunks(logprobs_of(policy), samples, size)
        if self.reference is not None:
            ref_logprobs = rl.in_chunks(logprobs_of(self.reference), samples, size)
        else:
            with policy.disable_adapter():
                ref_logprobs = rl.in_chunks(logprobs_of(policy), samples, size)
        old_values = rl.in_chunks(lambda ids, attn: self.learner.value(ids, attn)[:, start - 1 : -1].float(),
                                  samples, size)
        counts: dict = {}
        if self.rater is not None:  # direct RLAIF: the judge's mean log-odds of yes
            scores = torch.tensor(self.rater.score(samples.prompts, samples.texts),
                                  dtype=torch.float32, device=self.device)
        else:
            texts = [p + t for p, t in zip(samples.prompts, samples.texts, strict=True)]
            scores = rl.reward_scores(self.reward_model, self.reward_tokenizer, texts, r.reward_max_length,
                                      size or len(texts), counts).to(self.device)
        self.truncated["reward_texts_truncated"] += counts.get("truncated", 0)
        self.truncated["prompts_truncated"] += samples.prompts_truncated
        rl.check_finite_everywhere("reward", scores)
        if r.missing_eos_penalty is not None:
            scores = scores - r.missing_eos_penalty * (~samples.has_eos.to(self.device)).float()
        if a.reward_clip is not None:
            scores = scores.clamp(-a.reward_clip, a.reward_clip)
        kl = core.kl_estimate(logprobs, ref_logprobs, a.kl_estimator) * mask
        rewards, _ = core.per_token_rewards(scores, kl, self.kl_ctl.value, mask)
        if a.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = core.gae(rewards, old_values, mask, a.gamma, a.lam)
        return rl.RolloutBatch(samples, logprobs=logprobs, ref_logprobs=ref_logprobs, values=old_values, scores=scores,
                            kl=kl, advantages=core.masked_whiten(advantages, mask), returns=returns)

    # ------------------------------------------------------------------ update

    def update(self, batch: rl.RolloutBatch) -> dict:
        """``ppo.num_ppo_epochs`` passes over the batch in ``ppo.num_mini_batches`` mini-batches, one optimizer
        step each, every mini-batch in ``ppo.gradient_accumulation_steps`` micro-batches whose gradients add up.

        A micro-batch's loss is its masked means times its share of the mini-batch's response tokens
        (:func:`micro_batch_weight`), so the accumulated gradient is the mini-batch's own: the update and the
        logged losses are those of one forward-backward over the whole mini-batch.
        """
        a, samples = self.cfg.ppo, batch.samples
        lr = self.learner.learning_rate()  # the policy's, for this step
        # no dropout anywhere in PPO (as in TRL): ratio 1 at the first mini-batch
        self.learner.update_mode(self.cfg.training.gradient_checkpointing)
        size = batch.size
        mb = size // a.num_mini_batches
        micro = mb // a.gradient_accumulation_steps
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clip_fraction", "entropy")}
        skipped = 0
        for _ in range(a.num_ppo_epochs):
            order = torch.randperm(size, generator=self.generator)
            for i in range(0, size, mb):
                mini = order[i : i + mb].to(self.device)
                tokens = samples.mask[mini].sum()
                sums = dict.fromkeys(stats, 0.0)
                applied = 0.0  # the share of the mini-batch's tokens whose loss went into the gradients
                for j in range(0, mb, micro):
                    idx = mini[j : j + micro]
                    last = j + micro >= mb
                    skip, weight, micro_stats = self._micro_batch(batch, idx, tokens, sync=last, pending=applied > 0)
                    if skip:
                        skipped += 1
                        continue
                    applied += weight
                    for k, v in micro_stats.items():
                        sums[k] += weight * v
                if applied > 0:
                    self.learner.step()
                    for k in stats:
                        stats[k].append(sums[k] / applied)
        self.learner.end_step()
        out = {k: sum(v) / len(v) if v else float("nan") for k, v in stats.items()}
        out["skipped_minibatches"] = skipped
        out["learning_rate"] = lr
        return out

    def _micro_batch(self, batch: rl.RolloutBatch, idx: torch.Tensor, tokens: torch.Tensor, *, sync: bool,
                     pending: bool) -> tuple[bool, float, dict[str, float]]:
        """Forward and backward of the rows ``idx`` of a mini-batch of ``tokens`` response tokens; ``sync`` on its
        last micro-batch. Returns (skipped, weight, its unweighted stats).

        A micro-batch whose ratio exceeds ``ppo.ratio_threshold`` (on any process: all decide alike) is left
        out. Left out as the last one while earlier ones are ``pending``, it still runs a backward of a zero
        loss with ``sync``: DDP's all-reduce and DeepSpeed's accumulation boundary come with the last backward.
        """
        a, samples = self.cfg.ppo, batch.samples
        ids, attn, mask = samples.input_ids[idx], samples.attention_mask[idx], samples.mask[idx]
        # values[t] = V(state before response token t): the value head at position start + t - 1
        logprobs, entropy, new_values = self.learner.forward(ids, attn, samples.start)
        pg, pstats = core.policy_loss(logprobs, batch.logprobs[idx], batch.advantages[idx], mask, a.clip_range)
        ratio_max = all_gather(torch.as_tensor(float(pstats["ratio_max"]), device=self.device)).max()
        if ratio_max > a.ratio_threshold:  # decided on every process alike, so DDP stays in step
            if sync and pending:
                zero = 0.0 * (core.masked_mean(logprobs, mask) + core.masked_mean(new_values, mask))
                rl.check_finite_everywhere("loss", zero)
                self.learner.backward(zero, sync=True)
            return True, 0.0, {}
        vf, _ = core.value_loss(new_values, batch.values[idx], batch.returns[idx], mask, a.clip_range_value)
        weight = micro_batch_weight(mask, tokens)
        loss = (pg + a.vf_coef * vf) * weight
        rl.check_finite_everywhere("loss", loss)
        self.learner.backward(loss, sync=sync)
        return False, weight, {"policy_loss": pg.item(), "value_loss": vf.item(),
                               "clip_fraction": float(pstats["clip_fraction"]),
                               "entropy": core.masked_mean(entropy, mask).item()}

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict:
        acc, t = self.accelerator, self.cfg.training
        started = time.perf_counter()
        if self.resume:
            log.info("resuming from %s at step %d", self.resume, self.step)
        trackers = [r for r in t.report_to if r != "none"]
        if trackers:
            acc.init_trackers(t.run_name or "kuberlhf-ppo", config=flatten(to_dict(self.cfg)),
                              init_kwargs={"mlflow": {"run_name": t.run_name}})
        progress = tqdm(total=t.max_steps, initial=self.step, desc="ppo",
                        disable=t.disable_tqdm or not acc.is_main_process)
        with StopSignal() as self.stop_signal:
            return self._train_steps(progress, trackers, started)

    def _train_steps(self, progress: Any, trackers: list, started: float) -> dict:
        acc, t, a = self.accelerator, self.cfg.training, self.cfg.ppo
        stopped = ""
        gen_time, train_time, samples = 0.0, 0.0, 0
        while self.step < t.max_steps:
            t0 = time.perf_counter()
            with acc.autocast():  # training.precision; the prepared models' updates run under the same
                sampled = self.rollout(self._batch_prompts(self.step))
            t1 = time.perf_counter()
            try:
                with acc.autocast():
                    batch = self.score(sampled)
                stats = self.update(batch)
            except core.NonFiniteError as err:
                last = rundir.latest_checkpoint(self.run_dir) if acc.is_main_process else None
                raise KuberlhfError(
                    f"stopping at step {self.step + 1}: {err}; the last complete checkpoint is {last or 'none'}"
                ) from None
            t2 = time.perf_counter()
            gen_time, train_time = gen_time + (t1 - t0), train_time + (t2 - t1)
            mask = sampled.mask
            seq_kl = all_gather(batch.kl.sum(1)).mean().item()
            n = all_gather(torch.tensor([mask.shape[0]], device=self.device)).sum().item()
            samples += n
            self.kl_ctl.update(seq_kl, n)
            self.step += 1
            record = {
                "step": self.step,
                "reward": all_gather(batch.scores).mean().item(),
                "kl": seq_kl,
                "kl_coef": float(self.kl_ctl.value),
                "response_length": all_gather(mask.sum(1)).float().mean().item(),
                "generation_share": (t1 - t0) / (t2 - t0),
                "samples_per_second": n / (t2 - t0),
                **stats,
            }
            if self.cfg.eval.every_steps and self.step % self.cfg.eval.every_steps == 0 and self.eval_prompts:
                record["eval_score"] = self._score_now()
            self.history.append(record)
            progress.update(1)
            progress.set_postfix(reward=f"{record['reward']:.3g}", kl=f"{seq_kl:.3g}")
            if trackers:
                acc.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=self.step)
            if self.step % self.cfg.training.logging_steps == 0 or self.step == 1:
                log.info("ppo %s", " ".join(f"{k}={v:.4g}" for k, v in record.items()))
            if seq_kl > a.max_kl:
                stopped = f"mean KL {seq_kl:.3g} exceeded ppo.max_kl={a.max_kl} at step {self.step}"
                log.warning("stopping early: %s", stopped)
            preempted = self.stop_signal.requested(self.device)  # collective: the same answer everywhere
            save = preempted and self.stop_signal.save_fits(self.save_s, self.device)
            if self.step % t.save_steps == 0 or stopped or save:
                self.save_checkpoint()
            if preempted:
                raise self.stop_signal.stopped(self.step, save, self.save_s)
            if stopped:
                break
        progress.close()
        if trackers:
            acc.end_training()
        elapsed = time.perf_counter() - started
        self.final = self.learner.final_policy()  # gathered from the shards under ZeRO-3 (all processes)
        metrics = monitor.final_metrics(self, gen_time, train_time, samples, elapsed)
        metrics["stopped_early"] = stopped
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> None:
        started = time.perf_counter()
        state.save_checkpoint(self)
        self.save_s = time.perf_counter() - started  # what the next one needs of a grace period

    def _load_state(self, directory: Path) -> None:
        state.load_checkpoint(self, directory)


def micro_batch_weight(mask: torch.Tensor, tokens: torch.Tensor) -> float:
    """A micro-batch's share of its mini-batch's response tokens: ``sum(mask) / tokens``.

    The losses are masked means over tokens, so the mini-batch's loss is the sum over its micro-batches of
    each one's masked mean times this share (``sum_i n_i / N * (S_i / n_i) = sum_i S_i / N``); an equal
    1/k per micro-batch would be a different loss wherever their response lengths differ.
    """
    return float(mask.sum() / tokens)
