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
which cancels a judge's preference for a position. Optional keys: ``labels`` (the two answer labels,
default A and B), ``questions`` (yes/no questions about one response, for pointwise judging:
:func:`point_scores`) and ``answers`` (their yes and no, default Yes and No), ``template``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuberlhf.errors import ConfigError

LABELS = ("A", "B")
TEMPLATE = ("Compare two responses to the same request.\n\n{examples}Request: {prompt}\n\nResponse {label_a}: {a}\n\n"
            "Response {label_b}: {b}\n\n{principle} Answer with {label_a} or {label_b}.\nAnswer:")
EXAMPLE = ("Request: {prompt}\n\nResponse {label_a}: {a}\n\nResponse {label_b}: {b}\n\n{principle} Answer with "
           "{label_a} or {label_b}.\nAnswer: {answer}\n\n")
POINT_LABELS = ("Yes", "No")
POINT_TEMPLATE = "{prompt}\n\nResponse: {response}\n\n{question} Answer {yes} or {no}."
_KEYS = {"name", "principles", "few_shot", "template", "labels", "questions", "answers"}
_SHOT_KEYS = {"prompt", "a", "b", "answer"}


@dataclass
class Constitution:
    principles: list[str]
    few_shot: list[dict] = field(default_factory=list)
    template: str = TEMPLATE
    name: str = ""
    labels: tuple[str, str] = LABELS  # the answer labels of the first and the second response
    questions: list[str] = field(default_factory=list)  # yes/no questions about one response (pointwise mode)
    answers: tuple[str, str] = POINT_LABELS  # the yes and no answer labels of the questions

    def question(self, principle: str, prompt: str, a: str, b: str) -> str:
        """The judge's text for one ordered pair (the few-shot examples under the same principle)."""
        names = {"label_a": self.labels[0], "label_b": self.labels[1]}
        examples = "".join(EXAMPLE.format(principle=principle, **names, **{**shot, "answer": self.answer(shot)})
                           for shot in self.few_shot)
        return self.template.format(examples=examples, principle=principle, prompt=prompt, a=a, b=b, **names)

    def answer(self, shot: dict) -> str:
        """A few-shot example's answer (written A or B, or as one of the labels) as this file's label."""
        return self.labels[LABELS.index(shot["answer"])] if shot["answer"] in LABELS else shot["answer"]


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
    labels = raw.get("labels", list(LABELS))
    if (not isinstance(labels, list) or len(labels) != 2 or not all(isinstance(x, str) and x.strip() for x in labels)
            or labels[0] == labels[1]):
        raise ConfigError(f"{where}: 'labels' must be two different answer labels, e.g. [A, B], got {labels!r}")
    for i, shot in enumerate(shots):
        if shot["answer"] not in (*LABELS, *labels):
            raise ConfigError(f"{where}: few_shot[{i}].answer must be A or B (or one of 'labels'), "
                              f"got {shot['answer']!r}")
    template = raw.get("template", TEMPLATE)
    for slot in ("{prompt}", "{a}", "{b}", "{principle}"):
        if not isinstance(template, str) or slot not in template:
            raise ConfigError(f"{where}: 'template' must contain {slot}")
    questions = raw.get("questions") or []
    if not isinstance(questions, list) or not all(isinstance(q, str) and q.strip() for q in questions):
        raise ConfigError(f"{where}: 'questions' must be a list of yes/no questions about one response")
    answers = raw.get("answers", list(POINT_LABELS))
    if (not isinstance(answers, list) or len(answers) != 2 or not all(isinstance(x, str) and x.strip() for x in answers)
            or answers[0] == answers[1]):
        raise ConfigError(f"{where}: 'answers' must be two different answers (yes, no), e.g. [Yes, No], "
                          f"got {answers!r}")
    return Constitution([p.strip() for p in principles], shots, template, str(raw.get("name", "")),
                        (labels[0].strip(), labels[1].strip()), [q.strip() for q in questions],
                        (answers[0].strip(), answers[1].strip()))


