"""AI feedback (RLAIF): a judge model, guided by a written constitution, labels which candidate is better.

$ kuberlhf rlaif --config configs/rlaif/demo.yaml
$ kuberlhf rlaif --config configs/rlaif/demo.yaml judge.name_or_path=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf \
    data.train=outputs/demo/candidates constitution=configs/constitutions/helpful-harmless.yaml

For each prompt of a candidates dataset (``kuberlhf generate``) every pair of its candidates is
judged under a principle drawn for it from the constitution (:mod:`kuberlhf.eval.constitution`):
the judge's probabilities of the answer tokens "A"/"B", both orders averaged. Pairs below
``labeling.min_confidence`` are dropped. With ``labeling.mode=pointwise`` the judge answers the
constitution's yes/no ``questions`` about each candidate instead, and a pair's P(first better) is
the sigmoid of the difference of the two candidates' log-odds of "Yes" (no order shown, none to
flip). The artifact is the preference dataset the reward stage reads (``train.jsonl``,
``eval.jsonl`` held out by prompt), each pair with the judge's confidence and its principle;
``metrics.json`` reports pairs judged and kept, the share whose label flips with the order, a
confidence histogram and, on the demo task, the agreement with the gold judge. The pass is
resumable in sealed parts, as ``generate``'s is.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass
from itertools import combinations
from typing import Literal

from kuberlhf.config import option, require
from kuberlhf.config.sections import DataConfig, ModelConfig, StageConfig
from kuberlhf.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class LabelingConfig:
    mode: Literal["pairwise", "pointwise"] = option(
        "pairwise", "pairwise: the judge compares the two responses (A or B, both orders); pointwise: it answers "
        "the constitution's yes/no questions about each response, P(i better) = sigmoid of the log-odds' difference")
    min_confidence: float = option(0.0, "drop pairs whose |2 P(first better) - 1| is below this (0 = keep all)")
    batch_size: int = option(8, "judge texts per forward pass")
    max_length: int = option(1024, "judge tokens per text (longer ones lose their beginning)")
    eval_fraction: float = option(0.1, "share of the prompts whose pairs are held out (eval.jsonl)")
    prefix_cache: bool = option(True, "run the beginning a batch's texts share once, on a KV cache")
    seed: int = option(0, "seed of the principles drawn and of the held-out prompts")

    def __post_init__(self) -> None:
        require(0 <= self.min_confidence < 1, "labeling.min_confidence", "must be in [0, 1)")
        require(self.batch_size > 0, "labeling.batch_size", "must be positive")
        require(0 <= self.eval_fraction < 1, "labeling.eval_fraction", "must be in [0, 1)")


@dataclass
class RlaifConfig(StageConfig):
    judge: ModelConfig = option(ModelConfig(name_or_path="outputs/demo/sft"),
                                "the judge: any causal LM a stage loads (local, s3://, hub name, a .gguf file)")
    constitution: str = option("configs/constitutions/demo.yaml", "the principles (and few-shot examples), YAML")
    data: DataConfig = option(DataConfig, "the candidates to label (data.train: a `kuberlhf generate` artifact)")
    labeling: LabelingConfig = option(LabelingConfig, "how pairs are judged and kept")
    save_every: int = option(64, "prompts per sealed part (a killed run resumes after the last one)")
    gold_eval: bool = option(True, "report agreement with the gold judge where it applies (the demo task)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.save_every > 0, "save_every", "must be positive")
        require(not self.data.streaming, "data.streaming", "rlaif reads its candidates up front; set it to false")


def _principle(rng_seed: int, task: str, i: int, j: int, principles: list[str]) -> str:
    return random.Random(f"{rng_seed}:{task}:{i}:{j}").choice(principles)


def _label_part(ask, constitution, rows: list[dict], seed: int, mode: str = "pairwise") -> list[dict]:
    from kuberlhf.eval.constitution import judge_pairs, point_scores, point_verdict

    if mode == "pointwise":
        items = [(r["prompt"], c) for r in rows for c in r["candidates"]]
        scores = iter(point_scores(ask, constitution, items))
        per_row = {r["id"]: [next(scores) for _ in r["candidates"]] for r in rows}
        asked = " / ".join(constitution.questions)
        jobs = [(row, i, j, asked) for row in rows for i, j in combinations(range(len(row["candidates"])), 2)]
        verdicts = [point_verdict(per_row[r["id"]][i], per_row[r["id"]][j]) for r, i, j, _ in jobs]
    else:
        jobs = [(row, i, j, _principle(seed, row["id"], i, j, constitution.principles))
                for row in rows for i, j in combinations(range(len(row["candidates"])), 2)]
        verdicts = judge_pairs(ask, constitution, [(p, r["prompt"], r["candidates"][i], r["candidates"][j])
                                                   for r, i, j, p in jobs])
    out: dict[str, dict] = {r["id"]: {"id": r["id"], "verdicts": []} for r in rows}
    for (row, i, j, principle), v in zip(jobs, verdicts, strict=True):
        out[row["id"]]["verdicts"].append({"i": i, "j": j, "principle": principle, "p_first": v.p_first,
                                           "forward": v.forward, "backward": v.backward})
    return list(out.values())


def pairs_of(rows: list[dict], labeled: list[dict], min_confidence: float) -> tuple[list[dict], dict]:
    """Preference pairs from the verdicts (ties and pairs below the confidence threshold dropped) and counts."""
    from collections import Counter

    from kuberlhf.data.pairs import unusable_pair
    from kuberlhf.eval.constitution import both_orders

    by_id = {r["id"]: r for r in rows}
    pairs, judged, flipped, dropped, confidences = [], 0, 0, Counter(), []
    for item in labeled:
        row = by_id[item["id"]]
        for v in item["verdicts"]:
            verdict = both_orders(v["forward"], v["backward"])
            judged += 1
            flipped += verdict.flipped
            confidences.append(verdict.confidence)
            if verdict.p_first == 0.5 or verdict.confidence < min_confidence:
                continue
            win, lose = (v["i"], v["j"]) if verdict.p_first > 0.5 else (v["j"], v["i"])
            chosen, rejected = row["candidates"][win], row["candidates"][lose]
            if why := unusable_pair(chosen, rejected):
                dropped[why] += 1
                continue
            pairs.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, "task": row["id"],
                          "chosen_index": win, "rejected_index": lose, "confidence": verdict.confidence,
                          "principle": v["principle"]})
    histogram = [0] * 10
    for c in confidences:
        histogram[min(int(c * 10), 9)] += 1
    return pairs, {"pairs_judged": judged, "pairs_kept": len(pairs), "identical_pairs_dropped": dropped["identical"],
                   "empty_pairs_dropped": dropped["empty"],
                   "flip_share": flipped / judged if judged else 0.0,
                   "mean_confidence": sum(confidences) / len(confidences) if confidences else 0.0,
                   "confidence_histogram": histogram}


def gold_agreement(pairs: list[dict]) -> float | None:
    """Share of kept pairs the gold judge orders the same way (pairs it scores equal aside); None off the demo."""
    from kuberlhf.eval.judges import get_judge

    judge = get_judge("gold")
    if not pairs or not judge.applies([p["prompt"] for p in pairs]):
        return None
    chosen = judge.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = judge.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    decided = [(c, r) for c, r in zip(chosen, rejected, strict=True) if c != r]
    return sum(c > r for c, r in decided) / len(decided) if decided else None


def run(cfg: RlaifConfig) -> dict:
    """Label the candidates' pairs with the judge and publish the preference dataset; returns the metrics."""
    from kuberlhf.data import load_data
    from kuberlhf.data.formats import with_ids
    from kuberlhf.data.pairs import pair_files, split_by_task
    from kuberlhf.eval.constitution import ModelJudge, load_constitution
    from kuberlhf.models import loading
    from kuberlhf.stages import parts as resumable
    from kuberlhf.stages.runs import open_run, publish_files

    constitution = load_constitution(cfg.constitution)  # a local file, checked before the run dir is made
    if cfg.labeling.mode == "pointwise" and not constitution.questions:
        raise ConfigError(f"config key 'labeling.mode': pointwise judging needs the constitution's yes/no 'questions'; "
                          f"{cfg.constitution} has none")
    run_dir = open_run(cfg, "rlaif")
    data, _, stats = load_data(cfg.data, "candidates", cfg.labeling.seed)
    rows = with_ids(data, cfg.data.train)
    path = loading.resolve_model_path(cfg.judge.name_or_path, "causal-lm", cfg.labeling.seed)
    tokenizer = loading.load_tokenizer(cfg.judge, path, padding_side="left")
    ask = ModelJudge(loading.load_causal_lm(cfg.judge, path), tokenizer, cfg.labeling.batch_size,
                     cfg.labeling.max_length, prefix_cache=cfg.labeling.prefix_cache,
                     labels=constitution.answers if cfg.labeling.mode == "pointwise" else constitution.labels)
    settings = {"judge": cfg.judge.name_or_path, "constitution": asdict(constitution), "seed": cfg.labeling.seed,
                "mode": cfg.labeling.mode}
    spans = resumable.spans(len(rows), cfg.save_every)
    done = resumable.sealed(run_dir, [[rows[i]["id"] for i in s] for s in spans], settings, "data.train",
                            "constitution")
    started, labeled_now = time.perf_counter(), 0
    for part in resumable.each(p for p in range(len(spans)) if p not in done):
        span = spans[part]
        done[part] = _label_part(ask, constitution, [rows[i] for i in span], cfg.labeling.seed, cfg.labeling.mode)
        resumable.seal(run_dir, part, done[part], settings, len(spans))
        labeled_now += len(span)
        log.info("part %d/%d: %d prompts judged", part + 1, len(spans), len(span))
    seconds = time.perf_counter() - started
    labeled = [item for part in range(len(spans)) for item in done[part]]
    pairs, counts = pairs_of(rows, labeled, cfg.labeling.min_confidence)
    if not pairs:
        raise DataError(f"config key 'labeling.min_confidence': {cfg.labeling.min_confidence} keeps none of the "
                        f"{counts['pairs_judged']} judged pairs (mean confidence {counts['mean_confidence']:.3f})")
    train, held = split_by_task(pairs, cfg.labeling.eval_fraction, cfg.labeling.seed)
    metrics = {**counts, "prompts": len(rows), "prompts_judged_now": labeled_now, "seconds": seconds,
               "texts_per_second": ask.texts / seconds if seconds > 0 else 0.0,
               "prefix_tokens_cached": ask.cached_tokens,
               "train_pairs": len(train), "eval_pairs": len(held), "judge": cfg.judge.name_or_path,
               "constitution": constitution.name or cfg.constitution, "data": stats.to_dict()}
    if cfg.gold_eval and (agree := gold_agreement(pairs)) is not None:
        metrics["gold_agreement"] = agree
    card = (f"# AI-labelled preference pairs\n\n{len(pairs)} pairs from {len(rows)} prompts, judged by "
            f"`{cfg.judge.name_or_path}` under the constitution `{constitution.name or cfg.constitution}` "
            "(`kuberlhf rlaif`).\n")
    publish_files(run_dir, pair_files(train, held), metrics, card)
    return metrics
