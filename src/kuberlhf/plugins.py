"""Plug-ins found through package entry points: model sources, data sources and judges.

A package registers its handlers in its ``pyproject.toml`` (kuberlhf's own demo task does)::

    [project.entry-points."kuberlhf.model_sources"]
    demo = "kuberlhf.demo.models:resolve"     # demo://... model names
    [project.entry-points."kuberlhf.data_sources"]
    demo = "kuberlhf.demo.data:iter_rows"     # demo://... datasets
    [project.entry-points."kuberlhf.judges"]
    gold = "kuberlhf.demo.judge:GoldJudge"    # a judge of generated responses

so the layers that use them (model loading, the data loader, evaluation) never import the
package that provides them. An entry point is looked up by name on each use (cheap), so a
test that patches the provider's attribute sees its patch.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

GROUPS = ("model_sources", "data_sources", "judges")


def names(group: str) -> list[str]:
    """The names registered in ``group`` (e.g. the URI schemes of the model sources)."""
    return sorted({ep.name for ep in entry_points(group=f"kuberlhf.{group}")})


def load(group: str, name: str) -> Any | None:
    """The object registered as ``name`` in ``group``, or None."""
    for ep in entry_points(group=f"kuberlhf.{group}", name=name):
        return ep.load()
    return None


def scheme(uri: str) -> str:
    """``"demo"`` for ``"demo://tiny-llama"``; ``""`` without a scheme."""
    head, sep, _ = str(uri).partition("://")
    return head.lower() if sep else ""