def answer_tokens(tokenizer: Any, labels: Sequence[str] = LABELS) -> dict[str, list[int]]:
    """Per label (first response's, then second's), the ids of its single-token spellings (``A``, `` A``);
    a label without one is refused."""
    out: dict[str, list[int]] = {}
    for label in labels:
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

    la, lb = (pooled(ids) for ids in tokens.values())  # the first response's label, then the second's
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


def point_scores(ask: Callable[[list[str]], list[float]], constitution: Constitution,
                 items: list[tuple[str, str]]) -> list[float]:
    """Pointwise judging: each ``(prompt, response)``'s log-odds of "Yes", averaged over the constitution's
    yes/no ``questions`` (``ask`` reads P(yes) normalised over the two ``answers``)."""
    yes, no = constitution.answers
    texts = [POINT_TEMPLATE.format(prompt=p, response=r, question=q, yes=yes, no=no)
             for p, r in items for q in constitution.questions]
    probs = ask(texts)
    n = len(constitution.questions)
    eps = 1e-6
    return [sum(math.log(max(x, eps) / max(1.0 - x, eps)) for x in probs[k * n : (k + 1) * n]) / n
            for k in range(len(items))]


def point_verdict(score_i: float, score_j: float) -> Verdict:
    """A pair from two pointwise scores: P(i better) = sigmoid(score_i - score_j). No order is shown to the
    judge, so both "orders" agree by construction (never flipped)."""
    p = 1.0 / (1.0 + math.exp(score_j - score_i))
    return Verdict(p, p, 1.0 - p)


def round_robin(ask: Callable[[list[str]], list[float]], constitution: Constitution, prompts: list[str],
                responses: list[str], seed: int = 0) -> list[float]:
    """Direct RLAIF: each response's reward is its mean P(better) against every other response to the same
    prompt (both orders averaged, a principle drawn per pair), in [0, 1]; a response alone scores 0.5.
    Several samples per prompt (RLOO, GRPO) make the groups; a group's rewards average 0.5."""
    import random
    from collections import defaultdict
    from itertools import combinations

    groups: dict[str, list[int]] = defaultdict(list)
    for n, prompt in enumerate(prompts):
        groups[prompt].append(n)
    jobs = [(random.Random(f"{seed}:{prompt}:{responses[i]}:{responses[j]}").choice(constitution.principles), i, j)
            for prompt, members in groups.items() for i, j in combinations(members, 2)]
    verdicts = judge_pairs(ask, constitution, [(p, prompts[i], responses[i], responses[j]) for p, i, j in jobs])
    wins, games = [0.0] * len(prompts), [0] * len(prompts)
    for (_, i, j), v in zip(jobs, verdicts, strict=True):
        wins[i], wins[j] = wins[i] + v.p_first, wins[j] + 1.0 - v.p_first
        games[i], games[j] = games[i] + 1, games[j] + 1
    return [w / g if g else 0.5 for w, g in zip(wins, games, strict=True)]


