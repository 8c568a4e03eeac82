"""The Kubeflow pipelines: they compile, load back, match the golden file, and talk to a (fake) server.

$ UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_pipelines.py   # after a deliberate pipeline change
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from kuberlhf.errors import ConfigError, KuberlhfError

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "rlhf-ppo.yaml"
GOLDEN_IMAGES = {"registry": "ghcr.io/kuberlhf", "tag": "golden"}  # fixed: a release does not change the golden file
PIPELINES = ["rlhf-ppo", "rlhf-dpo", "rlhf-human", "rlhf-rlaif", "rest"]


def compiled(name: str, tmp_path: Path, **images) -> tuple[dict, dict]:
    """(pipeline spec, platform spec) of a freshly compiled pipeline."""
    from kuberlhf.workflow.compiling import compile_pipeline

    docs = list(yaml.safe_load_all(compile_pipeline(name, tmp_path / f"{name}.yaml", **images).read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def test_pipeline_registry_matches_the_cli_choices():
    from kuberlhf.workflow.cli import PIPELINE_NAMES
    from kuberlhf.workflow.pipelines import PIPELINES as registry

    assert list(registry) == list(PIPELINE_NAMES) == PIPELINES


@pytest.mark.parametrize("name", PIPELINES)
def test_every_pipeline_compiles_and_loads_back_with_the_kfp_sdk(name, tmp_path):
    from kuberlhf.workflow.compiling import compile_pipeline, load_spec

    path = compile_pipeline(name, tmp_path / f"{name}.yaml")
    spec = load_spec(path)
    assert spec.pipeline_info.name == name
    params = spec.root.input_definitions.parameters
    assert {"mode", "procs", "sft_config", "sft_overrides", "eval_prompts", "gold_eval"} <= set(params)
    undocumented = [key for key, p in params.items() if len(p.description.strip()) < 20]
    assert not undocumented, f"parameters without a description (they are the Kubeflow UI form): {undocumented}"
    assert not [key for key, p in params.items() if "\n" in p.description], "a description broken over lines"
    from kuberlhf.workflow.pipelines.params import SHARED

    for key in set(params) & {"mode", "procs", "eval_prompts", "gold_eval", "ppo_config"}:  # never reworded per pipeline
        assert params[key].description == SHARED[key], key


def test_a_pipeline_parameter_described_nowhere_is_refused_by_name():
    from kuberlhf.workflow.pipelines.params import described

    def run(mode: str = "local", colour: str = "red"):
        pass

    with pytest.raises(TypeError, match=r"pipeline run: no description for \['colour'\]"):
        described("A pipeline.")(run)
    with pytest.raises(TypeError, match=r"described but not a parameter: \['size'\]"):
        described("A pipeline.", colour="The colour.", size="The size.")(run)
    assert "    colour: The colour.\n" in described("A pipeline.", colour="The colour.")(run).__doc__


def test_compiled_rlhf_ppo_matches_the_golden_file(tmp_path):
    from kuberlhf.workflow.compiling import compile_pipeline

    text = compile_pipeline("rlhf-ppo", tmp_path / "rlhf-ppo.yaml", **GOLDEN_IMAGES).read_text()
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    if not GOLDEN.is_file():
        pytest.fail(f"{GOLDEN.relative_to(REPO)} is missing: run with UPDATE_GOLDEN=1 to write it")
    expected = GOLDEN.read_text()
    if text != expected:
        diff = "".join(list(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "golden", "now"))[:60])
        pytest.fail(f"compiled rlhf-ppo differs from {GOLDEN.relative_to(REPO)} "
                    f"(rerun with UPDATE_GOLDEN=1 if the change is deliberate):\n{diff}")


def test_rlhf_ppo_wires_the_stages_in_order(tmp_path):
    spec, _ = compiled("rlhf-ppo", tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"data", "data-2", "data-3", "sft", "merge", "reward", "ppo", "evaluate"}

    def source(task, name):
        return tasks[task]["inputs"]["artifacts"][name]["taskOutputArtifact"]

    assert source("sft", "train_data") == {"producerTask": "data", "outputArtifactKey": "dataset"}
    assert source("reward", "train_data") == {"producerTask": "data-2", "outputArtifactKey": "dataset"}
    assert source("ppo", "train_data") == {"producerTask": "data-3", "outputArtifactKey": "dataset"}
    assert source("merge", "model") == {"producerTask": "sft", "outputArtifactKey": "model"}
    assert source("ppo", "policy") == {"producerTask": "merge", "outputArtifactKey": "merged"}
    assert source("ppo", "reward_model") == {"producerTask": "reward", "outputArtifactKey": "model"}
    assert source("evaluate", "sft_model")["producerTask"] == "merge"
    assert source("evaluate", "policy") == {"producerTask": "ppo", "outputArtifactKey": "model"}
    # run id and task name reach the launcher (deterministic PyTorchJob names for re-attaching)
    params = tasks["ppo"]["inputs"]["parameters"]
    assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert params["task"]["runtimeValue"]["constant"] == "{{$.pipeline_task_name}}"
    assert params["mode"]["componentInputParameter"] == "mode"


@pytest.mark.parametrize("name", PIPELINES)
def test_steps_carry_images_retries_caching_config_and_secrets(name, tmp_path):
    spec, platform = compiled(name, tmp_path, registry="registry.example/ml", tag="1.2.3")
    executors = spec["deploymentSpec"]["executors"]
    images = {key.removeprefix("exec-"): e["container"]["image"] for key, e in executors.items()}
    expected = {"sft": "sft", "merge": "sft", "reward": "reward", "ppo": "ppo", "dpo": "dpo", "evaluate": "ppo",
                "generate": "ppo", "feedback-export": "ppo", "feedback-wait": "ppo",
                "feedback-import": "ppo", "rlaif": "ppo", "rest-grow": "sft", "rest-improve": "sft"}

    def base(step):  # a step used several times: rest-grow-2
        return re.sub(r"-\d+$", "", step)

    for step, image in images.items():
        step = "sft" if step.startswith("data") else base(step)  # data steps run in the sft image
        assert image == f"registry.example/ml/kuberlhf-{expected[step]}:1.2.3", step
    tasks = spec["root"]["dag"]["tasks"]
    launchers = {t for t in tasks if base(t) in ("sft", "reward", "ppo", "dpo", "generate", "rlaif", "rest-grow",
                                                 "rest-improve")}
    for task_name, task in tasks.items():
        # the labeling round's progress and rankings live in Label Studio: never from the cache
        cached = task_name not in ("feedback-wait", "feedback-import")
        assert task["cachingOptions"].get("enableCache", False) is cached, task_name
        assert ("retryPolicy" in task) == (task_name in launchers), task_name
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for key, config in k8s.items():
        mounts = [(v["configMapName"], v["mountPath"]) for v in config["configMapAsVolume"]]
        assert mounts == [("kuberlhf-config", "/etc/kuberlhf")], key
        envs = {e["envVar"] for s in config["secretAsEnv"] for e in s["keyToEnv"]}
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= envs, key
        assert not any("value" in e for s in config["secretAsEnv"] for e in s["keyToEnv"]), "literal secret"


def top_level_modules(source: str) -> set[str]:
    """Modules imported at a module's top level (not inside functions)."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    return names


