"""TRL's full settings: any key of a stage's TRL config passes through as training.<key>, checked by name."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, sft_args

from kuberlhf.errors import ConfigError
from kuberlhf.stages.registry import load_stage_config


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "rloo", "grpo"])
def test_a_trl_key_passes_through_and_a_typo_is_named(stage):
    config = str(REPO / "configs" / stage / "demo.yaml")
    cfg = load_stage_config(stage, config, ["training.optim=adafactor", "training.torch_compile=false"])
    assert cfg.training.extra == {"optim": "adafactor", "torch_compile": False}
    with pytest.raises(ConfigError, match=r"unknown config key 'training.optimm' \(did you mean 'training.optim'\?\)"):
        load_stage_config(stage, config, ["training.optimm=adafactor"])
    with pytest.raises(ConfigError, match=r"unknown config key 'training.learning_rat' \(did you mean "
                                          r"'training.learning_rate'\?\)"):
        load_stage_config(stage, config, ["training.learning_rat=0.1"])


def test_a_key_the_stage_sets_itself_is_refused_naming_it():
    with pytest.raises(ConfigError, match="'training.max_length': set by the stage from its own config"):
        load_stage_config("sft", str(REPO / "configs/sft/demo.yaml"), ["training.max_length=5"])


def test_the_pass_through_reaches_the_trainer(tmp_path, monkeypatch):
    """training.optim=adafactor trains with Adafactor; the key is kept in the card's config."""
    from transformers.optimization import Adafactor

    from kuberlhf.stages import sft
    from kuberlhf.stages.registry import run_stage

    trainers = []
    real = sft.SftHooks.trainer
    monkeypatch.setattr(sft.SftHooks, "trainer", lambda self, *a, **k: trainers.append(real(self, *a, **k)) or
                        trainers[-1])
    out = tmp_path / "sft"
    args = sft_args(out, "training.optim=adafactor", "training.max_steps=2")
    metrics = run_stage("sft", args[2], args[3:])
    trainer = trainers[0]
    assert trainer.args.optim == "adafactor" and metrics["global_step"] == 2
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(optimizer, Adafactor)
    assert "optim: adafactor" in (out / "README.md").read_text()
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 2
