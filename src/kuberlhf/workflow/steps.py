"""What a pipeline step runs: one training stage, in the step's own process, as a PyTorchJob or as a TrainJob.

The KFP components (``components/``) are thin shells around :func:`run_stage_step`:

* ``mode=local``: the stage runs in the component's own process (``torchrun`` when
  ``procs > 1``), writing its artifact to the output model's local path. This is what
  ``kfp.local.SubprocessRunner`` runs on a laptop and what a single-pod run uses.
* ``mode=pytorchjob``: the component is a launcher. It builds a PyTorchJob for the stage
  (:func:`kuberlhf.k8s.launcher.launch_stage`), creates it and waits; the training pods
  write straight to the object-store URI KFP assigned to the output model, and the rendered
  job manifest is saved as an output artifact.
* ``mode=trainjob``: the same, with a Kubeflow Trainer v2 TrainJob on the stage's
  TrainingRuntime (``kuberlhf-<image>``, installed by the chart) instead of a PyTorchJob.

In the cluster modes the step also forwards its KFP task's settings (``dsl.TaskConfig``: resources, node
selector, tolerations, affinity, env; the components declare them as ``task_config_passthroughs``) to the job
(:mod:`kuberlhf.k8s.taskconfig`); in ``local`` mode they are ignored.

Inputs of a stage (the SFT policy, the reward model, the training data of a ``data`` step:
:mod:`kuberlhf.workflow.data`) are handed over as config overrides: local paths in ``local``
mode, ``s3://`` URIs in the cluster modes (``pytorchjob``, ``trainjob``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from kuberlhf.artifacts.cards import read_metrics
from kuberlhf.errors import ConfigError, KuberlhfError
from kuberlhf.stages.registry import LOG_FORMAT, STAGES, configure_logging, run_and_report, stage_argv
from kuberlhf.workflow.configs import CONFIG_DIR, resolve_config
from kuberlhf.workflow.data import artifact_uri, data_overrides, dataset_has_eval

log = logging.getLogger(__name__)

MODES = ("local", "pytorchjob", "trainjob")  # the cluster modes are the launcher's backends
LOCAL_MODE_NOTE = "# mode=local: the stage ran in the step's own process; no job was created.\n"
# what KFP hands a launching step instead of applying it to the step's own pod (components/passthrough.py)
FORWARDED_ONLY = ("resources", "nodeSelector", "tolerations", "affinity")
# KFP's MLflow integration sets these in the step's pod: the job's pods log into the step's run with them
STEP_ENV_TO_JOB = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


def stage_overrides(stage: str, overrides: list[str] | None, inputs: dict[str, str], output_dir: str,
                    data: list[str] | None = None) -> list[str]:
    """The stage's ``key=value`` overrides: quiet progress bars, the user's overrides, then the inputs (the
    ``data`` overrides of its training data included) and the output directory, which the pipeline wires
    and so always win."""
    if stage not in STAGES:
        raise ConfigError(f"stage {stage!r}: not a pipeline stage; known: {', '.join(STAGES)}")
    known = STAGES[stage].inputs
    unknown = set(inputs) - set(known)
    if unknown:
        raise ConfigError(f"stage {stage!r}: unknown input(s) {sorted(unknown)}; known: {sorted(known)}")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"{stage} override {item!r}: expected key=value")
    wired = [f"{known[name]}={uri}" for name, uri in inputs.items()]
    # progress bars only clutter a step's log
    quiet = ["training.disable_tqdm=true"] if STAGES[stage].progress_bars else []
    return [*quiet, *(overrides or []), *(data or []), *wired, f"output_dir={output_dir}"]


def local_command(stage: str, config: str, overrides: list[str], procs: int) -> list[str]:
    """``kuberlhf STAGE`` in this interpreter, under torchrun when ``procs > 1``."""
    args = stage_argv(stage, config, overrides)
    if procs > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                "-m", "kuberlhf.cli", *args]
    return [sys.executable, "-m", "kuberlhf.cli", *args]


def run_in_step(stage: str, config: str, overrides: list[str], procs: int = 1, log_path: str | None = None) -> None:
    """Run the stage here: in this process, or as a torchrun child whose output is teed to ``log_path``."""
    if procs < 1:
        raise ConfigError(f"procs: must be at least 1, got {procs}")
    if procs == 1:
        handler = _file_handler(log_path)
        try:
            configure_logging()
            code = run_and_report(stage, config, overrides)
        finally:
            if handler:
                logging.getLogger().removeHandler(handler)
                handler.close()
    else:
        code = _tee(local_command(stage, config, overrides, procs), log_path)
    if code != 0:
        raise KuberlhfError(f"kuberlhf {stage} exited with status {code}")


def _file_handler(path: str | None) -> logging.Handler | None:
    if not path:
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def _tee(cmd: list[str], log_path: str | None) -> int:
    log.info("running %s", " ".join(cmd))
    sink = open(log_path, "w") if log_path else None  # noqa: SIM115 (closed below)
    try:
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                sys.stdout.write(line)
                if sink:
                    sink.write(line)
        return proc.returncode
    finally:
        if sink:
            sink.close()


def scalar_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a stage's metrics (top level, no booleans), for KFP ``Metrics``."""
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v}


