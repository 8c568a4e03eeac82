"""Container images: one per stage, named and tagged in this one place.

The components, the PyTorchJob launcher, the Helm chart and ``make images`` all read image
references from here, so a release changes them together:

    <registry>/kuberlhf-<image>:<version>      e.g. ghcr.io/kuberlhf/kuberlhf-ppo:0.1.0

The registry defaults to ``ghcr.io/kuberlhf``; ``KUBERLHF_IMAGE_REGISTRY`` overrides it (a
private mirror), ``KUBERLHF_IMAGE_TAG`` the tag (a CI build). Several stages share an image
where they need the same libraries: RLOO and GRPO are TRL trainers and run in the DPO image
(each stage's image is named in :mod:`kuberlhf.stages.registry`).

The images themselves live in ``images/<image>/`` (Dockerfile, ``requirements.in``,
hash-locked ``requirements.lock``); ``python -m kuberlhf.images`` prints one
``<image> <reference>`` line per image for ``make images``.
"""

from __future__ import annotations

import os
import sys

from kuberlhf import __version__
from kuberlhf.errors import ConfigError
from kuberlhf.stages.registry import STAGES

DEFAULT_REGISTRY = "ghcr.io/kuberlhf"
# image folder under images/ -> what it runs
IMAGES = {
    "torch": "PyTorch (the registry's CUDA build) on Debian's Python: the training images' shared base",
    "sft": "SFT (TRL SFTTrainer; LoRA, QLoRA with bitsandbytes, DeepSpeed)",
    "reward": "reward model (TRL RewardTrainer, DeepSpeed)",
    "ppo": "PPO (transformers + accelerate, DeepSpeed; no TRL)",
    "dpo": "DPO, RLOO and GRPO (TRL, DeepSpeed)",
    "launcher": "kuberlhf launch (PyTorchJobs, TrainJobs) and the pipeline upload; no torch",
}
# the image the training images start from (one torch layer for all of them); it runs nothing itself
TORCH_IMAGE = "torch"
TRAINING_IMAGES = ("sft", "reward", "ppo", "dpo")
# stage (CLI verb) -> image folder: each stage's from the stage registry; the evaluation and report
# generate with the policy, and the labeling round reads the candidates the PPO image generated
# (kuberlhf.data, on Arrow), so both run in the PPO image; the launcher image only creates jobs
STAGE_IMAGE = {**{name: stage.image for name, stage in STAGES.items()}, "evaluate": "ppo", "feedback": "ppo",
               "launcher": "launcher"}


# Every image starts from Debian bookworm (slim). No CUDA base: the PyPI torch wheels carry the CUDA
# user-space libraries (cuBLAS, cuDNN, NCCL, the runtime), and a GPU node's NVIDIA container toolkit
# mounts the driver. Its digest is pinned in each Dockerfile by `make images-pin`; where no registry
# is reachable, `make images-base` makes local/debian:bookworm with debootstrap.
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
# the interpreter of the images (Debian bookworm's python3.11, the suite's Python); locks are resolved for it
PYTHON_VERSION = "3.11"
SOURCE_URL = "https://github.com/kuberlhf/kuberlhf"
# where the code and configs live in an image (the working directory), and the one writable
# volume: caches (Hugging Face, kuberlhf, torch extensions, matplotlib) go under CACHE_DIR;
# pods with a read-only root filesystem mount an emptyDir at DATA_DIR and at /tmp
WORKDIR = "/opt/kuberlhf"
DATA_DIR = "/data"
CACHE_DIR = "/data/cache"
# the images' user and group (numeric, so that runAsNonRoot can verify it)
USER_ID = 10001


def image_tag() -> str:
    return os.environ.get("KUBERLHF_IMAGE_TAG") or __version__


def image_registry() -> str:
    return (os.environ.get("KUBERLHF_IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")


def image_name(stage: str) -> str:
    """``kuberlhf-<image>`` for a stage or image folder."""
    if stage == TORCH_IMAGE:
        return f"kuberlhf-{TORCH_IMAGE}"
    if stage not in STAGE_IMAGE:
        raise ConfigError(f"no image for stage {stage!r}; known: {', '.join(sorted(STAGE_IMAGE))}")
    return f"kuberlhf-{STAGE_IMAGE[stage]}"


def image_ref(stage: str, registry: str | None = None, tag: str | None = None) -> str:
    """The full image reference a stage runs in, e.g. ``ghcr.io/kuberlhf/kuberlhf-ppo:0.1.0``."""
    return f"{(registry or image_registry()).rstrip('/')}/{image_name(stage)}:{tag or image_tag()}"


def oci_labels(image: str) -> dict[str, str]:
    """The OCI annotations an image is built with (``make images`` passes them as build args)."""
    if image not in IMAGES:
        raise ConfigError(f"unknown image {image!r}; known: {', '.join(IMAGES)}")
    return {
        "org.opencontainers.image.title": f"kuberlhf-{image}",
        "org.opencontainers.image.description": IMAGES[image],
        "org.opencontainers.image.version": image_tag(),
        "org.opencontainers.image.source": SOURCE_URL,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m kuberlhf.images``: ``<image> <reference>`` per image; ``--version``: the tag."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:
        print(image_tag())
    elif argv == ["--python"]:
        print(PYTHON_VERSION)
    elif not argv:
        for image in IMAGES:
            print(image, image_ref(image))
    else:
        print("usage: python -m kuberlhf.images [--version | --python]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
