"""The stage registry is complete: each stage has every piece a stage needs, so one half-added fails here."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
from pathlib import Path
from typing import get_type_hints

import pytest

from kuberlhf import images
from kuberlhf.data import KINDS
from kuberlhf.stages.registry import POLICY_STAGES, STAGES, Stage

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_has_its_verb_config_image_component_and_data_kind(name):
    from kuberlhf.cli import build_parser

    stage = STAGES[name]
    assert stage.name == name
    path = stage.module.replace(".", "/")
    if importlib.util.find_spec(stage.module) is None:
        pytest.fail(f"stage {name}: no module {stage.module} (src/{path}.py: a config class and run(cfg))")
    # CLI verb, with the stage module's docstring as its help
    verbs = next(a for a in build_parser()._actions if a.dest == "verb").choices
    assert name in verbs and stage.summary, f"stage {name}: its module's docstring is the CLI help"
    # the config class (a dataclass with the common fields) and run(cfg)
    cls = stage.config_cls
    fields = {f.name for f in dataclasses.fields(cls)}
    assert {"output_dir", "overwrite", "storage"} <= fields
    if stage.progress_bars or stage.deepspeed:  # a training loop: its training section
        assert "training" in fields
    assert list(inspect.signature(stage.load_module().run).parameters) == ["cfg"]
    # its config folder with a demo config that loads
    from kuberlhf.stages.registry import load_stage_config

    assert (REPO / "configs" / name / "demo.yaml").is_file(), f"stage {name}: no configs/{name}/demo.yaml"
    load_stage_config(name, str(REPO / "configs" / name / "demo.yaml"), [])
    # its image folder, named by kuberlhf.images
    assert (REPO / "images" / stage.image / "Dockerfile").is_file(), f"stage {name}: no images/{stage.image}/Dockerfile"
    assert stage.image in images.IMAGES and images.STAGE_IMAGE[name] == stage.image
    # its KFP components, whose input models are the registry's
    params: set[str] = set()
    for ref in stage.all_components:
        module, factory = ref.split(":")
        if importlib.util.find_spec(module) is None or not hasattr(importlib.import_module(module), factory):
            pytest.fail(f"stage {name}: no KFP component {factory}(image) in src/{module.replace('.', '/')}.py "
                        "(docs/architecture.md, how to add a stage)")
        component = getattr(importlib.import_module(module), factory)("img")
        params |= set(component.component_spec.inputs or {})
    assert set(stage.inputs) <= params, (sorted(stage.inputs), sorted(params))
    if stage.data_kind:
        assert stage.data_kind in KINDS and "train_data" in params
    # every input it wires is a config key of the stage
    for key in stage.inputs.values():
        section, _, leaf = key.rpartition(".")
        keys = get_type_hints(get_type_hints(cls)[section]) if section else get_type_hints(cls)
        assert leaf in keys, key
    # a DeepSpeed stage has the key the launcher sets
    if stage.deepspeed:
        assert "deepspeed" in {f.name for f in dataclasses.fields(get_type_hints(cls)["training"])}
    # report panels for every policy stage, each panel (y label, [(series key, legend)])
    if name in POLICY_STAGES or name in ("sft", "reward"):
        title, panels = stage.report
        assert title and panels and all(isinstance(label, str) and lines for label, lines in panels)


def test_a_half_added_stage_fails_the_walk(monkeypatch):
    """A registry entry whose module, config folder and component are missing is caught."""
    half = Stage("ghost", "kuberlhf.stages.ghost", "GhostConfig", image="ppo", data_kind="prompt")
    monkeypatch.setitem(STAGES, "ghost", half)
    with pytest.raises(pytest.fail.Exception, match=r"stage ghost: no module kuberlhf.stages.ghost"):
        test_every_stage_has_its_verb_config_image_component_and_data_kind("ghost")
    assert not (REPO / "configs" / "ghost").exists()


def test_the_tables_that_read_the_registry_agree_with_it():
    from kuberlhf.workflow.data import DATA_KINDS
    from kuberlhf.workflow.report import POLICY_CURVES

    assert DATA_KINDS == {name: s.data_kind for name, s in STAGES.items() if s.data_kind}
    assert set(POLICY_CURVES) == set(POLICY_STAGES) == {"ppo", "dpo", "rloo", "grpo", "rest"}
    # every training loop has a bar, quieted in a pipeline step: a stage without one trains nothing
    for name, s in STAGES.items():
        trains = "training" in {f.name for f in dataclasses.fields(s.config_cls)}
        assert s.progress_bars or not trains, f"stage {name} has a training section: progress_bars=True"


def test_every_shipped_config_loads_with_its_stage(monkeypatch):
    """configs/<stage>/*.yaml: the demo, the real-run shapes (OPT-1.3B, DeBERTa-v3-base) and SmolLM2."""
    from kuberlhf.stages.registry import load_stage_config

    monkeypatch.chdir(REPO)  # their training.deepspeed paths are relative to the repository (the image's workdir)
    loaded = []
    for name in STAGES:
        for path in sorted((REPO / "configs" / name).glob("*.yaml")):
            assert path.read_text().startswith("# "), f"{path} starts with what it is and the command that runs it"
            load_stage_config(name, str(path), [])
            loaded.append(f"{name}/{path.name}")
    for expected in ("ppo/opt-1.3b.yaml", "ppo/opt-1.3b-lora.yaml", "dpo/opt-1.3b.yaml", "rloo/opt-1.3b-lora.yaml",
                     "grpo/opt-1.3b-lora.yaml", "sft/smollm2-lora.yaml", "reward/smollm2-lora.yaml",
                     "ppo/smollm2-lora.yaml", "dpo/smollm2-lora.yaml"):
        assert expected in loaded
