"""RLOO (TRL) of the SFT policy against the trained reward model.

$ kuberlhf rloo --config configs/rloo/demo.yaml
$ torchrun --nproc_per_node 2 -m kuberlhf.cli rloo --config configs/rloo/demo.yaml output_dir=outputs/demo/rloo-ddp

Shares its config and loop with the other value-free online stage: kuberlhf.rlhf.trl_online.
"""

from __future__ import annotations

from dataclasses import dataclass

from kuberlhf.rlhf.trl_online import OnlineRLConfig
from kuberlhf.rlhf.trl_online import run as _run


@dataclass
class RlooConfig(OnlineRLConfig):
    """Config of `kuberlhf rloo` (the fields of OnlineRLConfig)."""


def run(cfg: RlooConfig) -> dict:
    return _run(cfg, "rloo")