def top_level_imports(source: str) -> set[str]:
    """Root module names imported at a module's top level (not inside functions)."""
    return {name.split(".")[0] for name in top_level_modules(source)}


def test_top_level_import_scan_sees_a_heavy_import():
    assert top_level_imports("import torch\nfrom kfp import dsl\ndef f():\n    import yaml\n") == {"torch", "kfp"}


COMPONENTS = REPO / "src" / "kuberlhf" / "workflow" / "components"


# a sibling the components share, itself one of the modules checked here (the launching steps' passthroughs)
KFP_ONLY_SIBLINGS = {"kuberlhf.workflow.components.passthrough"}


@pytest.mark.parametrize("module", sorted(p.stem for p in COMPONENTS.glob("*.py")))
def test_components_import_only_kfp_at_module_level(module):
    modules = top_level_modules((COMPONENTS / f"{module}.py").read_text()) - KFP_ONLY_SIBLINGS
    assert {name.split(".")[0] for name in modules} <= {"kfp", "typing"}


def test_every_package_is_found_under_src():
    """setuptools finds the packages under src/: every folder of modules is a package (none would vanish from
    wheels), and the Kubeflow components and pipelines live inside kuberlhf (no package-dir remapping)."""
    import tomllib

    from setuptools import find_packages

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["packages"]["find"]["where"] == ["src"] and "package-dir" not in config
    module_dirs = {".".join(p.parent.relative_to(REPO / "src").parts) for p in (REPO / "src" / "kuberlhf").rglob("*.py")}
    assert module_dirs <= set(find_packages(str(REPO / "src"))), sorted(module_dirs - set(find_packages(str(REPO / "src"))))
    import kuberlhf.workflow.components
    import kuberlhf.workflow.pipelines

    assert Path(kuberlhf.workflow.components.__file__).parent == COMPONENTS
    assert Path(kuberlhf.workflow.pipelines.__file__).parent == REPO / "src" / "kuberlhf" / "workflow" / "pipelines"


