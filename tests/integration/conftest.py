"""Fixtures of the integration tests."""

import pytest
from helpers import reward_args, run_cli, sft_args


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A briefly trained demo SFT policy (``/sft``) and reward model (``/reward``), better than random."""
    root = tmp_path_factory.mktemp("models")
    assert run_cli(sft_args(root / "sft", "training.max_steps=40", "data.train=demo://sft?n=320")) == 0
    assert run_cli(reward_args(root / "reward", "training.max_steps=30")) == 0
    return root
