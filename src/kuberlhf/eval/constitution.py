"""A written constitution and an AI labeler that applies it (RLAIF): which of two responses is better.

A constitution file (YAML) is written by a person:

.. code-block:: yaml

    name: cheerful-on-topic
    principles:                       # comparison instructions; one is drawn for each pair
      - Which response is more cheerful and about the topic the request names?
    few_shot:                         # optional worked examples, shown before every question
      - prompt: "Write a cheerful note about coffee."
        a: " fresh beans, warm mugs."
        b: " stale beans, dull maps."
        answer: A

The judge (any causal LM) reads a fixed template and its next-token distribution is read at the
answer: the probabilities of the label tokens ``A`` and ``B`` (each label's single-token spellings,
with and without a leading space, pooled), normalised over the two, as in Constitutional AI and
Lee et al. (2023) rather than free text. Each pair is judged in both orders and the two averaged,
which cancels a judge's preference for a position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuberlhf.errors import ConfigError

LABELS = ("A", "B")
TEMPLATE = ("Compare two responses to the same request.\n\n{examples}Request: {prompt}\n\nResponse A: {a}\n\n"
            "Response B: {b}\n\n{principle} Answer with A or B.\nAnswer:")
EXAMPLE = ("Request: {prompt}\n\nResponse A: {a}\n\nResponse B: {b}\n\n{principle} Answer with A or B.\n"
           "Answer: {answer}\n\n")
_KEYS = {"name", "principles", "few_shot", "template"}
_SHOT_KEYS = {"prompt", "a", "b", "answer"}


@dataclass
class Constitution:
    principles: list[str]
    few_shot: list[dict] = field(default_factory=list)
    template: str = TEMPLATE
    name: str = ""

    def question(self, principle: str, prompt: str, a: str, b: str) -> str:
        """The judge's text for one ordered pair (the few-shot examples under the same principle)."""
        examples = "".join(EXAMPLE.format(principle=principle, **shot) for shot in self.few_shot)
        return self.template.format(examples=examples, principle=principle, prompt=prompt, a=a, b=b)


def load_constitution(path: str) -> Constitution:
    """Read and check a constitution file; a fault is a one-line error naming the file and the key."""
    import yaml

    where = f"constitution {path}"
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"{where}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with 'principles', got {type(raw).__name__}")
    if unknown := sorted(set(raw) - _KEYS):
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(_KEYS))}")
    principles = raw.get("principles")
    if not isinstance(principles, list) or not principles:
        raise ConfigError(f"{where}: 'principles' must be a non-empty list of comparison instructions")
    for i, p in enumerate(principles):
        if not isinstance(p, str) or not p.strip():
            raise ConfigError(f"{where}: principles[{i}] must be a non-empty text")
    shots = raw.get("few_shot") or []
    if not isinstance(shots, list):
        raise ConfigError(f"{where}: 'few_shot' must be a list of {{prompt, a, b, answer}}")
    for i, shot in enumerate(shots):
        if not isinstance(shot, dict) or set(shot) != _SHOT_KEYS:
            raise ConfigError(f"{where}: few_shot[{i}] must have exactly the keys {', '.join(sorted(_SHOT_KEYS))}")
        if shot["answer"] not in LABELS:
            raise ConfigError(f"{where}: few_shot[{i}].answer must be A or B, got {shot['answer']!r}")
    template = raw.get("template", TEMPLATE)
    for slot in ("{prompt}", "{a}", "{b}", "{principle}"):
        if not isinstance(template, str) or slot not in template:
            raise ConfigError(f"{where}: 'template' must contain {slot}")
    return Constitution([p.strip() for p in principles], shots, template, str(raw.get("name", "")))


def answer_tokens(tokenizer: Any) -> dict[str, list[int]]:
    """Per label, the ids of its single-token spellings (``A``, `` A``); a label without one is refused."""
    out: dict[str, list[int]] = {}
    for label in LABELS:
        ids = {tuple(tokenizer.encode(text, add_special_tokens=False)) for text in (label, " " + label)}
        single = sorted({t[0] for t in ids if len(t) == 1})
        if not single:
            raise ConfigError(f"config key 'judge': its tokenizer has no single token for the answer label {label!r} "
                              "(the judge's answer is read as one next-token probability)")
        out[label] = single
    return out


def preference_of_a(logprobs: Sequence[float], tokens: dict[str, list[int]]) -> float:
    """P(A) normalised over A and B, from next-token log-probs (each label's spellings pooled)."""
    def pooled(ids: list[int]) -> float:
        top = max(logprobs[i] for i in ids)
        return top + math.log(sum(math.exp(logprobs[i] - top) for i in ids))

    la, lb = pooled(tokens["A"]), pooled(tokens["B"])
    return 1.0 / (1.0 + math.exp(lb - la))


@dataclass
class Verdict:
    """The judge on one pair (i, j): P(i better) averaged over both orders, and what each order said."""

    p_first: float  # P(i better), averaged
    forward: float  # P(A) with i as A
    backward: float  # P(A) with j as A (so 1 - backward is P(i better) in that order)

    @property
    def flipped(self) -> bool:
        """The two orders disagree: the label followed the position, not the responses."""
        return (self.forward > 0.5) != (self.backward < 0.5)

    @property
    def confidence(self) -> float:
        return abs(2 * self.p_first - 1)


def both_orders(forward: float, backward: float) -> Verdict:
    return Verdict((forward + (1.0 - backward)) / 2, forward, backward)


def judge_pairs(ask: Callable[[list[str]], list[float]], constitution: Constitution,
                pairs: list[tuple[str, str, str, str]]) -> list[Verdict]:
    """Verdicts on ``(principle, prompt, i_text, j_text)`` pairs; ``ask`` maps judge texts to P(A) each."""
    texts = []
    for principle, prompt, a, b in pairs:
        texts += [constitution.question(principle, prompt, a, b), constitution.question(principle, prompt, b, a)]
    p = ask(texts)
    return [both_orders(p[2 * k], p[2 * k + 1]) for k in range(len(pairs))]


class ModelJudge:
    """A causal LM as ``ask``: batched, left-padded forward passes, the next-token log-probs at the answer.
    With a chat template the question is the user's message and the answer follows the generation prompt."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, max_length: int = 1024):
        self.model, self.tokenizer, self.batch_size, self.max_length = model.eval(), tokenizer, batch_size, max_length
        self.tokens = answer_tokens(tokenizer)
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def _render(self, text: str) -> str:
        if not self.chat:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    def __call__(self, texts: list[str]) -> list[float]:
        import torch

        from kuberlhf.models.generation import position_ids

        tok, out = self.tokenizer, []
        tok.padding_side, tok.truncation_side = "left", "left"
        device = next(self.model.parameters()).device
        for i in range(0, len(texts), self.batch_size):
            enc = tok([self._render(t) for t in texts[i : i + self.batch_size]], return_tensors="pt", padding=True,
                      truncation=True, max_length=self.max_length, add_special_tokens=not self.chat).to(device)
            with torch.no_grad():
                logits = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                    position_ids=position_ids(enc["attention_mask"])).logits[:, -1].float()
            for row in torch.log_softmax(logits, -1).tolist():
                out.append(preference_of_a(row, self.tokens))
        return out
