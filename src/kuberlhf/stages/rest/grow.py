"""ReST's Grow step: K samples per prompt from the current policy, each scored by the reward model (and, on the
demo task, the gold judge), in sealed parts that the processes of a torchrun share; and how a Grow artifact
is read back."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kuberlhf.errors import DataError
from kuberlhf.stages.rest.config import HISTORY, SAMPLES, RestConfig

log = logging.getLogger(__name__)


def grow_settings(cfg: RestConfig) -> dict:
    """What a Grow step was made with: a finished one with other settings is not reused."""
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
    from kuberlhf.data import load_data
    from kuberlhf.data.formats import prompt_id
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
    from kuberlhf.stages.generate import generate_part
    from kuberlhf.stages.runs import open_run, publish_files

    run_dir = open_run(cfg, "rest grow")
    barrier()
    data, _, stats = load_data(cfg.data, "prompt", cfg.sampling.seed)
    prompts = list(data["prompt"])
    ids = [prompt_id(i, p) for i, p in enumerate(prompts)]
    k, settings = cfg.sampling.num_candidates, grow_settings(cfg)
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
               **means(samples, "all")}
    card = (f"# ReST Grow {cfg.iteration}\n\n{len(samples)} samples ({len(prompts)} prompts x {k}) from "
            f"`{cfg.policy.name_or_path}`, each scored by `{cfg.reward_model.name_or_path}` (`kuberlhf rest`).\n")
    publish_files(run_dir, {SAMPLES: jsonl(samples), HISTORY: jsonl(history or [])}, metrics, card)
    barrier()
    return metrics


def means(samples: list[dict], which: str) -> dict:
    """The mean reward (and gold score) of ``samples``, keyed ``reward_<which>`` (``gold_<which>``)."""
    out = {f"reward_{which}": sum(s["reward"] for s in samples) / len(samples) if samples else 0.0}
    if samples and "gold" in samples[0]:
        out[f"gold_{which}"] = sum(s["gold"] for s in samples) / len(samples)
    return out


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text(jsonl(rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_samples(uri: str) -> tuple[list[dict], list[dict]]:
    """(samples, history) of a Grow artifact (local path or ``s3://``)."""
    from kuberlhf.artifacts import storage

    local = storage.fetch_dir(uri) if storage.is_remote(uri) else Path(uri)
    if not (local / SAMPLES).is_file():
        raise DataError(f"config key 'samples': {uri} holds no {SAMPLES}; is it a `kuberlhf rest phase=grow` artifact?")
    samples = read_jsonl(local / SAMPLES)
    for n, s in enumerate(samples):
        for key in ("prompt", "response", "reward"):
            if key not in s:
                raise DataError(f"{uri}/{SAMPLES} row {n}: missing field '{key}'")
    history = read_jsonl(local / HISTORY) if (local / HISTORY).is_file() else []
    return samples, history
