"""Run a whole pipeline on this machine with ``kfp.local`` (no cluster): ``kuberlhf pipeline run --local``.

$ kuberlhf pipeline run --local                               # rlhf-ppo on the built-in task (make demo)
$ kuberlhf pipeline run --local --pipeline rlhf-dpo --param sft_overrides='["training.max_steps=50"]'

Every step runs as a subprocess of this interpreter (``kfp.local.SubprocessRunner`` without
a virtualenv of its own), in ``mode=local``: each stage trains inside its step. Artifacts go
under ``ROOT/runs/<pipeline>-<time>/<step>/``; the report of the latest run is copied to
``ROOT/<pipeline>-report.html``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from kuberlhf.errors import KuberlhfError

log = logging.getLogger(__name__)
DEFAULT_ROOT = "outputs/pipeline"
# parameters naming a file of configs/ (besides every ``*_config``)
CONFIG_PARAMS = ("constitution", "feedback_instructions")


def config_search_path() -> list[Path]:
    """Where relative stage config references are looked up: here, then the source checkout."""
    import kuberlhf

    return [Path.cwd(), Path(kuberlhf.__file__).resolve().parents[2]]


def absolute_configs(defaults: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with every config parameter (given or default) as an absolute path where the file exists:
    the steps run as subprocesses and must find the file wherever they start."""
    out = dict(params)
    for key in [k for k in {**defaults, **params} if k.endswith("_config") or k in CONFIG_PARAMS]:
        ref = out.get(key, defaults.get(key))
        if not isinstance(ref, str) or not ref or Path(ref).is_absolute():
            continue
        for base in config_search_path():
            if (base / ref).is_file():
                out[key] = str((base / ref).resolve())
                break
    return out


def artifact_metadata(artifact: Any) -> dict:
    """An output artifact's metadata: on the object, else in its step's ``executor_output.json``."""
    if getattr(artifact, "metadata", None):
        return dict(artifact.metadata)
    step_dir = Path(artifact.path).parent
    path = step_dir / "executor_output.json"
    if path.is_file():
        for items in json.loads(path.read_text()).get("artifacts", {}).values():
            for item in items.get("artifacts", []):
                if item.get("uri") == artifact.uri:
                    return dict(item.get("metadata", {}))
    return {}


def run_local(pipeline: str = "rlhf-ppo", params: dict[str, Any] | None = None, root: str = DEFAULT_ROOT,
              cache: bool = False, settings: dict | None = None) -> dict:
    """Run ``pipeline`` (shaped by its compile ``settings``) with ``kfp.local``; returns ``{"report", "models",
    "metrics", "run_dir"}``."""
    from kfp import local

    from kuberlhf.workflow.compiling import build, parameters

    root_path = Path(root).resolve()
    tmp = root_path / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    # each local step leaves a temp dir behind: keep them inside ROOT, removed at the end
    previous_tmp = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None
    try:
        defaults = {k: v["default"] for k, v in parameters(pipeline, settings).items()}
        args = absolute_configs(defaults, params or {})
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root_path / "runs"),
                   enable_caching=cache)
        # the steps' images are not run locally: this interpreter (with kuberlhf installed) stands in for them
        warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
        log.info("running pipeline %s locally under %s", pipeline, root_path / "runs")
        try:
            task = build(pipeline, settings=settings)(**args)
        except RuntimeError as err:  # kfp.local reports a failed step this way
            raise KuberlhfError(f"pipeline {pipeline}: {str(err).strip().splitlines()[0]}") from err
    finally:
        if previous_tmp is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous_tmp
        tempfile.tempdir = None
        shutil.rmtree(tmp, ignore_errors=True)
    outputs = task.outputs
    report = root_path / f"{pipeline}-report.html"
    shutil.copyfile(outputs["report"].path, report)
    models = {name: outputs[name].path for name in ("sft_model", "reward_model", "policy") if name in outputs}
    return {
        "report": str(report),
        "run_report": outputs["report"].path,
        "models": models,
        "metrics": artifact_metadata(outputs["metrics"]),
        "run_dir": str(Path(outputs["report"].path).parents[1]),
    }


def summary(pipeline: str, result: dict) -> str:
    """What ``kuberlhf pipeline run --local`` prints at the end: scores, models, and the report's path last."""
    import importlib

    from kuberlhf.workflow.pipelines import PIPELINES

    stage = importlib.import_module(PIPELINES[pipeline]).POLICY_STAGE.upper()
    m = result["metrics"]
    lines = [f"pipeline {pipeline} finished: {result['run_dir']}"]
    for name, path in result["models"].items():
        lines.append(f"  {name:<13} {path}")
    if "gold_score_sft" in m:
        kl = f" (KL {m['kl']:.2f})" if "kl" in m else ""
        lines.append(f"gold-judge scores on held-out prompts (SFT policy -> {stage} policy):")
        lines.append(f"  SFT {m['gold_score_sft']:.3f} -> {stage} {m['gold_score_final']:.3f}{kl}")
    lines.append(f"report: {result['report']}")
    return "\n".join(lines)