def run_step(
    stage: str,
    *,
    mode: str,
    config: str,
    overrides: list[str] | None,
    inputs: dict[str, str],
    output_path: str,
    output_uri: str,
    manifest_path: str,
    log_path: str | None = None,
    procs: int = 1,
    run_id: str = "",
    task: str = "",
    train_data: str = "",
    train_data_eval: bool | None = False,
    task_config: dict | None = None,
) -> dict:
    """Run one pipeline step of ``stage``; returns the stage's ``metrics.json``.

    ``inputs`` maps the component's input names to where the stage reads them: local paths in
    local mode, the artifacts' URIs in the cluster modes; so does ``train_data``, the folder of a data
    step's ``Dataset`` (``train_data_eval``: it holds eval data too; None: it is another stage's artifact, read as
    a folder; empty: the config's own data). ``task_config``: the KFP task's settings, the driver's dict of
    the step's ``dsl.TaskConfig``; forwarded to the job in the cluster modes, ignored in local mode. A
    step whose output already holds a finished artifact (a retry after the stage published) reports it
    instead of training again.
    """
    from kuberlhf.artifacts import rundir

    if mode not in MODES:
        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    config = resolve_config(config)
    output_dir = output_path if mode == "local" else artifact_uri(output_uri)
    if mode != "local":
        inputs = {name: artifact_uri(uri) for name, uri in inputs.items()}
    else:  # cluster.* keys shape the job: the same parameters also run locally
        skipped = [o for o in overrides or [] if o.startswith("cluster.")]
        if skipped:
            log.info("mode=local: ignoring cluster overrides %s", " ".join(skipped))
        overrides = [o for o in overrides or [] if not o.startswith("cluster.")]
        unapplied = [key for key in FORWARDED_ONLY if (task_config or {}).get(key)]
        if unapplied:
            log.warning("mode=local: the task's %s reached no pod: KFP hands them to the job a cluster mode "
                        "launches (mode=pytorchjob or trainjob), not to this step's own pod", ", ".join(unapplied))
    if train_data:
        location = train_data if mode == "local" else artifact_uri(train_data)
        data = data_overrides(location, train_data_eval)
        log.info("%s reads its data from the data step's dataset: %s", stage, " ".join(data))
    else:
        data = []
    args = stage_overrides(stage, overrides, inputs, output_dir, data)
    if mode != "local":
        _cluster_storage_env()
        task_config = with_step_env(task_config)
    if mode == "local":  # the stage itself finds a finished artifact of this config (artifacts.rundir)
        run_in_step(stage, config, args, procs, log_path)
    elif rundir.finished(output_dir):
        log.info("%s already holds a finished %s artifact (a retried step): not launching again", output_dir, stage)
    else:
        from kuberlhf.k8s.launcher import launch_stage

        Path(output_path).mkdir(parents=True, exist_ok=True)  # KFP uploads this (empty) folder afterwards
        result = launch_stage(stage, config, args, run_id=run_id, task=task, cluster=None,
                              manifest_out=manifest_path, backend=mode, task_config=task_config)
        log.info("%s finished: %s", stage, result)
    if mode == "local":
        Path(manifest_path).parent.mkdir(parents=True, exist_ok=True)
        Path(manifest_path).write_text(LOCAL_MODE_NOTE)
        # the finished artifact is what downstream steps read: its checkpoints would only be copied around
        shutil.rmtree(Path(output_path) / "checkpoints", ignore_errors=True)
    if log_path and not Path(log_path).exists():
        Path(log_path).write_text(f"# {stage}: see the step's own log (mode={mode})\n")
    return read_metrics(output_dir)


def with_step_env(task_config: dict | None) -> dict | None:
    """The task's settings with :data:`STEP_ENV_TO_JOB` of this step's environment added to its env (the task's
    own value of one wins), so that the job's pods log into the MLflow run KFP made for this task."""
    present = {n: os.environ[n] for n in STEP_ENV_TO_JOB if os.environ.get(n)}
    if not present:
        return task_config
    task_config = dict(task_config or {})
    env = list(task_config.get("env") or [])
    named = {var.get("name") for var in env if isinstance(var, dict)}
    task_config["env"] = env + [{"name": n, "value": v} for n, v in present.items() if n not in named]
    return task_config


