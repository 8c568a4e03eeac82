"""Model cards: Hugging Face metadata built with huggingface_hub, hub ids only where they are hub ids."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from kuberlhf.artifacts.cards import model_card
from kuberlhf.models.publish import base_model_config
from kuberlhf.stages.registry import load_stage_config

REPO = Path(__file__).resolve().parents[2]


def test_a_hub_base_model_and_dataset_are_metadata_and_metrics_are_model_index_results():
    cfg = load_stage_config("sft", str(REPO / "configs/sft/opt-1.3b-qlora.yaml"), [])
    card = ModelCard(model_card("sft", cfg, {"train_loss": 1.5, "eval_loss": 1.25, "data": {"rows": 3}},
                                "facebook/opt-1.3b"))
    assert card.data.base_model == "facebook/opt-1.3b" and card.data.datasets == ["Open-Orca/OpenOrca"]
    assert card.data.tags == ["kuberlhf", "sft"] and card.data.library_name == "transformers"
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("eval_loss", 1.25)]
    assert "| train_loss | 1.5 |" in card.text and "finetune: qlora" in card.text


def test_local_paths_uris_and_demo_names_are_not_called_hub_ids(tmp_path):
    for base in ("demo://tiny-llama", "outputs/demo/sft", "s3://bucket/runs/sft", str(tmp_path), "/m/x.gguf"):
        cfg = load_stage_config("sft", str(REPO / "configs/sft/demo.yaml"), [f"output_dir={tmp_path / 'o'}"])
        card = ModelCard(model_card("sft", cfg, {"train_loss": 1.0}, base))
        assert card.data.base_model is None and card.data.datasets is None, base
        assert f"from `{base}`" in card.text


def test_merge_reads_the_base_model_back_from_the_card(tmp_path):
    cfg = load_stage_config("sft", str(REPO / "configs/sft/demo.yaml"),
                            ["finetune=lora", "training.seed=7", f"output_dir={tmp_path / 'o'}"])
    (tmp_path / "README.md").write_text(model_card("sft", cfg, {"train_loss": 1.0}, cfg.model.name_or_path))
    model, seed = base_model_config(tmp_path)
    assert (model.name_or_path, seed) == ("demo://tiny-llama", 7)