class ModelJudge:
    """A causal LM as ``ask``: batched forward passes, the next-token log-probs at the answer. With a chat
    template the question is the user's message and the answer follows the generation prompt.

    The texts of one batch share a long beginning (the template's head, the few-shot examples, often
    the principle and the request): its keys and values are computed once per batch and the rows run
    only their own ends on that cache (``prefix_cache``; off for a model without a KV cache). The
    shared beginning is found on the token ids, so the result is the full forward pass's."""

    MIN_PREFIX = 8  # shared tokens below which a batch runs whole

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 8, max_length: int = 1024,
                 prefix_cache: bool = True, labels: Sequence[str] = LABELS):
        self.model, self.tokenizer, self.batch_size, self.max_length = model.eval(), tokenizer, batch_size, max_length
        self.tokens = answer_tokens(tokenizer, labels)
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.prefix_cache = prefix_cache
        self.cached_tokens = 0  # tokens whose forward pass the shared-prefix cache saved (a figure to report)
        self.texts = 0  # texts judged so far

    def _render(self, text: str) -> str:
        if not self.chat:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    def __call__(self, texts: list[str]) -> list[float]:
        import torch

        tok = self.tokenizer
        tok.truncation_side = "left"
        self.texts += len(texts)
        ids = [tok(self._render(t), truncation=True, max_length=self.max_length,
                   add_special_tokens=not self.chat)["input_ids"] for t in texts]
        order = sorted(range(len(ids)), key=lambda n: ids[n])  # rows with the same beginning side by side
        out: list[float] = [0.0] * len(ids)
        for i in range(0, len(order), self.batch_size):
            batch = order[i : i + self.batch_size]
            with torch.no_grad():
                logits = self._last_logits([ids[n] for n in batch])
            for n, row in zip(batch, torch.log_softmax(logits, -1).tolist(), strict=True):
                out[n] = preference_of_a(row, self.tokens)
        return out

    def _last_logits(self, rows: list[list[int]]) -> Any:
        """Next-token logits after each row: the shared prefix once (with a KV cache), then each row's end."""
        import torch

        device = next(self.model.parameters()).device
        shared = _common_prefix(rows) if self.prefix_cache else 0
        shared = min(shared, min(map(len, rows)) - 1)  # every row keeps at least one token of its own
        cache = None
        if shared >= self.MIN_PREFIX:
            prefix = torch.tensor([rows[0][:shared]], device=device)
            cache = self.model(input_ids=prefix, use_cache=True).past_key_values
            if hasattr(cache, "batch_repeat_interleave"):
                cache.batch_repeat_interleave(len(rows))
                self.cached_tokens += shared * (len(rows) - 1)
            else:  # a model without a KV cache: the batch runs whole
                self.prefix_cache, cache = False, None
        if cache is None:
            shared = 0
        ends = [r[shared:] for r in rows]
        width = max(map(len, ends))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([e + [pad] * (width - len(e)) for e in ends], device=device)
        own = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in ends], device=device)
        mask = torch.cat([torch.ones(len(rows), shared, dtype=own.dtype, device=device), own], dim=1)
        positions = shared + torch.arange(width, device=device).expand(len(rows), -1)
        logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=cache is not None).logits
        last = torch.tensor([len(e) - 1 for e in ends], device=device)
        return logits[torch.arange(len(rows), device=device), last].float()


class PointJudge:
    """A :class:`kuberlhf.eval.judges.Judge` from a pointwise AI judge: a response's score is its mean log-odds
    of yes to the constitution's questions."""

    name = "ai_judge"
    description = "the AI judge (the constitution's yes/no questions, mean log-odds of yes)"

    def __init__(self, ask: Callable[[list[str]], list[float]], constitution: Constitution):
        self.ask, self.constitution = ask, constitution

    def applies(self, prompts: list[str]) -> bool:
        return True

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return point_scores(self.ask, self.constitution, list(zip(prompts, responses, strict=True)))


def load_judge(judge: Any, path: str, device: Any, *, pointwise: bool) -> tuple[ModelJudge, Constitution]:
    """The judge of a ``judge`` section (:class:`kuberlhf.config.sections.JudgeConfig`) from its local
    ``path``, whole on ``device``, and its constitution; ``pointwise``: it answers the constitution's yes/no
    questions (which must be there), else it compares pairs."""
    from kuberlhf.config.sections import ModelConfig
    from kuberlhf.models import loading

    constitution = load_constitution(judge.constitution)
    if pointwise and not constitution.questions:
        raise ConfigError(f"config key 'judge.constitution': {judge.constitution} has no yes/no 'questions' "
                          "for the judge to answer about each response")
    model_cfg = ModelConfig(name_or_path=judge.name_or_path)
    with loading.whole_under_zero3():  # called outside any engine: whole on every process
        model = loading.load_causal_lm(model_cfg, path).to(device).requires_grad_(False)
    ask = ModelJudge(model, loading.load_tokenizer(model_cfg, path, padding_side="left"), judge.batch_size,
                     judge.max_length, labels=constitution.answers if pointwise else constitution.labels)
    return ask, constitution


def _common_prefix(rows: list[list[int]]) -> int:
    first, n = rows[0], min(map(len, rows))
    for k in range(n):
        if any(r[k] != first[k] for r in rows[1:]):
            return k
    return n
