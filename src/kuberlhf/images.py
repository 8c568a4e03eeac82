"""Container images: one per stage, named and tagged in this one place.

The components, the PyTorchJob launcher, the Helm chart and ``make images`` all read image
references from here, so a release changes them together:

    <registry>/kuberlhf-<image>:<version>      e.g. ghcr.io/kuberlhf/kuberlhf-ppo:0.1.0

The registry defaults to ``ghcr.io/kuberlhf``; ``KUBERLHF_IMAGE_REGISTRY`` overrides it (a
private mirror), ``KUBERLHF_IMAGE_TAG`` the tag (a CI build). Several stages share an image
where they need the same libraries: RLOO and GRPO are TRL trainers and run in the DPO image.
"""

from __future__ import annotations

import os

from kuberlhf import __version__
from kuberlhf.errors import ConfigError

DEFAULT_REGISTRY = "ghcr.io/kuberlhf"
# image folder under images/ -> what it runs
IMAGES = {
    "sft": "SFT (TRL SFTTrainer; LoRA, QLoRA with bitsandbytes, DeepSpeed)",
    "reward": "reward model (TRL RewardTrainer, DeepSpeed)",
    "ppo": "PPO (transformers + accelerate, DeepSpeed; no TRL)",
    "dpo": "DPO, RLOO and GRPO (TRL, DeepSpeed)",
    "launcher": "KFP components: PyTorchJob launcher, evaluation and report",
}
# stage (CLI verb) -> image folder
STAGE_IMAGE = {"sft": "sft", "reward": "reward", "ppo": "ppo", "dpo": "dpo", "rloo": "dpo", "grpo": "dpo",
               "evaluate": "launcher", "launcher": "launcher"}


def image_tag() -> str:
    return os.environ.get("KUBERLHF_IMAGE_TAG") or __version__


def image_registry() -> str:
    return (os.environ.get("KUBERLHF_IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")


def image_name(stage: str) -> str:
    """``kuberlhf-<image>`` for a stage or image folder."""
    if stage not in STAGE_IMAGE:
        raise ConfigError(f"no image for stage {stage!r}; known: {', '.join(sorted(STAGE_IMAGE))}")
    return f"kuberlhf-{STAGE_IMAGE[stage]}"


def image_ref(stage: str, registry: str | None = None, tag: str | None = None) -> str:
    """The full image reference a stage runs in, e.g. ``ghcr.io/kuberlhf/kuberlhf-ppo:0.1.0``."""
    return f"{(registry or image_registry()).rstrip('/')}/{image_name(stage)}:{tag or image_tag()}"
