"""Preference pairs as a dataset folder: ``train.jsonl`` and, held out by prompt, ``eval.jsonl``.

The layout of a pipeline data step's ``Dataset``, so a reward stage reads any of them the same way:
the pairs a labeling round imports (``kuberlhf feedback import``), the pairs an AI labeler writes
(``kuberlhf rlaif``), and a data step's validated rows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TRAIN_FILE, EVAL_FILE = "train.jsonl", "eval.jsonl"


def unusable_pair(chosen: str, rejected: str) -> str | None:
    """Why two candidate texts make no preference pair the reward stage can learn from, or None:
    ``identical`` (two samples with the same text) or ``empty`` (a side with no text, which the
    preference loader refuses). Counted as ``<why>_pairs_dropped``."""
    if chosen == rejected:
        return "identical"
    if not chosen.strip() or not rejected.strip():
        return "empty"
    return None


def split_by_task(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, eval): eval holds every pair of a seeded ``fraction`` of the tasks (prompts), so no prompt is
    on both sides."""
    tasks = sorted({p["task"] for p in pairs})
    held = set(random.Random(seed).sample(tasks, round(fraction * len(tasks)))) if fraction else set()
    return [p for p in pairs if p["task"] not in held], [p for p in pairs if p["task"] in held]


def pair_files(train: list[dict], held: list[dict]) -> dict[str, str]:
    """A preference dataset's files (name -> JSON Lines text): the training pairs, and the held-out ones if any."""
    files = {TRAIN_FILE: "".join(json.dumps(p) + "\n" for p in train)}
    if held:
        files[EVAL_FILE] = "".join(json.dumps(p) + "\n" for p in held)
    return files


def write_pairs(folder: Path, train: list[dict], held: list[dict]) -> None:
    for name, text in pair_files(train, held).items():
        (folder / name).write_text(text)
