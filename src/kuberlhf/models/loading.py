"""Loading models and tokenizers from hub names, local paths, s3:// artifacts and plug-in sources (demo://)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kuberlhf import plugins
from kuberlhf.artifacts import storage
from kuberlhf.artifacts.cache import cache_root
from kuberlhf.config.sections import LoraConfig, ModelConfig, QuantizationConfig
from kuberlhf.errors import ConfigError, KuberlhfError
from kuberlhf.models import gguf

TASKS = ("causal-lm", "sequence-classification")


def resolve_model_path(name_or_path: str, task: str, seed: int = 0) -> str:
    """A path (or hub name) ``from_pretrained`` can load.

    A name whose scheme a plug-in registers (``demo://``: :mod:`kuberlhf.plugins`) is built by it
    (once per name, task and seed, into the cache, so every later load sees the same weights);
    a ``.gguf`` file is converted once into a cached folder (:mod:`kuberlhf.models.gguf`);
    ``s3://`` artifacts are downloaded and verified against their manifest.
    """
    scheme = plugins.scheme(name_or_path)
    if scheme and scheme != "s3" and (source := plugins.load("model_sources", scheme)) is not None:
        return str(source(name_or_path, task, seed))
    if gguf.is_gguf(name_or_path):
        return str(gguf.resolve(name_or_path))
    if storage.is_remote(name_or_path):
        return str(storage.fetch_dir(name_or_path, cache_root() / "artifacts"))
    if _looks_local(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise KuberlhfError(f"model {name_or_path!r}: no such local directory (hub names look like org/name)")
    return name_or_path


def _looks_local(name: str) -> bool:
    """A path rather than a hub id: absolute, relative (./ ../ ~), or of more parts than org/name."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def torch_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def _pretrained_kwargs(cfg: ModelConfig) -> dict:
    kwargs: dict[str, Any] = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    return kwargs


def _load(loader: Any, path: str, what: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "/" in path and not _looks_local(path) and not Path(path).exists():  # org/name, or a mistyped dir/name
            raise KuberlhfError(f"cannot load {what} from {path!r}: there is no local directory {path!r} "
                                f"(in {Path.cwd()}), and as a hub name: {first}") from err
        raise KuberlhfError(f"cannot load {what} from {path!r}: {first}") from err


def load_tokenizer(cfg: ModelConfig, path: str, *, padding_side: str = "right") -> Any:
    from transformers import AutoTokenizer

    tokenizer = _load(AutoTokenizer, path, "tokenizer", revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = padding_side
    return tokenizer


def bnb_config(quant: QuantizationConfig) -> Any:
    from transformers import BitsAndBytesConfig

    compute = torch_dtype("auto" if quant.compute_dtype == "auto" else quant.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=compute,
    )


def load_causal_lm(cfg: ModelConfig, path: str, quantization: QuantizationConfig | None = None) -> Any:
    """A causal LM in the configured dtype, 4-bit (QLoRA) when ``quantization`` is given."""
    from transformers import AutoModelForCausalLM

    kwargs = _pretrained_kwargs(cfg)
    kwargs["dtype"] = torch_dtype(cfg.dtype)
    if quantization is not None:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError("finetune 'qlora' needs bitsandbytes: pip install 'kuberlhf[qlora]'") from None
        kwargs["quantization_config"] = bnb_config(quantization)
        kwargs["dtype"] = kwargs["quantization_config"].bnb_4bit_compute_dtype
    return _load(AutoModelForCausalLM, path, "causal LM", **kwargs)


def load_sequence_classifier(cfg: ModelConfig, path: str, pad_token_id: int | None) -> Any:
    """A one-label sequence classifier (reward model) from a classifier or a causal-LM checkpoint."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = _load(AutoConfig, path, "model config", revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    # A causal config carries id2label of its own; one label means a scalar score.
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    config.num_labels = 1
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    kwargs = _pretrained_kwargs(cfg)
    kwargs["dtype"] = torch_dtype(cfg.dtype)
    return _load(AutoModelForSequenceClassification, path, "sequence classifier", config=config, **kwargs)


def peft_config(lora: LoraConfig, task_type: str) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    targets: Any = lora.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    return PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type=task_type
    )


@contextlib.contextmanager
def whole_under_zero3() -> Iterator[None]:
    """Load a frozen model whole inside a ZeRO-3 Trainer run.

    Once a Trainer's arguments name a ZeRO-3 config, transformers partitions every model it loads
    (``zero.Init``); a frozen model called outside the engine (a reward model) must stay whole. The
    registration lives in a module global of transformers (no public getter), restored on exit.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
