"""Fixtures of the integration tests."""

import json

import pytest
from helpers import reward_args, run_cli, sft_args


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A briefly trained demo SFT policy (``/sft``) and reward model (``/reward``), better than random."""
    root = tmp_path_factory.mktemp("models")
    assert run_cli(sft_args(root / "sft", "training.max_steps=40", "data.train=demo://sft?n=320")) == 0
    assert run_cli(reward_args(root / "reward", "training.max_steps=30")) == 0
    return root


@pytest.fixture
def candidates(tmp_path):
    """Ten demo prompts with three candidates each (a candidates file, as ``kuberlhf generate`` writes)."""
    from kuberlhf.demo.task import Demonstrator, format_prompt

    demo, rows = Demonstrator(7), []
    for _ in range(10):
        question, topic = demo.question()
        rows.append({"prompt": format_prompt(question), "candidates": [" " + demo.response(topic) for _ in range(3)]})
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def sigterm_kept_from_pytest():
    """SIGTERM sent to this process by a test: recorded here when no stage has taken it, never the default
    (which would end the test session)."""
    import signal

    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    yield got
    signal.signal(signal.SIGTERM, previous)
