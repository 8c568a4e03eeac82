"""Config sections shared by the stages (composed into each stage's config), and their common base.

Plain data: every field has help text and is checked in ``__post_init__``; nothing here reads
data, touches the environment or imports a training library. What the sections drive lives
with the code that uses them: :func:`kuberlhf.data.load_data` (``DataConfig``),
:func:`kuberlhf.artifacts.s3.configure_from` (``StorageConfig``),
:func:`kuberlhf.stages.trainer.trainer_kwargs` (``TrainingConfig``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from kuberlhf.config import option, require

REPORT_TARGETS = ("none", "wandb", "tensorboard", "mlflow")


@dataclass
class ModelConfig:
    name_or_path: str = option(
        "demo://tiny-llama",
        "model to start from: a hub name (e.g. facebook/opt-1.3b), a local directory, an s3:// URI of a "
        "kuberlhf artifact, or a built-in demo model (demo://tiny-llama, demo://tiny-deberta)",
    )
    revision: str | None = option(None, "hub revision (branch, tag or commit) when name_or_path is a hub name")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "weights dtype; auto = bfloat16 on a GPU that supports it, else float32"
    )
    attn_implementation: str | None = option(None, "attention kernel (sdpa, eager, flash_attention_2); None = default")
    trust_remote_code: bool = option(False, "allow model code from the hub (off: only transformers' own classes)")


@dataclass
class LoraConfig:
    r: int = option(16, "LoRA rank")
    alpha: int = option(32, "LoRA alpha (scaling = alpha / r)")
    dropout: float = option(0.05, "dropout on the LoRA path")
    target_modules: list[str] = option(["all-linear"], "modules to adapt; ['all-linear'] = every linear but the head")
    merge: bool = option(True, "merge the adapter into the base model for the stage's output model")

    def __post_init__(self) -> None:
        require(self.r > 0, "lora.r", f"must be positive, got {self.r}")
        require(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class QuantizationConfig:
    quant_type: Literal["nf4", "fp4"] = option("nf4", "4-bit data type of QLoRA")
    double_quant: bool = option(True, "quantize the quantization constants too (QLoRA double quantization)")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = option(
        "auto", "dtype of the 4-bit matmuls; auto = bfloat16 where the hardware has it, else float32"
    )


@dataclass
class DataConfig:
    train: str = option("", "training data: .jsonl/.json/.parquet file or dir, s3:// URI, HF dataset, Deep Lake, demo://")
    eval: str | None = option(None, "held-out data in the same forms; None = split eval_fraction off train")
    split: str = option("train", "split to read from sources that have splits (Hugging Face Hub and save_to_disk)")
    name: str | None = option(
        None, "subset (configuration) of a Hugging Face Hub dataset, e.g. 'default'; also for data.eval"
    )
    data_dir: str | None = option(
        None, "data_dir of a Hugging Face Hub dataset (a folder of its repo); also for data.eval"
    )
    eval_split: str = option("test", "split of the eval source")
    format: Literal["auto", "jsonl", "json", "parquet", "hf", "deeplake", "demo"] = option(
        "auto", "source format; auto = from the scheme, extension or directory contents"
    )
    streaming: bool = option(False, "stream the training source instead of loading it (needs training.max_steps)")
    on_bad_row: Literal["error", "skip"] = option(
        "error", "a malformed row stops the run naming it (error) or is skipped and counted in metrics.json (skip)"
    )
    max_rows: int | None = option(None, "read at most this many training rows")
    num_proc: int | None = option(
        None, "processes that check and format the rows of a non-streaming load (Dataset.map); None = one, this one"
    )
    eval_fraction: float = option(0.0, "fraction of train held out for evaluation when eval is None")
    prompt_template: str = option(
        "{system}Question: {question}\n\nAnswer:", "prompt of question/response rows; {system} and {question}"
    )
    system_template: str = option("{system_prompt}\n\n", "text that {system} becomes when a row has a system_prompt")

    def __post_init__(self) -> None:
        require(bool(self.train), "data.train", "a training data source is required")
        require(0.0 <= self.eval_fraction < 1.0, "data.eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        require(self.num_proc is None or self.num_proc >= 1, "data.num_proc", f"must be >= 1, got {self.num_proc}")
        for key in ("{question}",):
            require(key in self.prompt_template, "data.prompt_template", f"must contain {key}")

    @property
    def template_kwargs(self) -> dict:
        return {"prompt_template": self.prompt_template, "system_template": self.system_template}


@dataclass
class LoopConfig:
    """What every training loop is set by: steps, schedule, clipping, seed, logging and checkpoints."""

    max_steps: int = option(-1, "optimizer steps to run; -1 = from num_train_epochs")
    learning_rate: float = option(2e-5, "peak learning rate")
    lr_scheduler_type: str = option("cosine", "transformers scheduler name (linear, cosine, constant, ...)")
    warmup_steps: int = option(0, "linear warm-up steps")
    max_grad_norm: float = option(1.0, "gradient clipping norm")
    seed: int = option(42, "seed of model init (demo models), data order and sampling")
    logging_steps: int = option(10, "log every N optimizer steps")
    save_steps: int = option(500, "checkpoint every N optimizer steps into output_dir/checkpoints")
    save_total_limit: int = option(2, "checkpoints kept (older ones are deleted, locally and in object storage)")
    use_cpu: bool = option(False, "train on CPU even when a GPU is present")
    deepspeed: str | None = option(None, "DeepSpeed JSON config (e.g. configs/deepspeed/zero3.json); needs torchrun")
    deepspeed_unpickle: bool = option(
        False, "resume DeepSpeed checkpoints with full unpickling, which runs any code a checkpoint carries: only "
        "for a store nobody untrusted can write (off: tensors, plain data and DeepSpeed's own four classes)")
    report_to: list[str] = option(
        ["none"], "trackers: none, wandb (offline without WANDB_API_KEY), tensorboard, mlflow; wandb's and "
        "tensorboard's logs are published inside the artifact under logs/. mlflow logs to the server "
        "MLFLOW_TRACKING_URI names (refused without one: MLflow's default, ./mlflow.db, would be lost with the pod; "
        "curves inside the artifact are tensorboard's), into the run MLFLOW_RUN_ID names (a Kubeflow Pipelines "
        "task's) or a new run in MLFLOW_EXPERIMENT_NAME, else in an experiment named after the stage; a server "
        "that does not answer within 5 s is named in a warning and the run goes on without MLflow"
    )
    run_name: str | None = option(None, "run name shown by the trackers")
    disable_tqdm: bool = option(False, "hide progress bars")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = option(
        "auto", "mixed precision; auto = bf16 on a GPU that supports it, else fp32"
    )
    gradient_checkpointing: bool = option(False, "recompute activations in backward to save memory")

    def __post_init__(self) -> None:
        for target in self.report_to:
            require(target in REPORT_TARGETS, "training.report_to", f"unknown tracker {target!r}; use {REPORT_TARGETS}")
        require(self.max_steps != 0, "training.max_steps", "must be positive or -1")
        require(self.learning_rate > 0, "training.learning_rate", f"must be positive, got {self.learning_rate}")
        require(self.save_steps > 0, "training.save_steps", "must be positive")
        require(self.save_total_limit >= 1, "training.save_total_limit", "must be at least 1")
        if self.deepspeed:
            require(os.path.isfile(self.deepspeed), "training.deepspeed", f"file not found: {self.deepspeed}")


@dataclass
class TrainingConfig(LoopConfig):
    """The training section of the Trainer stages (TRL): the loop's settings and the Trainer's own."""

    num_train_epochs: float = option(1.0, "passes over the training data (ignored when max_steps > 0)")
    per_device_train_batch_size: int = option(8, "examples per device per micro-batch")
    per_device_eval_batch_size: int = option(16, "examples per device per evaluation batch")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    weight_decay: float = option(0.0, "AdamW weight decay")
    eval_steps: int | None = option(None, "evaluate every N steps during training; None = only at the end")
    dataloader_num_workers: int = option(0, "data loader worker processes")
    extra: dict[str, Any] = option(
        {}, "any other key of the stage's TRL config, given as training.<key> (training.optim=adafactor, "
        "training.torch_compile=true, training.bf16=true, ...): passed through, checked against TRL's fields"
    )
    # training.<key> that is not a field above lands in ``extra`` (kuberlhf.config.from_dict)
    _open_section: ClassVar[str] = "extra"

    def __post_init__(self) -> None:
        super().__post_init__()


@dataclass
class JudgeConfig:
    """Direct RLAIF (Lee et al. 2023): a judge model's verdicts under a constitution are the reward, no
    reward model is trained."""

    name_or_path: str | None = option(
        None, "direct RLAIF: a judge model (local, s3://, hub name, .gguf) scores the samples under the "
        "constitution instead of the reward model; None = the reward model")
    constitution: str = option("configs/constitutions/demo.yaml", "the judge's principles, questions, examples")
    batch_size: int = option(16, "judge texts per forward pass")
    max_length: int = option(1024, "judge tokens per text (longer ones lose their beginning)")

    def __post_init__(self) -> None:
        require(self.batch_size > 0, "judge.batch_size", "must be positive")


@dataclass
class StorageConfig:
    endpoint_url: str | None = option(None, "S3 endpoint; None = AWS_ENDPOINT_URL(_S3) or AWS")
    region: str | None = option(None, "S3 region; None = AWS_DEFAULT_REGION / AWS_REGION")
    max_attempts: int = option(8, "attempts per S3 request (exponential backoff between them)")
    retry_budget_s: float = option(
        300.0, "seconds to keep retrying a checkpoint seal, publish or download that fails on the network or with "
        "5xx/SlowDown (backoff up to 30 s); then the run exits 200, which restartPolicy ExitCode retries")
    timeout_s: float = option(60.0, "seconds to wait for the object store to connect or answer, per request")
    max_concurrency: int = option(
        8, "files moved at once by one upload or download (a checkpoint's shards, a model's files), and parts of "
        "a large file at once (16 MiB each, from 16 MiB up); hashing runs in the same threads")
    lease_ttl_s: float = option(
        1800.0, "an output_dir's lease (.lease.json, renewed at each checkpoint) left by a run that stopped renewing "
        "it this many seconds ago may be taken over by another run")

    def __post_init__(self) -> None:
        require(self.max_attempts >= 1, "storage.max_attempts", "must be at least 1")
        require(self.retry_budget_s >= 0, "storage.retry_budget_s", "must be >= 0")
        require(self.lease_ttl_s > 0, "storage.lease_ttl_s", "must be positive")
        require(self.timeout_s > 0, "storage.timeout_s", "must be positive")
        require(1 <= self.max_concurrency <= 64, "storage.max_concurrency", "must be between 1 and 64")


@dataclass
class StageConfig:
    """The fields every stage config has: where its artifact goes, whether it may replace one, the store."""

    output_dir: str = option("", "where the model, card, metrics.json and checkpoints go: a local path or s3:// URI")
    overwrite: bool = option(False, "replace a finished artifact in output_dir instead of refusing")
    resume: Literal["auto", "force"] = option(
        "auto", "auto: resume from the newest checkpoint made with the same settings (training.max_steps and "
        "evaluation keys may change) and refuse one made with others; force: resume from it anyway")
    storage: StorageConfig = option(StorageConfig, "S3-compatible object store")

    def __post_init__(self) -> None:
        require(bool(self.output_dir), "output_dir", "required (a local path or s3://bucket/prefix)")
        for key, value in named_locations(self):
            problem = uri_problem(value)
            require(problem is None, key, problem or "")


# a scheme followed by anything but "://": s3:/bucket, s3:bucket, s3//bucket
_MISTYPED_SCHEME = re.compile(r"^(s3|minio|gs|hf|demo|file)(:/?(?!/)|//)", re.IGNORECASE)


def uri_problem(value: str) -> str | None:
    """Why ``value`` is a broken URI (a mistyped scheme, an empty bucket), or None.

    Caught here, such a value never becomes a local folder named ``s3:``.
    """
    if not value:
        return None
    if found := _MISTYPED_SCHEME.match(value):
        scheme, rest = found.group(1).lower(), value[found.end():]
        return f"{value!r} is not a valid URI; did you mean {scheme + '://' + rest!r}?"
    if value.lower().startswith("s3://") and not value[5:].split("/", 1)[0]:
        return f"{value!r} has an empty bucket name (expected s3://bucket/prefix)"
    return None


def named_locations(cfg: Any) -> list[tuple[str, str]]:
    """(config key, value) of every location a stage config names: its output, models and data."""
    found = [("output_dir", cfg.output_dir)]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, ModelConfig):
            found.append((f"{f.name}.name_or_path", value.name_or_path))
        elif isinstance(value, DataConfig):
            found += [(f"{f.name}.train", value.train), (f"{f.name}.eval", value.eval or "")]
        elif isinstance(value, str) and f.name != "output_dir" and f.name.endswith(("_model", "_prompts")):
            found.append((f.name, value))
    return found


def check_trainer_stage(cfg: StageConfig) -> None:
    """Checks every Trainer-based stage config shares (its ``output_dir``, ``data`` and ``training``)."""
    StageConfig.__post_init__(cfg)
    if cfg.data.streaming:
        require(cfg.training.max_steps > 0, "training.max_steps", "must be set (> 0) with data.streaming=true")
    check_trl_keys(cfg)


def check_trl_keys(cfg: Any) -> None:
    """The ``training.<key>`` pass-throughs of a Trainer stage must be fields of its TRL config class
    (``TRL_ARGS``) that the stage does not set itself (``TRL_OWNED``: from its own config keys).

    TRL is imported only when there are such keys; where it is absent (the launcher image) they are
    checked by the training pods instead.
    """
    extra = cfg.training.extra
    if not extra:
        return
    owned = {"output_dir", *type(cfg).TRL_OWNED}
    for key in extra:
        require(key not in owned, f"training.{key}", "set by the stage from its own config; use that key instead")
    try:
        import trl
    except ImportError:
        return
    accepted = {f.name for f in dataclasses.fields(getattr(trl, type(cfg).TRL_ARGS)) if f.init}
    declared = {f.name for f in dataclasses.fields(cfg.training)}
    for key in extra:
        if key not in accepted:
            from kuberlhf.config import unknown_key

            raise unknown_key(f"training.{key}", key, accepted | declared - {"extra"}, "training.")
