"""A trained policy as the published standalone model, and ``kuberlhf merge`` of a published adapter.

:func:`save_policy` is the one way every stage writes its trained model: full weights at the
artifact's root; for LoRA/QLoRA the adapter under ``adapter/`` and, unless ``lora.merge=false``,
the adapter merged into a standalone model at the root. :func:`merge_artifact` does the same
later, for an artifact published with its adapter only:

$ kuberlhf sft --config configs/sft/demo.yaml finetune=lora lora.merge=false output_dir=outputs/demo/sft-lora
$ kuberlhf merge --model outputs/demo/sft-lora --output outputs/demo/sft-merged
$ kuberlhf merge --model s3://bucket/runs/sft --output s3://bucket/runs/sft-merged

An SFT run with ``lora.merge=false`` publishes its adapter under ``adapter/`` and no model
at the root. The base model is the one that run started from, read from the artifact's
card (its config block: ``model`` and ``training.seed``, which picks a demo model's
weights); ``--base`` names another. An artifact that already has a model at its root (a
full fine-tune, or an adapter merged by the stage) is passed through unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kuberlhf.artifacts import storage
from kuberlhf.errors import KuberlhfError
from kuberlhf.models import loading

log = logging.getLogger(__name__)

ADAPTER = "adapter"
_CONFIG_BLOCK = re.compile(r"^## Config\n\n```yaml\n(.*?)```", re.S | re.M)
# files of an artifact that describe it rather than its weights: carried into the merged artifact
_CARRIED = ("README.md", "metrics.json", "train_log.jsonl")


def merge_adapter(base: Any, adapter_dir: str | Path) -> Any:
    """``base`` (an unquantized model) with the LoRA adapter in ``adapter_dir`` merged into its weights."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def save_policy(model: Any, tokenizer: Any, directory: str | Path, *, lora: bool, merge: bool,
                base: Callable[[], Any] | None = None, saved: bool = False) -> None:
    """Write a trained policy into ``directory`` as an artifact's model, with its tokenizer.

    Full fine-tune: its weights at the root. LoRA/QLoRA: the adapter under ``adapter/`` and, with
    ``merge``, the standalone model at the root: the adapter merged into a fresh load of the
    unquantized base (``base()``: a QLoRA policy is 4-bit) or else into ``model`` itself.
    ``saved``: the weights (or the adapter) are already there (the Trainer's save, collective under
    ZeRO-3). Main process only.
    """
    directory = Path(directory)
    if not saved:
        model.save_pretrained(directory / ADAPTER if lora else directory)
    if lora and merge:
        merged = merge_adapter(base(), directory / ADAPTER) if base is not None else model.merge_and_unload()
        merged.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def merge_artifact(model: str, output: str, *, base: str | None = None, overwrite: bool = False) -> dict:
    """Publish ``model`` with its adapter merged into the base model to ``output``; ``{"merged": bool}``."""
    if storage.is_complete(output) and not overwrite:
        raise KuberlhfError(f"{output} already holds a finished artifact; pass --overwrite to replace it")
    src = storage.fetch_dir(model) if storage.is_remote(model) else storage.fetch_dir(str(model))
    has_adapter = (src / ADAPTER / "adapter_config.json").is_file()
    if not has_adapter or (src / "config.json").is_file():
        why = "is a full fine-tune (no adapter/)" if not has_adapter else "already holds a merged model"
        log.info("%s %s: passing it through unchanged", model, why)
        _publish_files(src, _artifact_files(src), output)
        return {"merged": False}

    model_cfg, seed = base_model_config(src, base)
    log.info("merging %s/%s into %s (seed %d)", model, ADAPTER, model_cfg.name_or_path, seed)
    base_path = loading.resolve_model_path(model_cfg.name_or_path, "causal-lm", seed)
    staging = Path(tempfile.mkdtemp(prefix="kuberlhf-merge-"))
    try:
        keep = [f for f in _artifact_files(src) if f.startswith(f"{ADAPTER}/") or f in _CARRIED]
        for rel in keep:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, staging / rel)
        save_policy(None, loading.load_tokenizer(model_cfg, str(src)), staging, lora=True, merge=True,
                    base=lambda: loading.load_causal_lm(model_cfg, base_path), saved=True)
        _publish_files(staging, None, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"merged": True}


def base_model_config(artifact: Path, base: str | None = None):
    """(ModelConfig of the base model, seed) of an SFT artifact, from its card's config block."""
    import yaml

    from kuberlhf.config import from_dict
    from kuberlhf.config.sections import ModelConfig

    card = artifact / "README.md"
    found = _CONFIG_BLOCK.search(card.read_text()) if card.is_file() else None
    config = (yaml.safe_load(found.group(1)) or {}) if found else {}
    model = dict(config.get("model") or {})
    if base:
        model["name_or_path"] = base
    if not model.get("name_or_path"):
        adapter_config = json.loads((artifact / ADAPTER / "adapter_config.json").read_text())
        model["name_or_path"] = adapter_config.get("base_model_name_or_path") or ""
    if not model.get("name_or_path"):
        raise KuberlhfError(f"{artifact}: no base model in its card or adapter config; pass --base")
    seed = int((config.get("training") or {}).get("seed", 0))
    return from_dict(ModelConfig, model, "model."), seed


def _artifact_files(root: Path) -> list[str]:
    """The files of an artifact: those its manifest lists (checkpoints excluded), else every file."""
    manifest = root / storage.MANIFEST_NAME
    if manifest.is_file():
        return [entry["path"] for entry in json.loads(manifest.read_text())["files"]]
    return [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]


def _publish_files(root: Path, files: list[str] | None, output: str) -> None:
    """Publish ``files`` of ``root`` (all when None) to ``output``, manifest last; hard links when local."""
    if files is None:
        storage.publish_dir(root, output)
        return
    with tempfile.TemporaryDirectory(prefix=".kuberlhf-merge-", dir=root.parent) as tmp:  # same disk: links
        for rel in files:
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(root / rel, Path(tmp) / rel)
            except OSError:
                shutil.copy2(root / rel, Path(tmp) / rel)
        storage.publish_dir(tmp, output)
