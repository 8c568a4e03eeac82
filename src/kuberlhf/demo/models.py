"""Tiny models of the demo task, built locally from configs (nothing is downloaded).

``demo://tiny-llama`` is a 2-layer Llama causal LM with a byte-level BPE tokenizer;
``demo://tiny-deberta`` is a 2-layer DeBERTa-v2 sequence classifier (the architecture
of DeBERTa-v3) with its own word-level tokenizer, so policy and reward model do not
share a tokenizer, as in the real recipe. ``demo://tiny-opt`` is a second, fast causal
architecture with what the Llama lacks: OPT's learned absolute positions, dropout 0.1 (as in
facebook/opt-*) and a SentencePiece-style tokenizer (Unigram with a Metaspace pre-tokenizer and
decoder, as Llama-2, Mistral and DeBERTa-v3 have). Weights are randomly initialised from a
seed: the demo's "pretraining" is its SFT stage.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from kuberlhf.artifacts.cache import cache_root, fingerprint
from kuberlhf.errors import ConfigError

DEMO_MODELS = ("demo://tiny-llama", "demo://tiny-deberta", "demo://tiny-opt")
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def is_demo_model(name: str) -> bool:
    return name.startswith("demo://")


def build_tokenizer(name: str):
    """The tokenizer of a demo model, trained in well under a second on the task's corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from kuberlhf.demo.task import corpus

    if name == "demo://tiny-llama":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=768,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus(), trainer)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
        fast.chat_template = CHAT_TEMPLATE
        return fast
    if name == "demo://tiny-opt":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(vocab_size=600, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                          unk_token="<unk>", show_progress=False)
        tok.train_from_iterator(corpus(), trainer)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                       unk_token="<unk>")
        fast.chat_template = CHAT_TEMPLATE
        return fast
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.train_from_iterator(
        corpus(),
        trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        bos_token="[CLS]",
        eos_token="[SEP]",
    )


def build_model(name: str, task: str, seed: int = 0):
    """(model, tokenizer) of a demo model; ``task`` is "causal-lm" or "sequence-classification"."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        DebertaV2Config,
        LlamaConfig,
        OPTConfig,
    )

    if name not in DEMO_MODELS:
        raise ConfigError(f"model {name!r}: unknown demo model; expected one of {', '.join(DEMO_MODELS)}")
    tokenizer = build_tokenizer(name)
    torch.manual_seed(seed)
    if name == "demo://tiny-llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    elif name == "demo://tiny-opt":
        config = OPTConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            ffn_dim=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=64,
            dropout=0.1,
            attention_dropout=0.1,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    else:
        config = DebertaV2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            position_buckets=32,
            pad_token_id=tokenizer.pad_token_id,
        )
    config.num_labels = 1
    if task == "causal-lm":
        return AutoModelForCausalLM.from_config(config), tokenizer
    if task == "sequence-classification":
        return AutoModelForSequenceClassification.from_config(config), tokenizer
    raise ValueError(f"unknown task {task!r}")


def resolve(name: str, task: str, seed: int = 0) -> Path:
    """The folder of demo model ``name`` built for ``task`` from ``seed`` (the ``demo://`` model source).

    Built once per (name, task, seed, source of this package) and saved into the cache, so every
    later load (the QLoRA reload for merging, the reference model) sees the same weights.
    """
    key = f"{name.removeprefix('demo://')}-{task}-seed{seed}-{_source_fingerprint()}"
    target = cache_root() / "demo-models" / key
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
        model, tokenizer = build_model(name, task, seed)
        # transformers writes weights on global rank 0 only; every node builds into its own cache
        model.should_save_on_this_rank = lambda is_main_process: is_main_process
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:  # atomic: a concurrent process (another rank) may have won the race
            os.rename(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _source_fingerprint() -> str:
    """Changes whenever the code that builds demo models or their tokenizers' corpus changes."""
    from kuberlhf.demo import task

    return fingerprint(Path(__file__).read_text() + Path(task.__file__).read_text())[:8]
