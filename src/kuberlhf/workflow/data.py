"""What a pipeline's data step runs: a stage's training data, validated and written as a ``Dataset``.

The ``data`` component (``components/data.py``) is a thin shell around :func:`run_data_step`.
It reads a source with the project's loader (:func:`kuberlhf.data.load_examples`: every row is
validated; a malformed one stops the step naming the source, row and field, or is skipped and
counted when the config says ``data.on_bad_row=skip``) and writes the canonical examples as
JSON Lines into the output artifact's folder: ``train.jsonl``, plus ``eval.jsonl`` when the
stage config has eval data. The training step reads that folder back (:func:`data_overrides`).

Canonical examples load back unchanged (the converters pass them through), so a stage trained
on the artifact sees the same rows, in the same order, as one that read the source itself.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kuberlhf.data.pairs import EVAL_FILE, TRAIN_FILE  # the layout every pairs folder shares
from kuberlhf.errors import ConfigError, KuberlhfError
from kuberlhf.stages.registry import STAGES
from kuberlhf.workflow.configs import resolve_config

log = logging.getLogger(__name__)

# stage -> the kind of examples its training data holds (kuberlhf.data.KINDS)
DATA_KINDS = {name: stage.data_kind for name, stage in STAGES.items() if stage.data_kind}


def stage_data_config(stage: str, config: str, overrides: list[str] | None, source: str = "") -> Any:
    """The validated ``data`` section of ``stage``'s config (file plus overrides), ``source`` replacing
    ``data.train`` when given. The rest of the config is the training step's to check: the pipeline
    wires its output and input models there."""
    from kuberlhf.config import from_dict, merge_overrides, read_yaml
    from kuberlhf.config.sections import DataConfig

    if stage not in DATA_KINDS:
        raise ConfigError(f"stage {stage!r}: has no training data; known: {', '.join(DATA_KINDS)}")
    config = resolve_config(config)
    data = merge_overrides(read_yaml(config) if config else {}, list(overrides or [])).get("data") or {}
    if source:
        data = {**data, "train": source}
    return from_dict(DataConfig, data, prefix="data.")


def write_jsonl(rows: Any, path: Path) -> int:
    """Write ``rows`` (dicts) as JSON Lines; returns how many."""
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def prepare_data(stage: str, out_dir: str, *, source: str = "", config: str = "",
                 overrides: list[str] | None = None) -> dict[str, Any]:
    """Load ``stage``'s training data (``source``, or the config's ``data.train``) and its eval data
    (the config's ``data.eval``), validate every row and write them under ``out_dir``.

    Returns the summary that becomes the artifact's metadata: source, kind, rows, rows_read,
    rows_skipped, skipped_examples, eval_source, eval_rows, files.
    Raises :class:`~kuberlhf.errors.DataError` for a bad source or row (``on_bad_row=error``).
    """
    from kuberlhf.data import load_examples

    data = stage_data_config(stage, config, overrides, source)
    kind = DATA_KINDS[stage]
    common = {"format": data.format, "on_bad_row": data.on_bad_row, "template_kwargs": data.template_kwargs}
    train, stats = load_examples(data.train, kind, split=data.split, max_rows=data.max_rows, **common)
    held_out = load_examples(data.eval, kind, split=data.eval_split, **common)[0] if data.eval else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "stage": stage, "kind": kind, "source": data.train, "rows": write_jsonl(train, out / TRAIN_FILE),
        "rows_read": stats.rows_read, "rows_skipped": stats.rows_skipped,
        "skipped_examples": list(stats.skipped_examples), "eval_source": data.eval or "", "eval_rows": 0,
        "files": [TRAIN_FILE],
    }
    if held_out is not None:
        summary["eval_rows"] = write_jsonl(held_out, out / EVAL_FILE)
        summary["files"].append(EVAL_FILE)
    log.info("%s data: %d %s rows from %s (%d skipped), %d eval rows", stage, summary["rows"], kind,
             data.train, stats.rows_skipped, summary["eval_rows"])
    return summary


def artifact_uri(uri: str) -> str:
    """The URI a training process reads or writes for a KFP artifact URI.

    ``s3://`` stays; ``minio://bucket/key`` (the KFP default pipeline root) is the same object
    in the S3-compatible store and becomes ``s3://bucket/key``; a local path stays a path.
    """
    if uri.startswith("minio://"):
        return "s3://" + uri.removeprefix("minio://")
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    if "://" in uri and not uri.startswith("s3://"):
        scheme = uri.split("://", 1)[0]
        raise KuberlhfError(
            f"artifact URI {uri!r}: {scheme}:// is not supported; use an s3:// or minio:// pipeline root")
    return uri


def data_overrides(location: str, has_eval: bool | None) -> list[str]:
    """The overrides that make a stage read a ``Dataset`` folder (a local path or ``s3://`` URI): a data
    step's (``train.jsonl``, with ``eval.jsonl`` when ``has_eval``), or, ``has_eval=None``, any other stage's
    artifact (generate's candidates), read as a folder."""
    base = location.rstrip("/")
    if has_eval is None:
        return [f"data.train={base}"]
    return ["data.format=jsonl", f"data.train={base}/{TRAIN_FILE}",
            *([f"data.eval={base}/{EVAL_FILE}"] if has_eval else [])]


def dataset_has_eval(dataset: Any, mode: str) -> bool | None:
    """Whether a ``Dataset`` in a data step's layout holds eval data: its metadata, else its files; None when
    it is not in that layout (no ``train.jsonl``: another stage's artifact)."""
    metadata = getattr(dataset, "metadata", None) or {}
    if "eval_rows" in metadata:
        return int(metadata["eval_rows"]) > 0
    base = (dataset.path if mode == "local" else dataset.uri).rstrip("/")
    if not _holds(f"{base}/{TRAIN_FILE}", mode):
        return None
    return _holds(f"{base}/{EVAL_FILE}", mode)


def _holds(location: str, mode: str) -> bool:
    if mode == "local":
        return Path(location).is_file()
    from kuberlhf.artifacts import storage

    try:
        storage.open_uri(artifact_uri(location)).close()
    except storage.StorageError:
        return False
    return True


def run_data_step(stage: str, dataset: Any, metrics: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`prepare_data` for a KFP component: files into ``dataset.path``, its summary as the
    dataset's metadata, the row counts on ``metrics``."""
    summary = prepare_data(stage, dataset.path, **kwargs)
    dataset.metadata.update(summary)
    for key in ("rows", "rows_read", "rows_skipped", "eval_rows"):
        metrics.log_metric(key, float(summary[key]))
    return summary
