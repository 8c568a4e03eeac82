"""The trackers of ``training.report_to``: where they write, and the MLflow run a stage logs into.

TensorBoard and W&B write under the run's work dir, whence their logs are published inside the artifact
(:func:`kuberlhf.artifacts.cards.collect_logs`). MLflow logs through transformers' ``MLflowCallback`` (the
Trainer stages) and accelerate's MLflow tracker (PPO), both set by MLflow's own environment variables; this
module only fills in what they leave to chance, before training starts:

* ``MLFLOW_TRACKING_URI`` unset: refused before anything is made (:func:`check`). MLflow's own default,
  ``./mlflow.db``, would land in whatever the current directory is (a pod's is thrown away) and needs the full
  ``mlflow`` with SQLAlchemy, which the images leave out; its file store (``./mlruns``), which could travel in
  the artifact like TensorBoard's logs, is in maintenance mode and refused by MLflow 3.18 unless opted into.
  Curves inside the artifact are TensorBoard's job (``training.report_to=[tensorboard,mlflow]``);
* ``MLFLOW_RUN_ID`` set (a Kubeflow Pipelines task's run): the stage logs into that run, and
  ``MLFLOW_EXPERIMENT_NAME`` becomes that run's experiment (MLflow refuses to resume a run under another
  one); else a new run in ``MLFLOW_EXPERIMENT_ID``'s or ``MLFLOW_EXPERIMENT_NAME``'s experiment, or in one
  named after the stage (made here when missing);
* the run is tagged with the stage (``kuberlhf.stage``) and the URI its artifact is published to
  (``kuberlhf.artifact``: its output dir, which holds its checkpoints until then), through ``MLFLOW_TAGS``,
  which both integrations apply when the run starts;
* the store is asked once, without retries and with a short timeout: one that cannot be reached costs a
  one-line warning and MLflow is left out of this run, rather than minutes of retries and a failed run.

Only the world's main process probes and logs (the integrations log on it alone too).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kuberlhf.artifacts.cards import tracker_dirs
from kuberlhf.artifacts.rundir import RunDir
from kuberlhf.config import flatten, to_dict
from kuberlhf.distributed import is_world_main
from kuberlhf.errors import ConfigError

log = logging.getLogger(__name__)

# seconds the tracking store has to answer before training starts without MLflow
PROBE_TIMEOUT_S = 5
STAGE_TAG, ARTIFACT_TAG = "kuberlhf.stage", "kuberlhf.artifact"
# the values this module put into the environment: a later stage run in the same process (ReST's steps)
# replaces them, where a value the user set stays
_ours: dict[str, str] = {}


def tracking_env(training: Any, run: RunDir) -> None:
    """The trackers write under the run's work dir, whence their logs are published with the artifact; W&B
    without an API key runs offline; MLflow as the module says (which may take ``mlflow`` out of
    ``training.report_to`` for this run). Set at the start of a stage, before any tracker starts."""
    dirs = tracker_dirs(Path(run.work_dir))
    if "wandb" in training.report_to and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_DIR", str(dirs["wandb"].parent))  # a user's own stays
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(dirs["tensorboard"])
    if "mlflow" in training.report_to:
        mlflow_env(training, run)


def _default(name: str, value: str) -> None:
    if os.environ.get(name) in (None, "", _ours.get(name)):
        os.environ[name] = _ours[name] = value


def check(training: Any) -> None:
    """Refuse, before anything is made, a tracker this process cannot log to."""
    if "mlflow" not in training.report_to:
        return
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("config key 'training.report_to': mlflow needs the MLflow client: "
                          "pip install mlflow-skinny (it comes with kuberlhf[tracking])")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise ConfigError("config key 'training.report_to': mlflow needs MLFLOW_TRACKING_URI, the tracking server "
                          "to log to (e.g. http://mlflow.example:5000; a Kubeflow Pipelines task with MLflow gets "
                          "it set); for curves inside the artifact use tensorboard")


def mlflow_env(training: Any, run: RunDir) -> None:
    """MLflow's environment for this run, and the probe of its store (see the module)."""
    check(training)
    artifact = str(run.output_dir) if run.remote else str(Path(str(run.output_dir)).resolve())
    tags = json.loads(os.environ.get("MLFLOW_TAGS") or "{}")
    os.environ["MLFLOW_TAGS"] = json.dumps({**tags, STAGE_TAG: run.stage, ARTIFACT_TAG: artifact})
    if not is_world_main():
        return
    uri, run_id = os.environ["MLFLOW_TRACKING_URI"], os.environ.get("MLFLOW_RUN_ID")
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    try:
        with _no_retries():
            from mlflow.tracking import MlflowClient

            client = MlflowClient(uri)
            if run_id or experiment_id:  # accelerate's tracker reads only the experiment's name
                experiment = client.get_experiment(client.get_run(run_id).info.experiment_id if run_id
                                                   else experiment_id).name
                os.environ["MLFLOW_EXPERIMENT_NAME"] = _ours["MLFLOW_EXPERIMENT_NAME"] = experiment
            else:  # made here, not by accelerate's tracker, which would give it the run's tags
                _default("MLFLOW_EXPERIMENT_NAME", run.stage)
                if client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"]) is None:
                    client.create_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    except Exception as err:  # any failure of the store: the training does not depend on it
        log.warning("MLflow tracking at %s: %s%s; training goes on without MLflow", uri, _reason(err),
                    f" (MLFLOW_RUN_ID={run_id})" if run_id else "")
        training.report_to = [t for t in training.report_to if t != "mlflow"] or ["none"]


@contextlib.contextmanager
def _no_retries() -> Iterator[None]:
    """MLflow's HTTP requests within: no retries, PROBE_TIMEOUT_S to answer (MLflow reads both per request)."""
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({names[0]: "0", names[1]: str(PROBE_TIMEOUT_S)})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _reason(err: BaseException) -> str:
    """One line: the socket's error where there is one (refused, unresolved, timed out), else MLflow's."""
    chain, seen = [], err
    while seen is not None and len(chain) < 16:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    root = chain[-1]
    if isinstance(root, OSError) and len(chain) > 1:
        return str(root) or type(root).__name__
    return " ".join(str(err).split())[:300] or type(err).__name__


@contextlib.contextmanager
def mlflow_run(training: Any) -> Iterator[None]:
    """A Trainer stage's MLflow run, open from before training until after the evaluation that follows it.

    transformers' MLflowCallback ends a run it started itself when training ends, and the evaluation after
    it (``trainer.evaluate()``) would then log into a new run of its own (MLflow starts one for metrics
    logged without an active run); a run already active it logs into and leaves open. Started like the
    callback would (``MLFLOW_RUN_ID``'s or a new one in ``MLFLOW_EXPERIMENT_NAME``, ``MLFLOW_TAGS`` applied by
    the callback); ended FINISHED, or FAILED by an exception. Main process only.
    """
    if "mlflow" not in training.report_to or not is_world_main():
        yield
        return
    import mlflow

    with mlflow.start_run(run_name=training.run_name):
        yield


def log_config(cfg: Any, taken: set[str] = frozenset()) -> None:
    """The resolved config, flattened (``training.learning_rate``...), as the active run's parameters, less the
    names in ``taken`` (logged already, with values of their own: MLflow refuses to change one). Main process
    only."""
    import mlflow

    if mlflow.active_run() is None:
        return
    try:
        mlflow.log_params({k: v for k, v in flatten(to_dict(cfg)).items() if k not in taken})
    except Exception as err:  # e.g. a resumed run whose parameters had other values
        log.warning("MLflow: could not log the config as parameters: %s", _reason(err))

