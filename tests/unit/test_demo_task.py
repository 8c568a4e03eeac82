"""The demo task's gold judge, data generator and tiny models."""

import pytest

from kuberlhf.demo.data import iter_rows, parse_uri
from kuberlhf.demo.task import Demonstrator, format_prompt, gold_score, parse_phrases, topic_of
from kuberlhf.errors import DataError

COFFEE = format_prompt("Write a cheerful note about coffee.")


@pytest.mark.parametrize(
    "response, expected",
    [
        # 3 phrases; each scores 0.5 * positive adjective + 0.5 * on-topic noun, averaged.
        (" fresh beans, warm mugs, bright crema.", 1.0),  # (1 + 1 + 1) / 3
        (" fresh beans, dull mugs, warm maps.", 2 / 3),  # (1 + 0.5 + 0.5) / 3
        (" dull maps, stale goals, cold rain.", 0.0),  # nothing right
        (" fresh beans, warm mugs.", 0.0),  # two phrases: malformed
        (" fresh beans, warm mugs, bright crema", 0.0),  # no full stop
        (" fresh beans, warm mugs, bright crema. fresh beans.", 0.0),  # rambles on
        ("", 0.0),
    ],
)
def test_gold_score_hand_computed(response, expected):
    assert gold_score(COFFEE, response) == pytest.approx(expected)


def test_topic_is_read_from_the_prompt():
    assert topic_of(format_prompt("Describe the garden in a happy way.")) == "the garden"
    # The same response is on-topic for coffee and off-topic for sports.
    response = " fresh beans, warm mugs, bright crema."
    assert gold_score(format_prompt("Say something nice about sports."), response) == pytest.approx(0.5)
    assert gold_score("no topic here", response) == 0.0
    assert parse_phrases(" a b, c d, e f.") == [("a", "b"), ("c", "d"), ("e", "f")]


def test_demonstrator_is_seeded_and_mediocre():
    a = [Demonstrator(3).example() for _ in range(2)]
    assert Demonstrator(3).example() == a[0]
    writer = Demonstrator(0)
    scores = [
        gold_score(format_prompt(ex.question), " " + ex.response) for ex in (writer.example() for _ in range(2000))
    ]
    mean = sum(scores) / len(scores)
    assert 0.5 < mean < 0.7  # room for RLHF above the demonstrations
    assert min(scores) >= 0.0 and max(scores) == 1.0


def test_pairs_are_labelled_by_the_gold_judge():
    rows = list(iter_rows("demo://preference?n=200&seed=4"))
    assert len(rows) == 200
    for row in rows:
        assert gold_score(row["prompt"], row["chosen"]) - gold_score(row["prompt"], row["rejected"]) >= 0.3 - 1e-9


def test_splits_differ_and_uris_are_checked():
    train = list(iter_rows("demo://sft?n=20"))
    test = list(iter_rows("demo://sft?n=20&split=test"))
    assert train != test and train == list(iter_rows("demo://sft?n=20"))
    assert set(next(iter_rows("demo://prompts?n=1"))) == {"question"}
    assert parse_uri("demo://sft?n=5&seed=2")[:2] == ("sft", 5)
    for bad in ("demo://nope", "demo://sft?n=x", "demo://sft?split=dev", "demo://sft?foo=1"):
        with pytest.raises(DataError):
            list(iter_rows(bad))


def test_tiny_models_and_tokenizers():
    from kuberlhf.demo.models import build_model

    policy, tok = build_model("demo://tiny-llama", "causal-lm")
    reward, rtok = build_model("demo://tiny-deberta", "sequence-classification")
    assert sum(p.numel() for p in policy.parameters()) < 1_000_000
    # Task words are single tokens for the policy; the reward model has a tokenizer of its own.
    assert tok.tokenize(" fresh beans,") == ["Ġfresh", "Ġbeans", ","]
    assert rtok.get_vocab() != tok.get_vocab()
    enc = rtok(["Question: x\n\nAnswer: fresh beans."], return_tensors="pt")
    assert reward(**enc).logits.shape == (1, 1)
