"""MLflow as a tracker (training.report_to=[mlflow]): the stages log to a real tracking server (.venv-mlflow)
and the curves, the config and the published artifact are read back with MLflow's own client.

Each stage runs in a process of its own, as a stage does: MLflow keeps its active run and tracking URI per
process.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
from helpers import cli_command, run, sft_args, subprocess_env, torchrun_command
from localserver import free_port
from test_ppo import ppo_args

SFT = ["training.report_to=[mlflow]", "training.max_steps=2"]
PPO = ["training.report_to=[mlflow]", "training.max_steps=2", "data.eval=null"]


@pytest.fixture(autouse=True)
def no_mlflow_env(monkeypatch):
    """The stages see only the MLflow settings a test gives them."""
    for name in [n for n in os.environ if n.startswith("MLFLOW_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def client(mlflow_server):
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_server.url)


def manifest_paths(out) -> list[str]:
    return [f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]]


def the_run(client, experiment: str, out):
    """The one run of ``experiment`` tagged with the artifact published at ``out``."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}: {[e.name for e in client.search_experiments()]}"
    runs = client.search_runs([exp.experiment_id], f"tags.`kuberlhf.artifact` = '{out.resolve()}'")
    assert len(runs) == 1, [r.data.tags for r in client.search_runs([exp.experiment_id])]
    return runs[0]


def steps(client, run, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


def all_runs(client) -> set[str]:
    ids = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id for r in client.search_runs(ids, max_results=10_000)}


def test_sft_logs_its_loss_config_stage_and_artifact_to_mlflow(tmp_path, mlflow_server, client):
    """No MLFLOW_EXPERIMENT_NAME: a new run in the experiment named after the stage."""
    out = tmp_path / "sft"
    proc = run(cli_command(*sft_args(out, *SFT)), **mlflow_server.env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlrun = the_run(client, "sft", out)
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1  # the evaluation after training too
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.tags["kuberlhf.stage"] == "sft"
    assert steps(client, mlrun, "loss") == [1, 2]  # training.logging_steps=1
    assert "eval_loss" in mlrun.data.metrics
    params = mlrun.data.params
    assert params["training.max_steps"] == "2" and params["model.name_or_path"] == "demo://tiny-llama"
    assert params["max_steps"] == "2"  # transformers' own: TrainingArguments
    assert not any(p.startswith("logs/mlflow") for p in manifest_paths(out))  # the server holds the run


def test_ppo_logs_reward_and_kl_per_step_to_mlflow(tmp_path, trained, mlflow_server, client):
    experiment = f"ppo-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "ppo"
    proc = run(cli_command(*ppo_args(out, trained, *PPO)), **mlflow_server.env(), MLFLOW_EXPERIMENT_NAME=experiment)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlrun = the_run(client, experiment, out)
    assert mlrun.data.tags["kuberlhf.stage"] == "ppo"
    for key in ("train/reward", "train/kl", "train/policy_loss", "train/value_loss"):
        assert steps(client, mlrun, key) == [1, 2], key
    rewards = [m.value for m in client.get_metric_history(mlrun.info.run_id, "train/reward")]
    history = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert rewards == pytest.approx([h["reward"] for h in history])
    assert mlrun.data.params["ppo.clip_range"] == "0.2" and mlrun.data.params["training.max_steps"] == "2"


@pytest.mark.parametrize("stage", ["sft", "ppo"])
def test_a_stage_logs_into_the_run_mlflow_run_id_names_and_makes_no_other(stage, tmp_path, request, mlflow_server,
                                                                         client):
    """As in a Kubeflow Pipelines task: a pipeline run, a nested run for the task, MLFLOW_RUN_ID naming it."""
    experiment = client.create_experiment(f"pipeline-{uuid.uuid4().hex[:8]}")
    parent = client.create_run(experiment, run_name="pipeline-run").info.run_id
    task = client.create_run(experiment, run_name="task", tags={"mlflow.parentRunId": parent}).info.run_id
    before, experiments = all_runs(client), len(client.search_experiments())
    out = tmp_path / stage
    args = sft_args(out, *SFT) if stage == "sft" else ppo_args(out, request.getfixturevalue("trained"), *PPO)
    proc = run(cli_command(*args), **mlflow_server.env(), MLFLOW_RUN_ID=task)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all_runs(client) == before and len(client.search_experiments()) == experiments
    logged = client.get_run(task)
    assert logged.data.tags["mlflow.parentRunId"] == parent
    assert logged.data.tags["kuberlhf.stage"] == stage
    assert logged.data.tags["kuberlhf.artifact"] == str(out.resolve())
    assert steps(client, logged, "loss" if stage == "sft" else "train/reward") == [1, 2]
    assert logged.data.params["training.max_steps"] == "2"
    assert not client.get_run(parent).data.metrics


def test_only_the_main_process_logs_under_torchrun(tmp_path, mlflow_server, client):
    experiment = f"sft-ddp-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "ddp"
    proc = run(torchrun_command(2, *sft_args(out, *SFT)), **mlflow_server.env(), MLFLOW_EXPERIMENT_NAME=experiment)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlrun = the_run(client, experiment, out)
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1
    assert steps(client, mlrun, "loss") == [1, 2]


def test_an_unreachable_tracking_server_costs_a_warning_not_the_run(tmp_path):
    """A closed port: one line naming the address and why, before training starts; the run trains on without
    MLflow and publishes (mlflow's own client would retry each call for minutes, then end the run)."""
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "sft"
    proc = run(cli_command(*sft_args(out, *SFT)), MLFLOW_TRACKING_URI=address)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "manifest.json").exists()
    lines = (proc.stderr + proc.stdout).splitlines()
    warnings = [n for n, line in enumerate(lines) if address in line]
    assert len(warnings) == 1, [lines[n] for n in warnings]
    assert "Connection refused" in lines[warnings[0]] and "without MLflow" in lines[warnings[0]]


def test_without_a_tracking_uri_mlflow_is_refused_before_anything_is_made(tmp_path):
    """Not ./mlflow.db in whatever the working directory is: one line naming the key and the variable."""
    out, cwd = tmp_path / "sft", tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(cli_command(*sft_args(out, *SFT)), env=subprocess_env(), cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "kuberlhf sft: error: config key 'training.report_to': mlflow needs MLFLOW_TRACKING_URI"), proc.stderr[-2000:]
    assert list(cwd.iterdir()) == [] and not out.exists()