# ---------------------------------------------------------------------------------------------- commands


def test_compile_command_writes_every_pipeline(tmp_path, capsys):
    from kuberlhf.cli import main

    assert main(["pipeline", "compile", "--out", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{n}.yaml" for n in PIPELINES)
    assert main(["pipeline", "compile", "--pipeline", "rlhf-dpo", "--out", str(tmp_path / "one.yaml")]) == 0
    assert (tmp_path / "one.yaml").is_file()
    assert main(["pipeline", "compile", "--out", str(tmp_path / "both.yaml")]) == 2
    assert "single file holds one pipeline" in capsys.readouterr().err


def test_run_parameters_are_checked_against_the_pipeline():
    from kuberlhf.workflow.compiling import parse_params

    assert parse_params("rlhf-ppo", ["mode=pytorchjob", "procs=2", 'ppo_overrides=["training.max_steps=5"]',
                                     "gold_eval=false", "eval_prompts=data/p.jsonl"]) == {
        "mode": "pytorchjob", "procs": 2, "ppo_overrides": ["training.max_steps=5"], "gold_eval": False,
        "eval_prompts": "data/p.jsonl"}
    with pytest.raises(ConfigError, match="'dpo_config': rlhf-ppo has no such parameter"):
        parse_params("rlhf-ppo", ["dpo_config=x.yaml"])
    with pytest.raises(ConfigError, match="procs: expected integer"):
        parse_params("rlhf-ppo", ["procs=two"])
    with pytest.raises(ConfigError, match="sft_overrides: expected list"):
        parse_params("rlhf-ppo", ["sft_overrides=training.max_steps=5"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_params("rlhf-ppo", ["procs"])
    # values the steps refuse are refused before a run starts
    with pytest.raises(ConfigError, match="mode: must be one of local, pytorchjob, trainjob, got 'bogus'"):
        parse_params("rlhf-dpo", ["mode=bogus"])
    with pytest.raises(ConfigError, match="procs: must be at least 1, got 0"):
        parse_params("rlhf-ppo", ["procs=0"])
    # a whole number for a float parameter is a float (kfp refuses an int there)
    poll = parse_params("rlhf-human", ["feedback_poll_s=2"])["feedback_poll_s"]
    assert poll == 2.0 and isinstance(poll, float)


class FakeKfpClient:
    """Records the calls the commands make on ``kfp.Client``; holds pipelines and their versions."""

    instances: list[FakeKfpClient] = []

    def __init__(self, host=None, namespace="kubeflow", **kwargs):
        self.host, self.namespace, self.calls = host, namespace, []
        self.pipelines: dict[str, str] = {}
        self.versions: dict[str, list[str]] = {}
        FakeKfpClient.instances.append(self)

    def create_run_from_pipeline_package(self, pipeline_file, arguments=None, **kwargs):
        from kuberlhf.workflow.compiling import load_spec

        spec = load_spec(pipeline_file)  # the file exists and is a loadable pipeline while the client reads it
        self.calls.append(("run", spec.pipeline_info.name, arguments, kwargs))
        return SimpleNamespace(run_id="run-123")

    def get_pipeline_id(self, name):
        return self.pipelines.get(name)

    def upload_pipeline(self, path, pipeline_name=None, description=None, namespace=None):
        assert Path(path).is_file() and description
        self.pipelines[pipeline_name] = f"id-{pipeline_name}"
        self.versions[f"id-{pipeline_name}"] = [pipeline_name]
        self.calls.append(("upload", pipeline_name))

    def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id=None, pipeline_name=None,
                                description=None):
        self.versions[pipeline_id].append(pipeline_version_name)
        self.calls.append(("version", pipeline_id, pipeline_version_name))

    def list_pipeline_versions(self, pipeline_id, page_token="", page_size=10, **kwargs):
        names = self.versions[pipeline_id]
        start = int(page_token or 0)
        page = [SimpleNamespace(display_name=n) for n in names[start:start + 1]]  # one per page: paging is used
        more = start + 1 < len(names)
        return SimpleNamespace(pipeline_versions=page, next_page_token=str(start + 1) if more else "")


@pytest.fixture
def fake_kfp(monkeypatch):
    import kfp

    FakeKfpClient.instances = []
    monkeypatch.setattr(kfp, "Client", FakeKfpClient)
    return FakeKfpClient


def test_submit_starts_a_run_with_the_parameters(fake_kfp, capsys):
    from kuberlhf.cli import main

    argv = ["pipeline", "submit", "--host", "http://kfp.example:8888", "--param", "mode=pytorchjob",
            "--param", 'ppo_overrides=["training.max_steps=50"]', "--experiment", "nightly"]
    assert main(argv) == 0
    (client,) = fake_kfp.instances
    assert client.host == "http://kfp.example:8888"
    ((kind, name, arguments, kwargs),) = client.calls
    assert (kind, name) == ("run", "rlhf-ppo")
    assert arguments == {"mode": "pytorchjob", "ppo_overrides": ["training.max_steps=50"]}
    assert kwargs["experiment_name"] == "nightly" and kwargs["service_account"] == "kuberlhf-launcher"
    assert "run-123" in capsys.readouterr().out


def test_upload_creates_then_versions_then_leaves_unchanged(fake_kfp):
    from kuberlhf.workflow.remote import upload

    client = fake_kfp(host="http://kfp")
    first = upload("http://kfp", PIPELINES, kfp_client=client)
    n = len(PIPELINES)
    assert [i["action"] for i in first] == ["created"] * n
    second = upload("http://kfp", PIPELINES, kfp_client=client)
    assert [i["action"] for i in second] == ["new version"] * n
    third = upload("http://kfp", PIPELINES, kfp_client=client)
    assert [i["action"] for i in third] == ["unchanged"] * n
    assert [c[0] for c in client.calls] == ["upload"] * n + ["version"] * n
    assert second[0]["version"].startswith(__import__("kuberlhf").__version__ + "-")


def test_upload_command_uses_the_host_flag(fake_kfp, capsys):
    from kuberlhf.cli import main

    assert main(["pipeline", "upload", "--host", "http://ml-pipeline.kubeflow:8888"]) == 0
    assert fake_kfp.instances[0].host == "http://ml-pipeline.kubeflow:8888"
    assert capsys.readouterr().out.count("created") == len(PIPELINES)


def test_server_errors_are_one_line(monkeypatch, capsys):
    import kfp

    class Unreachable:
        def __init__(self, **kwargs):
            raise ConnectionError("Failed to establish a new connection: [Errno 111] Connection refused\nmore")

    monkeypatch.setattr(kfp, "Client", Unreachable)
    from kuberlhf.cli import main

    assert main(["pipeline", "upload", "--host", "http://nowhere:1"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Kubeflow Pipelines at http://nowhere:1: Failed to establish" in err and "more" not in err


# -------------------------------------------------------------------------------------- step library


def test_artifact_uris_become_what_the_training_pods_read():
    from kuberlhf.workflow.data import artifact_uri

    assert artifact_uri("minio://mlpipeline/v2/artifacts/x/model") == "s3://mlpipeline/v2/artifacts/x/model"
    assert artifact_uri("s3://bucket/p") == "s3://bucket/p"
    assert artifact_uri("/tmp/local/model") == "/tmp/local/model"
    with pytest.raises(KuberlhfError, match="gs:// is not supported"):
        artifact_uri("gs://bucket/p")


def test_stage_overrides_wire_inputs_and_output_last():
    from kuberlhf.workflow.steps import stage_overrides

    args = stage_overrides("ppo", ["training.max_steps=5", "output_dir=/elsewhere"],
                           {"policy": "/a/sft", "reward_model": "/a/rm"}, "/a/ppo")
    assert args == ["training.disable_tqdm=true", "training.max_steps=5", "output_dir=/elsewhere", "policy.name_or_path=/a/sft",
                    "reward_model.name_or_path=/a/rm", "output_dir=/a/ppo"]
    assert stage_overrides("sft", [], {}, "/o")[0] == "training.disable_tqdm=true"
    with pytest.raises(ConfigError, match="unknown input"):
        stage_overrides("sft", [], {"policy": "/x"}, "/o")
    with pytest.raises(ConfigError, match="expected key=value"):
        stage_overrides("sft", ["max_steps"], {}, "/o")


def test_config_references_fall_back_to_the_mounted_config_map(tmp_path, monkeypatch):
    from kuberlhf.workflow.steps import resolve_config

    (tmp_path / "sft.yaml").write_text("output_dir: x\n")
    monkeypatch.setenv("KUBERLHF_CONFIG_DIR", str(tmp_path))
    assert resolve_config(str(REPO / "configs/sft/demo.yaml")) == str(REPO / "configs/sft/demo.yaml")
    assert resolve_config("configs/sft/sft.yaml") == str(tmp_path / "sft.yaml")
    with pytest.raises(ConfigError, match="'nope.yaml': no such file"):
        resolve_config("nope.yaml")


def fake_artifact(path: Path, metrics: dict) -> None:
    from kuberlhf.artifacts import storage

    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    storage.write_manifest(path)


@pytest.mark.parametrize("mode", ["pytorchjob", "trainjob"])
def test_cluster_modes_launch_the_stage_once_and_report_its_metrics(tmp_path, monkeypatch, mode):
    """The launcher gets the inputs' and output's object-store URIs and the mode as its backend; a retried step
    does not launch again."""
    from kuberlhf.workflow.steps import run_step

    launched = []

    def launch_stage(stage, config, overrides, *, run_id, task, cluster, manifest_out, backend, task_config):
        launched.append((stage, config, overrides, run_id, task, cluster, backend, task_config))
        Path(manifest_out).write_text("kind: PyTorchJob\n")
        output = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
        fake_artifact(Path(output), {"reward": 0.5, "kl": 1.25, "stopped_early": False, "steps": 3})

    monkeypatch.setitem(sys.modules, "kuberlhf.k8s.launcher", SimpleNamespace(launch_stage=launch_stage))
    out = tmp_path / "ppo-out"
    kwargs = dict(mode=mode, config=str(REPO / "configs/ppo/demo.yaml"), overrides=["ppo.kl_coef=0.1"],
                  inputs={"policy": "minio://mlpipeline/run/merge/merged", "reward_model": "s3://b/reward"},
                  output_path=str(tmp_path / "local-model"), output_uri=f"file://{out}",
                  manifest_path=str(tmp_path / "job.yaml"), run_id="run-1", task="ppo",
                  task_config={"resources": {"limits": {"nvidia.com/gpu": "2"}}})
    metrics = run_step("ppo", **kwargs)
    assert metrics["kl"] == 1.25
    ((stage, config, overrides, run_id, task, cluster, backend, task_config),) = launched
    assert (stage, run_id, task, cluster, backend) == ("ppo", "run-1", "ppo", None, mode)
    assert task_config == {"resources": {"limits": {"nvidia.com/gpu": "2"}}}  # the KFP task's settings, to the job
    assert overrides == ["training.disable_tqdm=true", "ppo.kl_coef=0.1", "policy.name_or_path=s3://mlpipeline/run/merge/merged",
                         "reward_model.name_or_path=s3://b/reward", f"output_dir={out}"]
    assert (tmp_path / "job.yaml").read_text() == "kind: PyTorchJob\n"
    assert (tmp_path / "local-model").is_dir()  # KFP uploads this folder after the step: it must exist
    run_step("ppo", **kwargs)  # a retry after the stage published
    assert len(launched) == 1
    with pytest.raises(ConfigError, match="mode: must be one of local, pytorchjob, trainjob"):
        run_step("ppo", **{**kwargs, "mode": "cluster"})



def test_a_cluster_step_hands_its_mlflow_run_to_the_job(tmp_path, monkeypatch):
    """KFP's MLflow integration sets MLFLOW_TRACKING_URI and MLFLOW_RUN_ID in the step's pod; the job's pods log
    into that run only if the launcher passes them on (as the task's env: checked like it, the task's own wins)."""
    from kuberlhf.workflow.steps import run_step

    launched = []

    def launch_stage(stage, config, overrides, *, task_config, manifest_out, **kwargs):
        launched.append(task_config)
        output = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
        fake_artifact(Path(output), {"loss": 1.0})

    monkeypatch.setitem(sys.modules, "kuberlhf.k8s.launcher", SimpleNamespace(launch_stage=launch_stage))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.kubeflow:5000")
    monkeypatch.setenv("MLFLOW_RUN_ID", "0123abcd")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    run_step("sft", mode="pytorchjob", config=str(REPO / "configs/sft/demo.yaml"), overrides=[], inputs={},
             output_path=str(tmp_path / "m"), output_uri=f"file://{tmp_path / 'out'}",
             manifest_path=str(tmp_path / "job.yaml"), run_id="r", task="sft",
             task_config={"env": [{"name": "MLFLOW_TRACKING_URI", "value": "http://other:5000"}]})
    (task_config,) = launched
    assert task_config["env"] == [{"name": "MLFLOW_TRACKING_URI", "value": "http://other:5000"},
                                  {"name": "MLFLOW_RUN_ID", "value": "0123abcd"}]
    from kuberlhf.k8s.taskconfig import cluster_values

    assert cluster_values(task_config)["env"] == {"MLFLOW_TRACKING_URI": "http://other:5000", "MLFLOW_RUN_ID": "0123abcd"}

def test_kfp_metrics_keep_numbers_only():
    from kuberlhf.workflow.steps import scalar_metrics

    assert scalar_metrics({"a": 1, "b": 0.5, "c": True, "d": "x", "e": {"f": 1}, "g": float("nan")}) == \
        {"a": 1.0, "b": 0.5}


# ------------------------------------------------------------------------------------------- report


def test_report_holds_plots_scores_and_samples(tmp_path, monkeypatch):
    from kuberlhf.workflow import report

    def write(name, records, metrics):
        d = tmp_path / name
        d.mkdir()
        (d / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (d / "metrics.json").write_text(json.dumps(metrics))
        return str(d)

    sft = write("sft", [{"step": s, "loss": 3 - s / 10} for s in range(1, 11)] + [{"step": 10, "eval_loss": 2.1}],
                {"train_loss": 2.5, "eval_loss": 2.1})
    reward = write("reward", [{"step": s, "accuracy": 0.5 + s / 40} for s in range(1, 11)], {"eval_accuracy": 0.9})
    ppo = write("ppo", [{"step": s, "reward": s / 10, "kl": s / 5} for s in range(1, 11)], {"kl": 1.7})
    pairs = [{"prompt": "Question: <cats> & dogs", "sft": "ok", "sft_score": 0.5, "final": "great", "final_score": 1.0}]
    monkeypatch.setattr(report, "score_policies", lambda *a, **k: {
        "gold_score_sft": 0.55, "gold_score_final": 0.83, "well_formed_sft": 0.9, "well_formed_final": 1.0,
        "win_rate": 0.75, "samples": pairs, "judge": "the built-in demo task's gold judge", "judge_name": "gold"})
    out = tmp_path / "report.html"
    metrics = report.write_report(str(out), sft_dir=sft, policy_dir=ppo, reward_dir=reward)
    assert metrics["gold_score_final"] == 0.83 and metrics["gold_gain"] == pytest.approx(0.28)
    assert metrics["reward_accuracy"] == 0.9 and metrics["kl"] == 1.7 and metrics["sft_eval_loss"] == 2.1
    page = out.read_text()
    assert page.count('src="data:image/png;base64,') == 4  # gold bars, SFT loss, reward accuracy, PPO reward/KL
    assert "SFT <b>0.550</b> &rarr; PPO <b>0.830</b>" in page
    assert "win rate 0.75. Judge: the built-in demo task&#x27;s gold judge." in page
    assert "&lt;cats&gt; &amp; dogs" in page and "<cats>" not in page  # generations are escaped

    # An artifact without a training log leaves its plot out instead of failing.
    (Path(reward) / "train_log.jsonl").unlink()
    report.write_report(str(out), sft_dir=sft, policy_dir=ppo, reward_dir=reward)
    assert out.read_text().count('src="data:image/png;base64,') == 3
    with pytest.raises(ConfigError, match="policy_stage"):
        report.write_report(str(out), sft_dir=sft, policy_dir=ppo, policy_stage="sac")


def test_local_mode_runs_the_stage_here_without_cluster_keys(tmp_path, monkeypatch, caplog):
    """Nor the KFP task's settings: they are said to have reached no pod, and the stage runs all the same."""
    from kuberlhf.workflow import steps

    ran = []

    def run_in_step(stage, config, overrides, procs=1, log_path=None):
        ran.append((stage, overrides, procs))
        out = Path(overrides[-1].removeprefix("output_dir="))
        (out / "checkpoints" / "checkpoint-2").mkdir(parents=True)
        fake_artifact(out, {"train_loss": 1.5})

    monkeypatch.setattr(steps, "run_in_step", run_in_step)
    model = tmp_path / "sft" / "model"
    task_config = {"resources": {"limits": {"nvidia.com/gpu": "1"}}, "nodeSelector": {"pool": "gpu"},
                   "env": [{"name": "FOO", "value": "bar"}], "tolerations": None, "affinity": None}
    metrics = steps.run_step("sft", mode="local", config="", overrides=["training.max_steps=3", "cluster.nodes=4"],
                              inputs={}, output_path=str(model), output_uri=str(model),
                              manifest_path=str(tmp_path / "sft" / "job_manifest"), procs=2, task_config=task_config)
    assert metrics == {"train_loss": 1.5}
    assert "mode=local: the task's resources, nodeSelector reached no pod" in caplog.text
    assert ran == [("sft", ["training.disable_tqdm=true", "training.max_steps=3", f"output_dir={model}"], 2)]
    assert "mode=local" in (tmp_path / "sft" / "job_manifest").read_text()
    assert not (model / "checkpoints").exists()  # the published artifact is what travels downstream


def test_local_command_uses_torchrun_for_several_processes():
    from kuberlhf.workflow.steps import local_command

    assert local_command("sft", "c.yaml", ["a=1"], 1) == [sys.executable, "-m", "kuberlhf.cli", "sft", "--config",
                                                          "c.yaml", "a=1"]
    cmd = local_command("ppo", "c.yaml", ["a=1"], 2)
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "kuberlhf.cli", "ppo", "--config", "c.yaml", "a=1"]


def test_local_runs_hand_the_steps_absolute_config_paths(tmp_path, monkeypatch):
    """The steps are subprocesses: relative config references become absolute where the file exists."""
    from kuberlhf.workflow.local import absolute_configs

    monkeypatch.chdir(tmp_path)  # not the checkout: the checkout's configs/ are found all the same
    defaults = {"sft_config": "configs/sft/demo.yaml", "ppo_config": "configs/ppo/demo.yaml", "mode": "local"}
    out = absolute_configs(defaults, {"ppo_config": "mine.yaml", "procs": 2})
    assert out == {"sft_config": str(REPO / "configs/sft/demo.yaml"), "ppo_config": "mine.yaml", "procs": 2}
    (tmp_path / "mine.yaml").write_text("output_dir: x\n")
    assert absolute_configs(defaults, {"ppo_config": "mine.yaml"})["ppo_config"] == str(tmp_path / "mine.yaml")


def test_rest_unrolls_its_iterations_at_compile_time(tmp_path):
    """iterations x (Grow + improve_steps Improve): each Improve starts from the step before it and filters its
    iteration's Grow samples; each Grow samples from the last Improve's policy."""
    from kuberlhf.workflow.compiling import compile_pipeline

    path = compile_pipeline("rest", tmp_path / "rest.yaml", settings={"iterations": 3, "improve_steps": 2})
    tasks = next(yaml.safe_load_all(path.read_text()))["root"]["dag"]["tasks"]
    grows = sorted(t for t in tasks if t.startswith("rest-grow"))
    improves = sorted(t for t in tasks if t.startswith("rest-improve"))
    assert len(grows) == 3 and len(improves) == 6
    order = {tasks[t]["taskInfo"]["name"]: t for t in grows + improves}
    assert sorted(order) == ["Grow 1", "Grow 2", "Grow 3", "Improve 1.1", "Improve 1.2", "Improve 2.1", "Improve 2.2",
                             "Improve 3.1", "Improve 3.2"]

    def producer(task, name):
        return tasks[task]["inputs"]["artifacts"][name]["taskOutputArtifact"]["producerTask"]

    assert producer(order["Grow 1"], "policy") == "merge"
    assert producer(order["Improve 1.1"], "policy") == "merge"
    assert producer(order["Improve 1.2"], "policy") == order["Improve 1.1"]
    assert producer(order["Grow 2"], "policy") == order["Improve 1.2"]
    assert producer(order["Improve 2.2"], "samples") == order["Grow 2"]
    assert producer("evaluate", "policy") == order["Improve 3.2"]
    params = tasks[order["Improve 2.2"]]["inputs"]["parameters"]
    assert params["iteration"]["runtimeValue"]["constant"] == 2 and params["step"]["runtimeValue"]["constant"] == 2
    # the shape is no run parameter
    assert "iterations" not in next(yaml.safe_load_all(path.read_text()))["root"]["inputDefinitions"]["parameters"]


def test_compile_settings_are_checked_and_split_from_run_parameters():
    from kuberlhf.errors import ConfigError
    from kuberlhf.workflow.compiling import split_settings

    assert split_settings("rest", ["iterations=3", "seed=1"]) == ({"iterations": 3}, ["seed=1"])
    assert split_settings("rlhf-ppo", ["iterations=3"]) == ({}, ["iterations=3"])
    for bad in ("iterations=0", "iterations=two", "iterations"):
        with pytest.raises(ConfigError, match="--param iterations: a compile setting of rest"):
            split_settings("rest", [bad])


@pytest.mark.parametrize("name", PIPELINES)
def test_only_steps_that_can_launch_carry_the_launcher_pod_label(name, tmp_path):
    """The chart's kuberlhf-launcher NetworkPolicy (egress to the API server) selects pods by this label."""
    from kuberlhf.workflow.pipelines.cluster import LAUNCHER_POD_LABELS

    spec, platform = compiled(name, tmp_path)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task_name, task in spec["root"]["dag"]["tasks"].items():
        executor = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        labels = (k8s.get(executor, {}).get("podMetadata") or {}).get("labels") or {}
        assert (labels == LAUNCHER_POD_LABELS) == ("retryPolicy" in task), task_name  # retried = launching steps


@pytest.mark.parametrize("name", PIPELINES)
def test_steps_that_can_launch_forward_their_task_settings_to_the_job(name, tmp_path):
    """Their components declare KFP's task config passthroughs and take the TaskConfig input (k8s.taskconfig);
    the other steps keep their task settings on their own pods."""
    spec, _ = compiled(name, tmp_path)
    # forwarded only (a launcher holds no GPU); env and volumes also stay on the step's pod (its Secrets, its config)
    expected = [{"field": "RESOURCES"}, {"field": "KUBERNETES_NODE_SELECTOR"}, {"field": "KUBERNETES_TOLERATIONS"},
                {"field": "KUBERNETES_AFFINITY"}, {"field": "ENV", "applyToTask": True},
                {"field": "KUBERNETES_VOLUMES", "applyToTask": True}]
    for task_name, task in spec["root"]["dag"]["tasks"].items():
        component = spec["components"][task["componentRef"]["name"]]
        params = component.get("inputDefinitions", {}).get("parameters", {})
        if "retryPolicy" in task:  # a launching step
            assert component["taskConfigPassthroughs"] == expected, task_name
            assert params["task_config"]["parameterType"] == "TASK_CONFIG", task_name
        else:
            assert "taskConfigPassthroughs" not in component and "task_config" not in params, task_name
