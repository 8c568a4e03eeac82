"""GRPO (TRL) of the SFT policy against the trained reward model.

$ kuberlhf grpo --config configs/grpo/demo.yaml
$ torchrun --nproc_per_node 2 -m kuberlhf.cli grpo --config configs/grpo/demo.yaml output_dir=outputs/demo/grpo-ddp

Shares its config and loop with the other value-free online stage: kuberlhf.rlhf.trl_online.
"""

from __future__ import annotations

from dataclasses import dataclass

from kuberlhf.rlhf.trl_online import OnlineRLConfig
from kuberlhf.rlhf.trl_online import run as _run


@dataclass
class GrpoConfig(OnlineRLConfig):
    """Config of `kuberlhf grpo` (the fields of OnlineRLConfig)."""


def run(cfg: GrpoConfig) -> dict:
    return _run(cfg, "grpo")
