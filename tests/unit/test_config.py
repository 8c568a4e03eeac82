"""Config precedence (defaults < YAML < key=value), and errors that name the key."""

import pytest

from kuberlhf.config import load_config, parse_override
from kuberlhf.errors import ConfigError
from kuberlhf.stages.reward import RewardConfig
from kuberlhf.stages.sft import SftConfig


@pytest.fixture
def yaml_file(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(
        "output_dir: out/sft\ndata:\n  train: demo://sft?n=10\ntraining:\n  learning_rate: 1.0e-4\n  max_steps: 5\n"
    )
    return path


def test_precedence_defaults_yaml_overrides(yaml_file):
    cfg = load_config(SftConfig, yaml_file, ["training.max_steps=7", "finetune=lora", "lora.r=4"])
    assert cfg.training.learning_rate == 1e-4  # YAML over default
    assert cfg.training.max_steps == 7  # override over YAML
    assert cfg.training.per_device_train_batch_size == 8  # default
    assert (cfg.finetune, cfg.lora.r, cfg.lora.alpha) == ("lora", 4, 32)


def test_section_default_instance_is_merged_key_by_key():
    cfg = load_config(RewardConfig, None, ["output_dir=x", "data.train=demo://preference", "model.dtype=float32"])
    # RewardConfig's model section defaults to the demo DeBERTa; setting dtype keeps that default.
    assert cfg.model.name_or_path == "demo://tiny-deberta"
    assert cfg.model.dtype == "float32"


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "training.learning_rat=1e-4",
            "unknown config key 'training.learning_rat' (did you mean 'training.learning_rate'?)",
        ),
        ("bogus=1", "unknown config key 'bogus'"),
        ("training.max_steps=ten", "config key 'training.max_steps': expected int, got str 'ten'"),
        ("training.max_steps=true", "config key 'training.max_steps': expected int, got bool True"),
        ("finetune=int8", "config key 'finetune': must be one of 'full', 'lora', 'qlora', got 'int8'"),
        ("lora.r=0", "config key 'lora.r': must be positive, got 0"),
        ("training.report_to=[neptune]", "config key 'training.report_to': unknown tracker 'neptune'"),
        ("data=3", "config key 'data': expected a mapping, got 3"),
        ("training.deepspeed=/no/such.json", "config key 'training.deepspeed': file not found: /no/such.json"),
        ("data.streaming=true", "config key 'training.max_steps': must be set (> 0) with data.streaming=true"),
        ("noequals", "override 'noequals': expected key=value"),
    ],
)
def test_bad_keys_and_values_are_named(yaml_file, override, message):
    with pytest.raises(ConfigError) as err:
        load_config(SftConfig, yaml_file, ["training.max_steps=-1", override])
    assert message in str(err.value)


def test_missing_required_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="'output_dir': required"):
        load_config(SftConfig, None, ["data.train=demo://sft"])
    with pytest.raises(ConfigError, match="'data.train': a training data source is required"):
        load_config(SftConfig, None, ["output_dir=x"])
    with pytest.raises(ConfigError, match="No such file"):
        load_config(SftConfig, tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(SftConfig, bad)


def test_override_values_are_yaml():
    assert parse_override("a.b=1.0e-4") == (["a", "b"], 1e-4)
    # YAML 1.1 reads "1e-4" as a string; float fields still take it.
    cfg = load_config(SftConfig, None, ["output_dir=x", "data.train=demo://sft", "training.learning_rate=1e-4"])
    assert cfg.training.learning_rate == 1e-4
    assert parse_override("x=[wandb, tensorboard]") == (["x"], ["wandb", "tensorboard"])
    assert parse_override("s=s3://bucket/p") == (["s"], "s3://bucket/p")


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    for stage, cls in (("sft", SftConfig), ("reward", RewardConfig)):
        files = sorted((root / stage).glob("*.yaml"))
        assert files, f"no configs under configs/{stage}"
        for path in files:
            load_config(cls, path)
            assert path.read_text().startswith("#"), f"{path} must start with the command that runs it"


@pytest.mark.parametrize(
    "stage, extra",
    [("sft", []), ("reward", []), ("dpo", []), ("rloo", []), ("grpo", [])],
)
def test_streaming_needs_max_steps_in_every_trainer_stage(stage, extra):
    from kuberlhf.stages.registry import STAGES

    cls = STAGES[stage].config_cls
    args = ["output_dir=x", "data.train=demo://sft", "data.streaming=true", *extra]
    with pytest.raises(ConfigError, match="'training.max_steps': must be set"):
        load_config(cls, None, args)
    load_config(cls, None, [*args, "training.max_steps=5"])


def test_ppo_refuses_streaming_prompts():
    from kuberlhf.stages.ppo import PpoConfig

    with pytest.raises(ConfigError, match="'data.streaming': PPO reads its prompts up front"):
        load_config(PpoConfig, None, ["output_dir=x", "data.train=demo://prompts", "data.streaming=true"])
