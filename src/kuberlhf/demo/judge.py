"""The demo task's gold judge as a judge plug-in (``kuberlhf.judges`` entry point ``gold``)."""

from __future__ import annotations

from kuberlhf.demo.task import gold_score, topic_of


class GoldJudge:
    """Scores responses by the built-in task's ground truth (:func:`kuberlhf.demo.task.gold_score`)."""

    name = "gold"
    description = "the built-in demo task's gold judge"

    def applies(self, prompts: list[str]) -> bool:
        """Whether every prompt is one of the demo task's (a cheerful note about a known topic)."""
        return all(topic_of(p) is not None for p in prompts)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [gold_score(p, r) for p, r in zip(prompts, responses, strict=True)]
