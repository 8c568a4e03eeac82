"""Merge an SFT artifact's LoRA adapter into its base model: one standalone model.

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
from pathlib import Path

from kuberlhf.errors import KuberlhfError

log = logging.getLogger("kuberlhf")

ADAPTER = "adapter"
_CONFIG_BLOCK = re.compile(r"^## Config\n\n```yaml\n(.*?)```", re.S | re.M)
# files of an artifact that describe it rather than its weights: carried into the merged artifact
_CARRIED = ("README.md", "metrics.json", "train_log.jsonl")


def add_parser(verbs) -> None:
    sub = verbs.add_parser("merge", help="merge an SFT artifact's LoRA adapter into a standalone model",
                           description=(__doc__ or "").strip().splitlines()[0])
    sub.add_argument("--model", required=True, help="SFT artifact: local dir or s3:// URI")
    sub.add_argument("--output", required=True, help="where the merged model goes: local dir or s3:// URI")
    sub.add_argument("--base", help="base model to merge into (default: the one in the artifact's card)")
    sub.add_argument("--overwrite", action="store_true", help="replace a finished artifact in --output")


def run(args) -> int:
    result = merge_artifact(args.model, args.output, base=args.base, overwrite=args.overwrite)
    print(f"kuberlhf merge: done: {'merged the adapter' if result['merged'] else 'passed through'} -> {args.output}")
    return 0


def merge_artifact(model: str, output: str, *, base: str | None = None, overwrite: bool = False) -> dict:
    """Publish ``model`` with its adapter merged into the base model to ``output``; ``{"merged": bool}``."""
    from kuberlhf import storage

    if storage.is_complete(output) and not overwrite:
        raise KuberlhfError(f"{output} already holds a finished artifact; pass --overwrite to replace it")
    src = storage.fetch_dir(model) if storage.is_remote(model) else storage.fetch_dir(str(model))
    has_adapter = (src / ADAPTER / "adapter_config.json").is_file()
    if not has_adapter or (src / "config.json").is_file():
        why = "is a full fine-tune (no adapter/)" if not has_adapter else "already holds a merged model"
        log.info("%s %s: passing it through unchanged", model, why)
        _publish_files(src, _artifact_files(src), output)
        return {"merged": False}

    from kuberlhf import modeling

    model_cfg, seed = base_model_config(src, base)
    log.info("merging %s/%s into %s (seed %d)", model, ADAPTER, model_cfg.name_or_path, seed)
    base_path = modeling.resolve_model_path(model_cfg.name_or_path, "causal-lm", seed)
    merged = modeling.merge_adapter(model_cfg, base_path, str(src / ADAPTER))
    staging = Path(tempfile.mkdtemp(prefix="kuberlhf-merge-"))
    try:
        merged.save_pretrained(str(staging))
        modeling.load_tokenizer(model_cfg, str(src)).save_pretrained(str(staging))
        keep = [f for f in _artifact_files(src) if f.startswith(f"{ADAPTER}/") or f in _CARRIED]
        for rel in keep:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, staging / rel)
        _publish_files(staging, None, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"merged": True}


def base_model_config(artifact: Path, base: str | None = None):
    """(ModelConfig of the base model, seed) of an SFT artifact, from its card's config block."""
    import yaml

    from kuberlhf.common import ModelConfig
    from kuberlhf.config import from_dict

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
    from kuberlhf import storage

    manifest = root / storage.MANIFEST_NAME
    if manifest.is_file():
        return [entry["path"] for entry in json.loads(manifest.read_text())["files"]]
    return [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]


def _publish_files(root: Path, files: list[str] | None, output: str) -> None:
    """Publish ``files`` of ``root`` (all when None) to ``output``, manifest last; hard links when local."""
    from kuberlhf import storage

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
