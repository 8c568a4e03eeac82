"""The pipelines' data steps: a stage's data validated into a Dataset, and the training steps reading it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from kuberlhf.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]


class FakeMetrics:
    def __init__(self):
        self.logged = {}

    def log_metric(self, key, value):
        self.logged[key] = value


def dataset_artifact(path: Path) -> SimpleNamespace:
    return SimpleNamespace(path=str(path), uri=str(path), metadata={})


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def sft_config(tmp_path: Path, train: Path, eval_: Path | None = None, **data) -> str:
    config = tmp_path / "sft.yaml"
    section = {"train": str(train), **({"eval": str(eval_)} if eval_ else {}), **data}
    config.write_text(yaml.safe_dump({"model": {"name_or_path": "demo://tiny"}, "data": section}))
    return str(config)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_data_step_writes_validated_examples_metadata_and_metrics(tmp_path):
    from kuberlhf.workflow.data import run_data_step

    train = write_rows(tmp_path / "train.jsonl", [{"question": f"q{i}", "response": f"a{i}"} for i in range(5)])
    eval_ = write_rows(tmp_path / "eval.jsonl", [{"prompt": "p", "completion": " c"}])
    dataset, metrics = dataset_artifact(tmp_path / "out" / "dataset"), FakeMetrics()
    summary = run_data_step("sft", dataset, metrics, config=sft_config(tmp_path, train, eval_))
    out = Path(dataset.path)
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "train.jsonl"]
    rows = read_jsonl(out / "train.jsonl")
    assert rows[0] == {"prompt": "Question: q0\n\nAnswer:", "completion": " a0"}  # canonical, templates applied
    assert [r["completion"] for r in rows] == [f" a{i}" for i in range(5)]  # same order
    assert read_jsonl(out / "eval.jsonl") == [{"prompt": "p", "completion": " c"}]
    assert dataset.metadata == summary
    assert {k: summary[k] for k in ("stage", "kind", "source", "rows", "rows_skipped", "eval_rows")} == {
        "stage": "sft", "kind": "sft", "source": str(train), "rows": 5, "rows_skipped": 0, "eval_rows": 1}
    assert metrics.logged == {"rows": 5.0, "rows_read": 5.0, "rows_skipped": 0.0, "eval_rows": 1.0}


def test_written_examples_load_back_as_the_same_rows(tmp_path):
    """What a training step reads from the Dataset equals what it would have read from the source."""
    from kuberlhf.data import load_examples
    from kuberlhf.workflow.data import prepare_data

    source = "demo://preference?n=50"
    prepare_data("reward", str(tmp_path), source=source, config=str(REPO / "configs/reward/demo.yaml"))
    direct, _ = load_examples(source, "preference")
    again, _ = load_examples(str(tmp_path / "train.jsonl"), "preference")
    assert again.to_list() == direct.to_list() and len(direct) == 50


def test_a_malformed_row_fails_the_step_naming_source_row_and_field(tmp_path):
    from kuberlhf.workflow.data import prepare_data

    train = write_rows(tmp_path / "train.jsonl", [{"question": "q", "response": "a"}, {"question": "q2"}])
    with pytest.raises(DataError, match=r"train\.jsonl row 1: missing field 'response'"):
        prepare_data("sft", str(tmp_path / "out"), config=sft_config(tmp_path, train))
    bad_json = write_rows(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, "{not json"])
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: invalid JSON"):
        prepare_data("dpo", str(tmp_path / "out2"), source=str(bad_json), config=str(REPO / "configs/dpo/demo.yaml"))


def test_on_bad_row_skip_drops_and_counts_the_bad_rows(tmp_path):
    from kuberlhf.workflow.data import run_data_step

    rows = [{"prompt": "p1"}, {"prompt": ""}, {"prompt": "p3"}, "[1, 2]"]
    train = write_rows(tmp_path / "prompts.jsonl", rows)
    dataset, metrics = dataset_artifact(tmp_path / "out"), FakeMetrics()
    summary = run_data_step("ppo", dataset, metrics, source=str(train), config=str(REPO / "configs/ppo/demo.yaml"),
                            overrides=["data.on_bad_row=skip", "data.eval=null", "cluster.nodes=2"])
    assert read_jsonl(Path(dataset.path) / "train.jsonl") == [{"prompt": "p1"}, {"prompt": "p3"}]
    assert not (Path(dataset.path) / "eval.jsonl").exists()
    assert (summary["rows"], summary["rows_read"], summary["rows_skipped"], summary["eval_rows"]) == (2, 4, 2, 0)
    assert "row 1: field 'prompt' is empty" in summary["skipped_examples"][0]
    assert metrics.logged["rows_skipped"] == 2.0 and dataset.metadata["rows_skipped"] == 2


def test_the_data_source_defaults_to_the_config_and_the_stage_must_be_known(tmp_path):
    from kuberlhf.workflow.data import DATA_KINDS, stage_data_config

    assert stage_data_config("ppo", str(REPO / "configs/ppo/demo.yaml"), []).train == "demo://prompts?n=2000"
    odd = "s3://bucket/a: b.jsonl"  # taken as written, not parsed as YAML
    assert stage_data_config("ppo", str(REPO / "configs/ppo/demo.yaml"), [], source=odd).train == odd
    assert stage_data_config("sft", "", [], source="demo://sft?n=10").train == "demo://sft?n=10"
    assert {DATA_KINDS[s] for s in ("reward", "dpo")} == {"preference"} and DATA_KINDS["ppo"] == "prompt"
    with pytest.raises(ConfigError, match="stage 'merge': has no training data"):
        stage_data_config("merge", "", [])
    with pytest.raises(ConfigError, match="data.train"):
        stage_data_config("sft", "", [])


def test_training_steps_read_the_dataset_local_path_or_object_store_uri(tmp_path, monkeypatch):
    from kuberlhf.workflow import steps
    from kuberlhf.workflow.data import dataset_has_eval

    seen = []
    monkeypatch.setattr(steps, "run_step", lambda stage, **kw: seen.append(kw) or {"loss": 1.0})
    model, manifest = dataset_artifact(tmp_path / "model"), dataset_artifact(tmp_path / "job")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data = SimpleNamespace(path=str(data_dir), uri="minio://mlpipeline/run/data/dataset", metadata={"eval_rows": 3})
    steps.run_stage_step("sft", {}, model, FakeMetrics(), manifest, train_data=data, mode="pytorchjob", config="")
    steps.run_stage_step("sft", {}, model, FakeMetrics(), manifest, train_data=data, mode="local", config="")
    assert [(kw["train_data"], kw["train_data_eval"]) for kw in seen] == [
        ("minio://mlpipeline/run/data/dataset", True), (str(data_dir), True)]
    # without metadata a local step looks for the files: no train.jsonl is another stage's artifact (a folder)
    from kuberlhf.workflow.data import data_overrides

    bare = SimpleNamespace(path=str(data_dir), uri="", metadata={})
    assert dataset_has_eval(bare, "local") is None
    assert data_overrides(str(data_dir), None) == [f"data.train={data_dir}"]
    (data_dir / "train.jsonl").write_text("{}\n")
    assert dataset_has_eval(bare, "local") is False
    (data_dir / "eval.jsonl").write_text("{}\n")
    assert dataset_has_eval(bare, "local") is True
    assert not dataset_has_eval(SimpleNamespace(path=str(data_dir), metadata={"eval_rows": 0}), "local")


def test_data_overrides_come_after_the_users_and_object_store_roots_become_s3(tmp_path, monkeypatch):
    from kuberlhf.workflow import steps

    ran = []

    def run_in_step(stage, config, overrides, procs=1, log_path=None):
        ran.append(overrides)
        out = Path(overrides[-1].removeprefix("output_dir="))
        out.mkdir(parents=True)
        (out / "metrics.json").write_text("{}")

    monkeypatch.setattr(steps, "run_in_step", run_in_step)
    monkeypatch.setattr(steps, "read_metrics", lambda d: {})
    common = dict(config="", inputs={}, manifest_path=str(tmp_path / "job"))
    steps.run_step("reward", mode="local", overrides=["data.train=elsewhere"], output_path=str(tmp_path / "m"),
                    output_uri=str(tmp_path / "m"), train_data="/runs/data/dataset", train_data_eval=True, **common)
    assert ran[0] == ["training.disable_tqdm=true", "data.train=elsewhere", "data.format=jsonl",
                      "data.train=/runs/data/dataset/train.jsonl", "data.eval=/runs/data/dataset/eval.jsonl",
                      f"output_dir={tmp_path / 'm'}"]
    assert steps.stage_overrides("ppo", [], {}, "/o") == ["training.disable_tqdm=true", "output_dir=/o"]  # no data step: the config's data

    launched = []

    def launch_stage(stage, config, overrides, **kw):
        launched.append(overrides)

    monkeypatch.setitem(sys.modules, "kuberlhf.k8s.launcher", SimpleNamespace(launch_stage=launch_stage))
    monkeypatch.setattr("kuberlhf.artifacts.storage.is_complete", lambda uri: False)
    steps.run_step("reward", mode="pytorchjob", overrides=[], output_path=str(tmp_path / "m2"),
                    output_uri="s3://b/m2", train_data="minio://mlpipeline/run/data/dataset/", **common)
    assert launched[0] == ["training.disable_tqdm=true", "data.format=jsonl",
                           "data.train=s3://mlpipeline/run/data/dataset/train.jsonl", "output_dir=s3://b/m2"]


@pytest.mark.parametrize("name", ["rlhf-ppo", "rlhf-dpo"])
def test_every_training_step_consumes_a_dataset_from_a_data_step(name, tmp_path):
    from kuberlhf.workflow.compiling import compile_pipeline

    spec = yaml.safe_load(compile_pipeline(name, tmp_path / f"{name}.yaml").read_text().split("\n---\n")[0])
    tasks, components = spec["root"]["dag"]["tasks"], spec["components"]
    training = {"rlhf-ppo": ["sft", "reward", "ppo"], "rlhf-dpo": ["sft", "dpo"]}[name]
    data_tasks = sorted(t for t in tasks if tasks[t]["componentRef"]["name"].startswith("comp-data"))
    assert len(data_tasks) == len(training)
    consumed = {}
    for stage in training:
        edge = tasks[stage]["inputs"]["artifacts"]["train_data"]["taskOutputArtifact"]
        assert edge["outputArtifactKey"] == "dataset" and edge["producerTask"] in data_tasks, stage
        producer = tasks[edge["producerTask"]]
        assert producer["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"] == stage
        consumed[stage] = edge["producerTask"]
        inputs = components[tasks[stage]["componentRef"]["name"]]["inputDefinitions"]["artifacts"]
        assert inputs["train_data"]["artifactType"]["schemaTitle"] == "system.Dataset", stage
    assert len(set(consumed.values())) == len(training)  # one data step per training stage
    outputs = components[tasks[data_tasks[0]]["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
    assert outputs["dataset"]["artifactType"]["schemaTitle"] == "system.Dataset"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    names = {tasks[t]["taskInfo"]["name"] for t in data_tasks}
    assert names == {"rlhf-ppo": {"SFT data", "reward data", "PPO prompts"},
                     "rlhf-dpo": {"SFT data", "DPO data"}}[name]
    params = spec["root"]["inputDefinitions"]["parameters"]
    data_params = {"rlhf-ppo": ["sft_data", "reward_data", "ppo_prompts"], "rlhf-dpo": ["sft_data", "dpo_data"]}[name]
    for key in data_params:
        assert params[key]["parameterType"] == "STRING" and params[key]["defaultValue"] == "", key
        assert "data.train" in params[key]["description"], key
