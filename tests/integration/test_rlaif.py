"""``kuberlhf rlaif``: a judge model labels every pair of the candidates under a constitution; resumable;
bad constitutions, candidates and thresholds refused."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, run_cli

from kuberlhf.demo.task import Demonstrator, format_prompt


def rlaif_args(out, trained, candidates, *extra):
    return ["rlaif", "--config", str(REPO / "configs/rlaif/demo.yaml"), f"output_dir={out}",
            f"judge.name_or_path={trained / 'sft'}", f"data.train={candidates}", "save_every=4",
            "labeling.eval_fraction=0.2", *extra]


def test_every_pair_is_judged_in_both_orders_and_published_as_preference_data(tmp_path, trained, candidates,
                                                                             monkeypatch):
    from kuberlhf.eval.constitution import load_constitution
    from kuberlhf.stages import rlaif

    real, calls = rlaif._label_part, []

    def dies_in_part_two(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    out = tmp_path / "rlaif"
    with monkeypatch.context() as patch:
        patch.setattr(rlaif, "_label_part", dies_in_part_two)
        with pytest.raises(KeyboardInterrupt):
            run_cli(rlaif_args(out, trained, candidates))
    assert run_cli(rlaif_args(out, trained, candidates)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pairs_judged"] == 10 * 3 and metrics["prompts_judged_now"] == 6  # part 1 (4 prompts) kept
    assert sum(metrics["confidence_histogram"]) == 30 and 0 <= metrics["flip_share"] <= 1
    assert 0 <= metrics["gold_agreement"] <= 1
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert len(train) + len(held) == metrics["pairs_kept"] > 0
    assert not {p["task"] for p in train} & {p["task"] for p in held}
    principles = load_constitution(str(REPO / "configs/constitutions/demo.yaml")).principles
    assert all(p["principle"] in principles and 0 <= p["confidence"] <= 1 for p in train)
    from kuberlhf.data import load_examples

    data, _ = load_examples(str(out / "train.jsonl"), "preference")
    assert len(data) == len(train)


@pytest.mark.parametrize(("override", "message"), [
    ("labeling.min_confidence=0.999", "'labeling.min_confidence': 0.999 keeps none of the 30 judged pairs"),
    ("constitution={empty}", "'principles' must be a non-empty list"),
    ("constitution={missing}", "No such file"),
])
def test_bad_settings_stop_the_labeler_naming_them(tmp_path, trained, candidates, override, message):
    empty = tmp_path / "empty.yaml"
    empty.write_text("principles: []\n")
    override = override.format(empty=empty, missing=tmp_path / "nowhere.yaml")
    code, err = run_cli(rlaif_args(tmp_path / "x", trained, candidates, override), capture=True)
    assert code == 2 and message in err, err
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_a_prompt_with_one_candidate_is_refused_naming_the_row(tmp_path, trained):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "candidates": ["only"]}) + "\n")
    code, err = run_cli(rlaif_args(tmp_path / "x", trained, path), capture=True)
    assert code == 2 and "row 0" in err and "'candidates' must list at least 2" in err, err


def test_the_judge_runs_the_shared_prefix_once_and_reads_what_a_whole_forward_pass_reads(trained):
    """The batch's shared beginning runs once on a KV cache; each P(A) equals the one of the text's own full,
    unpadded forward pass."""
    import torch

    from kuberlhf.config.sections import ModelConfig
    from kuberlhf.eval.constitution import ModelJudge, load_constitution, preference_of_a
    from kuberlhf.models import loading

    cfg = ModelConfig(name_or_path=str(trained / "sft"))
    model = loading.load_causal_lm(cfg, cfg.name_or_path)
    tokenizer = loading.load_tokenizer(cfg, cfg.name_or_path, padding_side="left")
    constitution = load_constitution(str(REPO / "configs/constitutions/demo.yaml"))
    demo, texts = Demonstrator(3), []
    for n in range(6):
        question, topic = demo.question()
        texts.append(constitution.question(constitution.principles[n % 2], format_prompt(question),
                                           " " + demo.response(topic), " " + demo.response(topic)[: 5 + n]))
    cached = ModelJudge(model, tokenizer, batch_size=4)
    got = cached(texts)
    assert cached.cached_tokens > 100 and cached.texts == 6  # the few-shot head ran once per batch
    whole = ModelJudge(model, tokenizer, batch_size=4, prefix_cache=False)
    assert whole(texts) == pytest.approx(got, abs=1e-5) and whole.cached_tokens == 0
    for text, p in zip(texts, got, strict=True):
        ids = tokenizer(cached._render(text), return_tensors="pt", add_special_tokens=not cached.chat)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].float()
        assert preference_of_a(torch.log_softmax(logits, -1).tolist(), cached.tokens) == pytest.approx(p, abs=1e-5)


def test_pointwise_judging_asks_about_each_candidate_and_never_flips(tmp_path, trained, candidates, capsys):
    """The tiny demo tokenizer has no single token for Yes (refused), so its answers here are A and B."""
    out = tmp_path / "pointwise"
    assert run_cli(rlaif_args(out, trained, candidates, "labeling.mode=pointwise")) == 2
    assert "no single token for the answer label 'Yes'" in capsys.readouterr().err
    answers = tmp_path / "answers.yaml"
    answers.write_text((REPO / "configs/constitutions/demo.yaml").read_text() + "answers: [A, B]\n")
    assert run_cli(rlaif_args(out, trained, candidates, "labeling.mode=pointwise", f"constitution={answers}")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pairs_judged"] == 30 and metrics["flip_share"] == 0.0
    assert metrics["texts_per_second"] == pytest.approx(10 * 3 / metrics["seconds"])  # each candidate, once
    pairs = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert pairs and all(p["principle"] == "Is this response cheerful, with happy words about the topic asked for?"
                         for p in pairs)
    bare = tmp_path / "bare.yaml"
    bare.write_text("principles: ['Which is better?']\n")
    assert run_cli(rlaif_args(tmp_path / "bare", trained, candidates, "labeling.mode=pointwise",
                              f"constitution={bare}")) == 2
    assert "config key 'labeling.mode': pointwise judging needs the constitution's yes/no 'questions'" in \
        capsys.readouterr().err