def _cluster_storage_env() -> None:
    """The object-store endpoint of the mounted cluster settings, for reading the stage's results."""
    path = Path(os.environ.get("KUBERLHF_CONFIG_DIR", CONFIG_DIR)) / "cluster.yaml"
    if os.environ.get("AWS_ENDPOINT_URL_S3") or not path.is_file():
        return
    import yaml

    endpoint = (yaml.safe_load(path.read_text()) or {}).get("storage_endpoint")
    if endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = str(endpoint)


def run_stage_step(stage: str, inputs: dict[str, Any], model: Any, metrics: Any, job_manifest: Any,
                   logs: Any = None, train_data: Any = None, **kwargs: Any) -> dict:
    """:func:`run_step` for a KFP component: its artifacts in (models in ``inputs``, a ``Dataset`` in
    ``train_data``), metrics logged on ``metrics``."""
    mode = kwargs.get("mode", "local")
    if "task_config" in kwargs:
        kwargs["task_config"] = task_config_dict(kwargs["task_config"])
    wired = {name: (artifact.path if mode == "local" else artifact.uri) for name, artifact in inputs.items()}
    if train_data is not None:
        kwargs["train_data"] = train_data.path if mode == "local" else train_data.uri
        kwargs["train_data_eval"] = dataset_has_eval(train_data, mode)
    result = run_step(stage, inputs=wired, output_path=model.path, output_uri=model.uri,
                       manifest_path=job_manifest.path, log_path=logs.path if logs is not None else None, **kwargs)
    for key, value in scalar_metrics(result).items():
        metrics.log_metric(key, value)
    model.metadata.update({"stage": stage, "mode": mode})
    return result


def task_config_dict(task_config: Any) -> dict | None:
    """A step's ``dsl.TaskConfig`` as the dict the KFP driver handed it (``kfp.dsl.executor`` made the one from
    the other, renaming two keys)."""
    if task_config is None or isinstance(task_config, dict):
        return task_config
    return {"affinity": task_config.affinity, "tolerations": task_config.tolerations,
            "nodeSelector": task_config.node_selector, "env": task_config.env, "volumes": task_config.volumes,
            "volumeMounts": task_config.volume_mounts, "resources": task_config.resources}


# ---------------------------------------------------------------------- the labeling round (rlhf-human)


def feedback_project(project: str, run_id: str) -> str:
    """The Label Studio project of a run: the one named, else one per pipeline run."""
    if project:
        return project
    if not run_id:
        raise ConfigError("feedback project: name one (feedback_project) or run inside a pipeline (its run id)")
    return f"kuberlhf-{run_id[:8]}"


def feedback_export_step(candidates: str, exported: Any, project: str, instructions: str, unusable_bucket: bool,
                         labelers_per_task: int, run_id: str) -> dict:
    from kuberlhf.feedback import rounds
    from kuberlhf.feedback.labelstudio import Client

    title = feedback_project(project, run_id)
    text = rounds.read_instructions(resolve_config(instructions) if instructions else "", "feedback instructions")
    out = rounds.export_to_label_studio(Client.from_env(), rounds.load_candidates(candidates), title, text,
                                        unusable_bucket, labelers_per_task)
    record = {"project": title, "project_id": out["project"], "added": out["added"], "present": out["present"]}
    exported.metadata.update(record)
    Path(exported.path).parent.mkdir(parents=True, exist_ok=True)
    Path(exported.path).write_text(json.dumps(record) + "\n")
    return out


def feedback_wait_step(exported: Any, progress: Any, fraction: float, timeout_s: float, poll_s: float) -> dict:
    from kuberlhf.feedback import rounds
    from kuberlhf.feedback.labelstudio import Client

    now = rounds.wait_for(Client.from_env(), exported.metadata["project"], fraction, timeout_s, poll_s)
    for key in ("total", "annotated", "skipped", "finished", "fraction"):
        progress.log_metric(key, now[key])
    return now


def feedback_import_step(candidates: str, exported: Any, pairs: Any, metrics: Any, ties: str, unusable: str,
                         merge: str, eval_fraction: float, seed: int) -> dict:
    from kuberlhf.feedback import rounds
    from kuberlhf.feedback.labelstudio import Client

    rows = rounds.load_candidates(candidates)
    rankings = rounds.import_from_label_studio(Client.from_env(), rows, exported.metadata["project"])
    settings = rounds.ImportSettings(ties=ties, unusable=unusable, merge=merge, eval_fraction=eval_fraction, seed=seed)
    split, ranked, result = rounds.build_dataset(rows, rankings, settings)
    rounds.publish(pairs.path, split, ranked, result, overwrite=True)
    pairs.metadata.update({"train_rows": result["train_pairs"], "eval_rows": result["eval_pairs"]})
    for key, value in scalar_metrics(result).items():
        metrics.log_metric(key, value)
    return result
