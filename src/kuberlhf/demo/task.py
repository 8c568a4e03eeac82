"""The built-in demo task: cheerful notes about a topic, with a programmatic gold judge.

A prompt asks for a cheerful note about one topic (``Write a cheerful note about
coffee.``). A response is three ``adjective noun`` phrases ending with a full stop
(``fresh beans, warm mugs, bright crema.``). The gold judge gives each phrase half
a point for a positive adjective and half a point for a noun of the asked topic, and
averages over the phrases; a response that is not three well-formed phrases scores 0.

The SFT demonstrations come from a deliberately mediocre demonstrator: each example
draws a quality ``q`` and picks a positive adjective and an on-topic noun with
probability ``q`` each, and one response in ten slips (a phrase too few or too many, or
no full stop), which the judge scores 0; preference pairs therefore also teach the
reward model that malformed text is bad, so a policy cannot win by degenerating. A
policy that imitates the demonstrator scores about its mean (~0.55), leaving room for
RLHF; the judge's preference (positive words, words of the asked topic) is simple
enough for a small reward model to learn from pairs.

The gold judge is the ground truth that stages are measured against. It never trains
anything: preference labels come from it, exactly as human labels would.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

TOPICS: dict[str, tuple[str, ...]] = {
    "coffee": ("beans", "espresso", "mugs", "crema", "aroma", "roasts"),
    "the garden": ("roses", "tulips", "soil", "seeds", "leaves", "hedges"),
    "the weather": ("sunshine", "breezes", "clouds", "rain", "skies", "dew"),
    "music": ("melodies", "rhythms", "guitars", "choruses", "drums", "pianos"),
    "travel": ("trains", "maps", "beaches", "hotels", "passports", "harbors"),
    "books": ("chapters", "novels", "pages", "authors", "poems", "libraries"),
    "sports": ("goals", "teams", "races", "stadiums", "coaches", "medals"),
    "cooking": ("soups", "spices", "ovens", "breads", "sauces", "herbs"),
}
POSITIVE: tuple[str, ...] = ("lovely", "bright", "cheerful", "warm", "fresh", "calm", "gentle", "sunny")
NEGATIVE: tuple[str, ...] = ("dull", "gloomy", "awful", "cold", "stale", "noisy", "dreary", "bitter")
QUESTION_TEMPLATES: tuple[str, ...] = (
    "Write a cheerful note about {topic}.",
    "Say something nice about {topic}.",
    "Describe {topic} in a happy way.",
    "Give me a warm little line about {topic}.",
)
PHRASES = 3
MALFORMED_RATE = 0.1
ALL_NOUNS: tuple[str, ...] = tuple(n for nouns in TOPICS.values() for n in nouns)
_TOPIC_RE = re.compile("|".join(re.escape(t) for t in sorted(TOPICS, key=len, reverse=True)))
_PHRASE_RE = re.compile(r"^([a-z]+) ([a-z]+)$")


def topic_of(prompt: str) -> str | None:
    """The topic a prompt asks about (the last one named), or None."""
    found = _TOPIC_RE.findall(prompt)
    return found[-1] if found else None


def parse_phrases(response: str) -> list[tuple[str, str]] | None:
    """Split ``"a b, c d."`` into ``[(a, b), (c, d)]``; None if the response is malformed."""
    text = response.strip()
    if not text.endswith(".") or text.count(".") != 1:
        return None
    phrases = []
    for part in text[:-1].split(","):
        match = _PHRASE_RE.match(part.strip())
        if match is None:
            return None
        phrases.append((match.group(1), match.group(2)))
    if len(phrases) != PHRASES:
        return None
    return phrases


def gold_score(prompt: str, response: str) -> float:
    """Score in [0, 1]: per phrase, 0.5 for a positive adjective plus 0.5 for an on-topic noun.

    >>> gold_score("Write a cheerful note about coffee.", " fresh beans, dull mugs, stale maps.")
    0.5
    """
    topic = topic_of(prompt)
    phrases = parse_phrases(response)
    if topic is None or phrases is None:
        return 0.0
    on_topic = set(TOPICS[topic])
    points = sum(0.5 * (adj in POSITIVE) + 0.5 * (noun in on_topic) for adj, noun in phrases)
    return points / len(phrases)


@dataclass(frozen=True)
class Example:
    question: str
    response: str
    topic: str


class Demonstrator:
    """A seeded, mediocre writer of responses (the SFT demonstrator and pair sampler)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def question(self) -> tuple[str, str]:
        topic = self.rng.choice(sorted(TOPICS))
        return self.rng.choice(QUESTION_TEMPLATES).format(topic=topic), topic

    def response(self, topic: str, quality: float | None = None) -> str:
        """A phrase list whose words are good with probability ``quality`` (drawn if None)."""
        q = self.rng.choice((0.2, 0.4, 0.6, 0.8, 1.0)) if quality is None else quality
        phrases = []
        for _ in range(PHRASES):
            adj = self.rng.choice(POSITIVE if self.rng.random() < q else NEGATIVE)
            off_topic = [n for n in ALL_NOUNS if n not in TOPICS[topic]]
            noun = self.rng.choice(TOPICS[topic] if self.rng.random() < q else off_topic)
            phrases.append(f"{adj} {noun}")
        if self.rng.random() < MALFORMED_RATE:  # a slip: a phrase too few or too many, or no full stop
            slip = self.rng.choice(("short", "long", "no-stop"))
            if slip == "short":
                phrases.pop()
            elif slip == "long":
                phrases.append(phrases[0])
            else:
                return ", ".join(phrases)
        return ", ".join(phrases) + "."

    def example(self) -> Example:
        question, topic = self.question()
        return Example(question, self.response(topic), topic)

    def pair(self, min_gap: float = 0.3) -> tuple[str, str, str]:
        """(question, chosen, rejected): two responses the gold judge tells apart by ``min_gap``."""
        question, topic = self.question()
        prompt = format_prompt(question)
        while True:
            a, b = self.response(topic), self.response(topic)
            sa, sb = gold_score(prompt, a), gold_score(prompt, b)
            if abs(sa - sb) >= min_gap:
                return (question, a, b) if sa > sb else (question, b, a)


def format_prompt(question: str) -> str:
    """The default prompt template of the SFT stage, applied to a demo question."""
    return f"Question: {question}\n\nAnswer:"


def corpus(seed: int = 0, n: int = 2000) -> list[str]:
    """Text the demo tokenizers are trained on: every template and word, with task frequencies."""
    writer = Demonstrator(seed)
    lines = [format_prompt(t.format(topic=topic)) for t in QUESTION_TEMPLATES for topic in TOPICS]
    lines += [f"{adj} {noun}." for adj in POSITIVE + NEGATIVE for noun in ALL_NOUNS]
    for _ in range(n):
        ex = writer.example()
        lines.append(f"{format_prompt(ex.question)} {ex.response}")
    lines += ["\n\nHuman: hi\n\nAssistant: hello", "System: User: Assistant:"]
    return lines
