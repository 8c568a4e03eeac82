"""The AI labeler's arithmetic: answer-token probabilities, both orders averaged, a planted position bias
undone, and constitutions that make no sense refused."""

from __future__ import annotations

import math

import pytest

from kuberlhf.errors import ConfigError
from kuberlhf.eval.constitution import (
    Constitution,
    answer_tokens,
    both_orders,
    judge_pairs,
    load_constitution,
    preference_of_a,
)


class Tokens:
    """A tokenizer stand-in: a fixed vocabulary, multi-token spellings for what it lacks."""

    def __init__(self, vocab):
        self.vocab = vocab

    def encode(self, text, add_special_tokens=False):
        return [self.vocab[text]] if text in self.vocab else [99, 98]


def test_answer_probability_pools_each_labels_spellings_and_normalises_over_the_two():
    tokens = answer_tokens(Tokens({"A": 1, " A": 2, "B": 3}))  # " B" is two tokens: not a spelling of B
    assert tokens == {"A": [1, 2], "B": [3]}
    logprobs = [math.log(p) for p in (0.1, 0.2, 0.1, 0.3, 0.3)]
    # P(A) = (0.2 + 0.1) / (0.2 + 0.1 + 0.3) = 0.5 exactly
    assert preference_of_a(logprobs, tokens) == pytest.approx(0.5)
    logprobs = [math.log(p) for p in (0.05, 0.6, 0.15, 0.1, 0.1)]
    assert preference_of_a(logprobs, tokens) == pytest.approx((0.6 + 0.15) / (0.6 + 0.15 + 0.1))


def test_both_orders_are_averaged():
    verdict = both_orders(forward=0.9, backward=0.3)  # i as A: 0.9 for i; j as A: 0.7 for i
    assert verdict.p_first == pytest.approx(0.8) and verdict.confidence == pytest.approx(0.6)
    assert not verdict.flipped
    assert both_orders(0.8, 0.8).flipped  # "A" both times: the position, not the responses


def test_a_judge_with_a_planted_position_bias_is_corrected_by_the_swap():
    """A judge that adds +2 logits to whatever stands first: one order alone always says A; averaged, the
    better response wins every pair."""
    quality = {"good": 1.0, "fair": 0.5, "bad": 0.0}
    constitution = Constitution(["Which is better?"])

    def ask(texts):
        out = []
        for text in texts:
            a = text.split("Response A: ")[1].split("\n")[0]
            b = text.split("Response B: ")[1].split("\n")[0]
            out.append(1 / (1 + math.exp(-(2.0 + quality[a] - quality[b]))))
        return out

    pairs = [("Which is better?", "Q", x, y) for x in quality for y in quality if x != y]
    verdicts = judge_pairs(ask, constitution, pairs)
    assert all(v.forward > 0.5 for v in verdicts)  # position bias: first place always wins alone
    for (_, _, x, y), v in zip(pairs, verdicts, strict=True):
        assert (v.p_first > 0.5) == (quality[x] > quality[y]), (x, y, v)
    assert all(v.flipped for v in verdicts)


def test_a_tokenizer_without_a_single_token_label_is_refused():
    with pytest.raises(ConfigError, match="no single token for the answer label 'B'"):
        answer_tokens(Tokens({"A": 1}))


@pytest.mark.parametrize(("text", "message"), [
    ("", "expected a mapping"),
    ("principles: []\n", "'principles' must be a non-empty list"),
    ("principles: [ok, '']\n", r"principles\[1\] must be a non-empty text"),
    ("principles: [ok]\nfew_shot: [{prompt: p, a: x, b: y, answer: C}]\n", r"few_shot\[0\].answer must be A or B"),
    ("principles: [ok]\nfew_shot: [{prompt: p, a: x}]\n", r"few_shot\[0\] must have exactly the keys"),
    ("principles: [ok]\nrules: [x]\n", "unknown key"),
    ("principles: [ok]\ntemplate: 'no slots'\n", "'template' must contain"),
    ("principles: [ok\n", "not YAML"),
    ("principles: [ok]\nlabels: [A]\n", "'labels' must be two different answer labels"),
    ("principles: [ok]\nlabels: ['1', '1']\n", "'labels' must be two different answer labels"),
])
def test_a_constitution_that_makes_no_sense_is_refused_naming_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_constitution(str(path))


def test_the_shipped_constitutions_load():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[2] / "configs" / "constitutions").glob("*.yaml")):
        assert load_constitution(str(path)).principles, path


def test_other_answer_labels_name_the_responses_and_are_read_in_order(tmp_path):
    """labels: [1, 2]: the template and the few-shot answers speak of 1 and 2; P(first) reads label 1's tokens."""
    path = tmp_path / "c.yaml"
    path.write_text("principles: ['Which is nicer?']\nlabels: ['1', '2']\n"
                    "few_shot: [{prompt: p, a: x, b: y, answer: B}]\n")
    c = load_constitution(str(path))
    text = c.question("Which is nicer?", "Q", " good", " bad")
    assert "Response 1:  good" in text and "Response 2:  bad" in text and "Answer with 1 or 2." in text
    assert "Answer: 2\n" in text and "Response A" not in text  # the example's B is the second label
    tokens = answer_tokens(Tokens({"1": 5, " 1": 6, "2": 7}), c.labels)
    assert tokens == {"1": [5, 6], "2": [7]}
    logprobs = [-9.0] * 10
    logprobs[5], logprobs[7] = math.log(0.3), math.log(0.1)  # P(1) = 0.3 + P(" 1") ~ 0, P(2) = 0.1
    assert preference_of_a(logprobs, tokens) == pytest.approx((0.3 + math.exp(-9)) / (0.4 + math.exp(-9)), rel=1e-6)


def test_pointwise_scores_are_mean_log_odds_and_a_pair_is_their_sigmoid_difference():
    from kuberlhf.eval.constitution import POINT_TEMPLATE, point_scores, point_verdict

    c = Constitution(["Which?"], questions=["Is it cheerful?", "Is it on topic?"])
    asked = []

    def ask(texts):
        asked.extend(texts)
        return [0.8, 0.5, 0.2, 0.2]  # response 1: P(Yes) per question; response 2: the same

    s1, s2 = point_scores(ask, c, [("Q", " good"), ("Q", " bad")])
    assert asked[0] == POINT_TEMPLATE.format(prompt="Q", response=" good", question="Is it cheerful?", yes="Yes",
                                             no="No")
    assert asked[1].endswith("Is it on topic? Answer Yes or No.") and len(asked) == 4
    assert s1 == pytest.approx((math.log(4) + 0.0) / 2) and s2 == pytest.approx(math.log(0.25))
    v = point_verdict(s1, s2)
    assert v.p_first == pytest.approx(1 / (1 + math.exp(s2 - s1))) and not v.flipped
    assert both_orders(v.forward, v.backward).p_first == pytest.approx(v.p_first)
