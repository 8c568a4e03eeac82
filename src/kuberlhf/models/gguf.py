"""GGUF files (llama.cpp's format) as model sources: converted once into a cached Hugging Face folder.

``model.name_or_path=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf`` (or an ``s3://`` object) works for
every stage: transformers reads the file with the ``gguf`` package (``gguf_file=``), de-quantizing
its weights to float32, and builds the tokenizer (chat template included) from its metadata. A model
loaded that way refuses ``save_pretrained``, so the conversion rebuilds it from its config without
the quantization settings, loads the de-quantized weights and saves model and tokenizer into
``$KUBERLHF_CACHE/gguf/<digest>/``, manifest last: a folder every later load (and every process)
reuses, verified against its manifest. The weights are de-quantized values: fine for tests, demos
and fine-tuning, not a reference checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from kuberlhf.artifacts import storage
from kuberlhf.artifacts.cache import cache_root
from kuberlhf.artifacts.location import Location
from kuberlhf.errors import ConfigError, KuberlhfError

log = logging.getLogger(__name__)
SUFFIX = ".gguf"


def is_gguf(name_or_path: str) -> bool:
    return str(name_or_path).lower().endswith(SUFFIX)


def resolve(name_or_path: str) -> Path:
    """The cached Hugging Face folder of a GGUF file (local path or ``s3://`` object), converted if need be."""
    source = _local_file(name_or_path)
    stat = source.stat()
    key = hashlib.sha256(f"{source.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{source.stem}-{key}"
    if (target / storage.MANIFEST_NAME).is_file():
        storage.verify_local(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        convert(source, tmp)
        storage.write_manifest(tmp)
        try:  # atomic: another process may have converted the same file meanwhile
            os.rename(tmp, target)
        except OSError:
            storage.verify_local(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert(source: Path, out: Path) -> None:
    """Write the de-quantized model and tokenizer of the GGUF file ``source`` into the folder ``out``."""
    try:
        import gguf  # noqa: F401 (transformers reads GGUF files through it)
    except ImportError:
        raise ConfigError(f"model {str(source)!r}: GGUF files need the gguf package: "
                          "pip install 'kuberlhf[gguf]'") from None
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into a Hugging Face folder (once; cached in %s)", source, out.parent)
    folder, name = str(source.parent), source.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise KuberlhfError(f"cannot read GGUF file {str(source)!r}: {str(err).strip().splitlines()[0]}") from err
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=loaded.dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if not _tied(model, k)]:
        raise KuberlhfError(f"GGUF file {str(source)!r}: its weights do not fit its config "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if model.generation_config is not None and loaded.generation_config is not None:
        model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _tied(model, key: str) -> bool:
    """Whether a missing weight is one the model ties to another (the output embedding)."""
    return key.endswith("lm_head.weight") and bool(getattr(model.config, "tie_word_embeddings", False))


def _local_file(name_or_path: str) -> Path:
    if storage.is_remote(name_or_path):
        loc = Location.parse(name_or_path)
        target = cache_root() / "gguf" / "downloads" / hashlib.sha256(name_or_path.encode()).hexdigest()[:16] / \
            Path(loc.key()).name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            part = target.with_suffix(".part")
            with storage.open_uri(loc, "rb") as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 16 * 1024 * 1024)
            os.replace(part, target)
        return target
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise KuberlhfError(f"model {name_or_path!r}: no such GGUF file")
    return path
