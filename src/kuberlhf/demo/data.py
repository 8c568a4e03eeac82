"""Seeded data of the demo task, addressed as ``demo://`` URIs by the data loader.

- ``demo://sft?n=3000&seed=0``: OpenOrca-style ``question``/``response`` demonstrations.
- ``demo://preference?n=2000&seed=0``: ``prompt``/``chosen``/``rejected`` pairs labelled
  by the gold judge.
- ``demo://prompts?n=200&seed=0``: ``question`` rows for online RL and evaluation.

``split=test`` draws from a different seed stream than ``split=train`` (the default).
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlparse

from kuberlhf.demo.task import Demonstrator, format_prompt
from kuberlhf.errors import DataError

KINDS = {"sft": 3000, "preference": 2000, "prompts": 200}
SPLIT_SEED_OFFSET = {"train": 0, "test": 10_000}


def parse_uri(uri: str) -> tuple[str, int, int]:
    """``demo://KIND?n=N&seed=S&split=SPLIT`` -> (kind, n, seed of the split's stream)."""
    parsed = urlparse(uri)
    kind = parsed.netloc or parsed.path.strip("/")
    if parsed.scheme != "demo" or kind not in KINDS:
        raise DataError(f"{uri}: unknown demo dataset; expected demo://{{{'|'.join(KINDS)}}}")
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    unknown = set(query) - {"n", "seed", "split"}
    if unknown:
        raise DataError(f"{uri}: unknown demo dataset parameter {sorted(unknown)[0]!r}")
    split = query.get("split", "train")
    if split not in SPLIT_SEED_OFFSET:
        raise DataError(f"{uri}: split must be one of {sorted(SPLIT_SEED_OFFSET)}, got {split!r}")
    try:
        n, seed = int(query.get("n", KINDS[kind])), int(query.get("seed", 0))
    except ValueError as err:
        raise DataError(f"{uri}: n and seed must be integers ({err})") from None
    # Each kind has its own stream, so SFT data and preference pairs never coincide.
    return kind, n, seed + SPLIT_SEED_OFFSET[split] + 1000 * list(KINDS).index(kind)


def iter_rows(uri: str) -> Iterator[dict]:
    """Rows of a ``demo://`` dataset (see the module docstring)."""
    kind, n, seed = parse_uri(uri)
    writer = Demonstrator(seed)
    for _ in range(n):
        if kind == "sft":
            ex = writer.example()
            yield {"question": ex.question, "response": ex.response}
        elif kind == "preference":
            question, chosen, rejected = writer.pair()
            yield {"prompt": format_prompt(question), "chosen": " " + chosen, "rejected": " " + rejected}
        else:
            yield {"question": writer.question()[0]}
