"""Judges: what scores a policy's responses to held-out prompts, as plug-ins.

A judge has a ``name`` (it prefixes its metrics: ``gold_score_before``), a ``description`` and
``score(prompts, responses) -> list[float]``; ``applies(prompts)`` says whether it can judge those
prompts at all. Judges are found by name among the ``kuberlhf.judges`` entry points
(:mod:`kuberlhf.plugins`): the demo task registers its gold judge as ``gold``.
:class:`RewardModelJudge` scores with a trained reward model, for prompts no gold judge knows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from kuberlhf import plugins
from kuberlhf.errors import ConfigError

log = logging.getLogger(__name__)


class Judge(Protocol):
    name: str
    description: str

    def applies(self, prompts: list[str]) -> bool: ...

    def score(self, prompts: list[str], responses: list[str]) -> list[float]: ...


def get_judge(name: str) -> Judge:
    """The judge registered as ``name`` (a ``kuberlhf.judges`` entry point), ready to score."""
    factory = plugins.load("judges", name)
    if factory is None:
        known = ", ".join(plugins.names("judges")) or "none installed"
        raise ConfigError(f"judge {name!r}: no such judge plug-in (known: {known})")
    return factory()


def pick_judge(prompts: list[str], *, gold: bool, fallback: Callable[[], Judge] | None) -> Judge | None:
    """The gold judge when asked for and it applies to ``prompts`` (the demo task's), else ``fallback()``
    (a reward model), else None: never a gold score of prompts it cannot judge."""
    if gold:
        judge = get_judge("gold")
        if judge.applies(prompts):
            return judge
        log.warning("the gold judge does not apply to these prompts (not the demo task's)%s",
                    "; judging with the reward model" if fallback else "; no judge")
    return fallback() if fallback else None


class RewardModelJudge:
    """Scores ``prompt + response`` with a reward model, with its own tokenizer, as it was trained."""

    name = "reward"
    description = "the trained reward model"

    def __init__(self, model: Any, tokenizer: Any, max_length: int = 512):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    @classmethod
    def load(cls, path: str, max_length: int = 512) -> RewardModelJudge:
        """A judge from a reward-model artifact (local dir, ``s3://`` or hub name)."""
        from kuberlhf.config.sections import ModelConfig
        from kuberlhf.models import loading

        cfg = ModelConfig(name_or_path=path)
        local = loading.resolve_model_path(path, "sequence-classification")
        tokenizer = loading.load_tokenizer(cfg, local)
        return cls(loading.load_sequence_classifier(cfg, local, tokenizer.pad_token_id), tokenizer, max_length)

    def applies(self, prompts: list[str]) -> bool:
        return True

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        from kuberlhf.models.scoring import score_texts

        texts = [p + r for p, r in zip(prompts, responses, strict=True)]
        return score_texts(self.model, self.tokenizer, texts, self.max_length)
