"""K candidate responses per prompt from a policy: the material people rank (``kuberlhf feedback``).

$ kuberlhf generate --config configs/generate/demo.yaml
$ kuberlhf generate --config configs/generate/demo.yaml policy.name_or_path=s3://bucket/runs/sft \
    output_dir=s3://bucket/runs/candidates sampling.num_candidates=6

Prompts are taken in parts of ``save_every``; each finished part is sealed as a checkpoint
(``checkpoints/checkpoint-N``, uploaded at once when ``output_dir`` is ``s3://``), so a killed run
restarts after its last sealed part and regenerates nothing. Each part is sampled from its own seed
(``sampling.seed + N``): a resumed run writes what an uninterrupted one would. The artifact holds
``candidates.jsonl``: per prompt its ``id`` (stable: position and hash of the prompt), the
``prompt``, the K ``candidates``, the ``model`` and the ``generation`` settings.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from kuberlhf.config import option, require
from kuberlhf.config.sections import DataConfig, ModelConfig, StageConfig
from kuberlhf.data.formats import prompt_id

log = logging.getLogger(__name__)

CANDIDATES = "candidates.jsonl"


@dataclass
class SamplingConfig:
    num_candidates: int = option(4, "K: responses per prompt (InstructGPT ranks 4 to 9)")
    max_new_tokens: int = option(48, "longest response, in policy tokens")
    temperature: float = option(1.0, "sampling temperature")
    top_k: int = option(0, "top-k filter; 0 = off")
    top_p: float = option(1.0, "nucleus filter; 1.0 = off")
    batch_size: int = option(16, "prompts per generate call (each with its K candidates, KV cache on)")
    max_prompt_length: int | None = option(512, "policy tokens kept of a prompt (its end); None = no limit")
    seed: int = option(0, "sampling seed (part N samples from seed + N)")

    def __post_init__(self) -> None:
        require(self.num_candidates >= 2, "sampling.num_candidates", "must be at least 2 (a ranking needs two)")
        require(self.max_new_tokens > 0, "sampling.max_new_tokens", "must be positive")
        require(self.temperature > 0, "sampling.temperature", "must be positive")
        require(self.batch_size > 0, "sampling.batch_size", "must be positive")


@dataclass
class GenerateConfig(StageConfig):
    policy: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/sft"), "the policy that writes candidates")
    data: DataConfig = option(DataConfig, "prompts (data.train; data.max_rows takes the first N)")
    sampling: SamplingConfig = option(SamplingConfig, "how candidates are sampled")
    save_every: int = option(64, "prompts per sealed part (a killed run resumes after the last one)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.save_every > 0, "save_every", "must be positive")
        require(not self.data.streaming, "data.streaming", "generate reads its prompts up front; set it to false")
        require(self.data.eval is None and self.data.eval_fraction == 0, "data.eval",
                "generate takes one prompt source (data.train); unset data.eval and data.eval_fraction")


def _settings(cfg: GenerateConfig) -> dict:
    return {"model": cfg.policy.name_or_path, "generation": asdict(cfg.sampling)}


def generate_part(policy: Any, tokenizer: Any, prompts: list[str], ids: list[str], s: SamplingConfig,
                  settings: dict, seed: int) -> tuple[list[dict], int]:
    """K candidates for each of ``prompts`` (rows with their ``ids`` and ``settings``), sampled from ``seed``;
    (rows, prompts whose beginning was cut)."""
    import torch

    from kuberlhf.models import generation

    k = s.num_candidates
    torch.manual_seed(seed)
    rows, truncated = [], 0
    for i in range(0, len(prompts), s.batch_size):
        chunk = prompts[i : i + s.batch_size]
        with torch.no_grad():
            out = generation.sample(policy, tokenizer, [p for p in chunk for _ in range(k)],
                                    max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                                    top_p=s.top_p, max_prompt_length=s.max_prompt_length)
        truncated += out.prompts_truncated // k
        for j, prompt in enumerate(chunk):
            rows.append({"id": ids[i + j], "prompt": prompt, "candidates": out.texts[j * k : (j + 1) * k],
                         "has_eos": [bool(e) for e in out.has_eos[j * k : (j + 1) * k]], **settings})
    return rows, truncated


def run(cfg: GenerateConfig) -> dict:
    """Write ``candidates.jsonl`` (K candidates per prompt) to ``cfg.output_dir``; returns the metrics."""
    from kuberlhf.data import load_data
    from kuberlhf.models import loading
    from kuberlhf.stages import parts as resumable
    from kuberlhf.stages.runs import open_run, publish_files

    run_dir = open_run(cfg, "generate")
    data, _, stats = load_data(cfg.data, "prompt", cfg.sampling.seed)
    prompts = list(data["prompt"])
    ids = [prompt_id(i, p) for i, p in enumerate(prompts)]
    parts = resumable.spans(len(prompts), cfg.save_every)
    settings = _settings(cfg)
    done = resumable.sealed(run_dir, [[ids[i] for i in span] for span in parts], settings, "data.train", "sampling")
    if done:
        log.info("resuming: %d of %d parts already generated", len(done), len(parts))

    path = loading.resolve_model_path(cfg.policy.name_or_path, "causal-lm", cfg.sampling.seed)
    tokenizer = loading.load_tokenizer(cfg.policy, path, padding_side="left")
    policy = loading.load_causal_lm(cfg.policy, path)
    started, generated, truncated = time.perf_counter(), 0, 0
    for part in resumable.each(p for p in range(len(parts)) if p not in done):
        span = parts[part]
        rows, cut = generate_part(policy, tokenizer, [prompts[i] for i in span], [ids[i] for i in span],
                                  cfg.sampling, settings, cfg.sampling.seed + part)
        resumable.seal(run_dir, part, rows, settings, len(parts))
        done[part], generated, truncated = rows, generated + len(rows), truncated + cut
        log.info("part %d/%d: %d prompts", part + 1, len(parts), len(rows))
    seconds = time.perf_counter() - started

    rows = [row for part in range(len(parts)) for row in done[part]]
    k = cfg.sampling.num_candidates
    flat = [c for r in rows for c in r["candidates"]]
    metrics = {
        "prompts": len(rows),
        "candidates_per_prompt": k,
        "generated_prompts": generated,
        "resumed_prompts": len(rows) - generated,
        "prompts_truncated": truncated,
        "seconds": seconds,
        "candidates_per_second": generated * k / seconds if generated and seconds > 0 else 0.0,
        "mean_chars": sum(map(len, flat)) / len(flat),
        "eos_share": sum(e for r in rows for e in r["has_eos"]) / len(flat),
        "distinct_share": sum(len(set(r["candidates"])) for r in rows) / len(flat),
        "data": stats.to_dict(),
    }
    card = (f"# Candidates\n\n{len(rows)} prompts x {k} candidates from `{cfg.policy.name_or_path}` "
            f"(`kuberlhf generate`), for ranking with `kuberlhf feedback export`.\n")
    publish_files(run_dir, {CANDIDATES: "".join(json.dumps(r) + "\n" for r in rows)}, metrics, card)
    return metrics
