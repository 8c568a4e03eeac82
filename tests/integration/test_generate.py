"""``kuberlhf generate``: K candidates per prompt, seeded, resumable after its last sealed part."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, run_cli


def generate_args(out, trained, *extra):
    return ["generate", "--config", str(REPO / "configs/generate/demo.yaml"), f"output_dir={out}",
            f"policy.name_or_path={trained / 'sft'}", "data.train=demo://prompts?n=20", "sampling.num_candidates=3",
            "sampling.batch_size=4", "save_every=8", *extra]


def killed_in_part_two(out, trained, monkeypatch):
    """A run into ``out`` killed while it generates its second part (the first one sealed)."""
    from kuberlhf.stages import generate

    real = generate.generate_part

    def dies_in_part_two(*args, **kwargs):
        if args[-1] == 1:  # the seed of part 2 (sampling.seed 0 + part 1)
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(generate, "generate_part", dies_in_part_two)
        with pytest.raises(KeyboardInterrupt):
            run_cli(generate_args(out, trained))


def rows_of(out):
    return [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]


def test_candidates_are_written_per_prompt_and_a_killed_run_resumes_to_the_same_result(tmp_path, trained,
                                                                                      monkeypatch):
    whole = tmp_path / "whole"
    assert run_cli(generate_args(whole, trained)) == 0
    rows = rows_of(whole)
    assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
    assert all(len(r["candidates"]) == 3 and r["prompt"].startswith("Question:") for r in rows)
    assert rows[0]["model"] == str(trained / "sft") and rows[0]["generation"]["num_candidates"] == 3
    assert any(len(set(r["candidates"])) > 1 for r in rows), "sampling gave identical candidates everywhere"
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["prompts"] == 20 and metrics["generated_prompts"] == 20 and metrics["candidates_per_second"] > 0

    cut = tmp_path / "cut"
    killed_in_part_two(cut, trained, monkeypatch)
    assert not (cut / "manifest.json").exists() and (cut / "checkpoints/checkpoint-1/manifest.json").is_file()
    assert run_cli(generate_args(cut, trained)) == 0
    assert rows_of(cut) == rows  # part 1 kept, parts 2 and 3 sampled from their own seeds
    assert json.loads((cut / "metrics.json").read_text())["resumed_prompts"] == 8

    code, err = run_cli(generate_args(cut, trained, "overwrite=true", "sampling.temperature=0.5",
                                      "data.train=demo://prompts?n=8"), capture=True)
    assert code == 0, err


@pytest.mark.parametrize(("override", "key"), [
    ("sampling.num_candidates=1", "sampling.num_candidates"),
    ("data.eval=demo://prompts?n=4", "data.eval"),
    ("save_every=0", "save_every"),
])
def test_bad_generate_settings_name_their_key(tmp_path, trained, override, key):
    code, err = run_cli(generate_args(tmp_path / "x", trained, override), capture=True)
    assert code == 2 and f"'{key}'" in err, err
    assert not (tmp_path / "x").exists()


def test_a_resume_with_other_settings_is_refused(tmp_path, trained, monkeypatch):
    out = tmp_path / "g"
    killed_in_part_two(out, trained, monkeypatch)
    code, err = run_cli(generate_args(out, trained, "sampling.temperature=0.7"), capture=True)
    assert code == 2 and "'sampling.temperature'" in err and "overwrite=true" in err, err
