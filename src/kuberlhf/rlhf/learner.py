"""The trainable half of PPO: policy + value model, their optimizer(s), schedule and checkpoints.

Two interchangeable learners behind one interface:

* :class:`SeparateLearner` (one process, or DDP under torchrun): two models, two AdamW
  optimizers and schedulers, each model's gradients clipped on their own.
* :class:`ZeroLearner` (DeepSpeed ZeRO-2/3 through accelerate, ``training.deepspeed``):
  DeepSpeed trains one model per engine, so policy and value model are joined in an
  :class:`ActorCritic` with one AdamW of two parameter groups (the two learning rates,
  one schedule); DeepSpeed clips the gradient norm of both together. Checkpoints go
  through DeepSpeed's own (sharded) checkpoint API; under ZeRO-3 the sharded policy is
  gathered into a whole copy for the final artifact and for evaluation.

Both accumulate gradients over the micro-batches of a mini-batch (``ppo.gradient_accumulation_steps``):
:meth:`backward` of each micro-batch's (already weighted) loss, ``sync`` on the last one only (DDP's
all-reduce, DeepSpeed's accumulation boundary), then one :meth:`step`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kuberlhf.config import require
from kuberlhf.errors import ConfigError
from kuberlhf.models import generation as rl


def _trackers(training: Any) -> dict:
    """accelerate's tracker arguments from ``training.report_to``: TensorBoard into the run's logs folder."""
    import os

    targets = [t for t in training.report_to if t != "none"]
    if not targets:
        return {}
    return {"log_with": targets, "project_dir": os.environ.get("TENSORBOARD_LOGGING_DIR") or None}


def make_accelerator(training: Any, micro_batch: int, accumulation: int = 1) -> Any:
    """The run's Accelerator: DeepSpeed when ``training.deepspeed`` names a config, else DDP/one process.

    On CPU, accelerate only takes the DeepSpeed path with ``cpu=False``; the gloo backend
    is then asked for explicitly (else it finds no device backend and every process thinks
    it is alone).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from kuberlhf.distributed import resolve_precision

    precision = resolve_precision(training.precision, training.use_cpu)
    if precision == "fp16" and not training.deepspeed:
        # one loss scaler cannot serve the policy's and the value model's optimizers apart
        raise ConfigError("config key 'training.precision': fp16 needs training.deepspeed (its loss scaling) in PPO; "
                          "use bf16")
    # accelerate keeps one state per process; a run's own settings (precision, DeepSpeed) replace an earlier
    # run's in the same process, the process group staying (as transformers' TrainingArguments does)
    AcceleratorState._reset_state()
    if not training.deepspeed:
        return Accelerator(cpu=training.use_cpu or not torch.cuda.is_available(),
                           mixed_precision={"fp32": "no"}.get(precision, precision), **_trackers(training))
    import os

    from accelerate import DeepSpeedPlugin
    from accelerate.utils import InitProcessGroupKwargs

    if "LOCAL_RANK" not in os.environ:
        raise ConfigError("config key 'training.deepspeed': needs a distributed launcher, e.g. "
                          "torchrun --nproc_per_node N -m kuberlhf.cli ppo ...")
    if training.use_cpu and torch.cuda.is_available():
        raise ConfigError("config key 'training.use_cpu': DeepSpeed runs on the GPUs present; unset training.deepspeed")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ds_config = deepspeed_config(training.deepspeed, micro_batch, world, training.max_grad_norm, precision,
                                 accumulation)
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    plugin = DeepSpeedPlugin(hf_ds_config=ds_config, zero3_init_flag=False)
    handlers = [] if torch.cuda.is_available() else [InitProcessGroupKwargs(backend="gloo")]
    acc = Accelerator(cpu=False, deepspeed_plugin=plugin, kwargs_handlers=handlers, **_trackers(training))
    # The plugin registered its config with transformers, which would then shard every model
    # loaded from here on under ZeRO-3; the frozen reference and reward model must load whole.
    # ZeRO-3 shards the policy and value model when the engine is built.
    unset_hf_deepspeed_config()
    return acc


def deepspeed_config(path: str, micro_batch: int, world: int, max_grad_norm: float,
                     precision: str = "fp32", accumulation: int = 1) -> dict:
    """The DeepSpeed JSON at ``path`` with its "auto" values filled from the PPO config.

    One optimizer step per PPO mini-batch of ``accumulation`` micro-batches (``ppo.gradient_accumulation_steps``):
    micro-batch = rollout.batch_size / ppo.num_mini_batches / accumulation rows per process. The loop
    weights each micro-batch's loss itself (DeepSpeed's own 1/accumulation is not applied: see
    :meth:`ZeroLearner.backward`). Mixed precision left "auto" follows ``training.precision``
    (made concrete: bf16, fp16 or fp32). Under ZeRO-3 the 16-bit weights are gathered on save (the artifact).
    """
    key = "training.deepspeed"
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"config key '{key}': cannot read {path}: {err}") from None
    require(isinstance(cfg, dict), key, f"{path} must hold a JSON object")
    for section in ("optimizer", "scheduler"):
        require(section not in cfg, key, f"{path} sets '{section}'; PPO builds its own AdamW and schedule")
    fills = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": accumulation,
             "train_batch_size": micro_batch * accumulation * world, "gradient_clipping": max_grad_norm}
    for name, value in fills.items():
        given = cfg.get(name, "auto")
        if name == "gradient_clipping" and given != "auto":
            continue
        require(given in ("auto", value), key,
                f"{name} in {path} is {given!r}; PPO needs 'auto' or {value} (rollout.batch_size / "
                "ppo.num_mini_batches / ppo.gradient_accumulation_steps rows per process and micro-batch, "
                "ppo.gradient_accumulation_steps micro-batches per optimizer step)")
        cfg[name] = value
    for kind in ("bf16", "fp16"):
        if cfg.get(kind, {}).get("enabled") == "auto":
            cfg[kind]["enabled"] = precision == kind
    zero = cfg.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return cfg


class ActorCritic(nn.Module):
    """Policy and value model as one module (one DeepSpeed engine); ``config`` is the policy's."""

    def __init__(self, policy: nn.Module, value: nn.Module):
        super().__init__()
        self.policy, self.value = policy, value
        self.config = policy.config  # DeepSpeed's "auto" bucket sizes are read from the hidden size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                logits_to_keep: int = 0):
        """(the policy's logits, of the last ``logits_to_keep`` positions where given, the values)."""
        kwargs = rl.logits_to_keep_kwargs(self.policy, logits_to_keep)
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             **kwargs).logits
        return logits, self.value(input_ids, attention_mask)


def disable_dropout(model: nn.Module) -> nn.Module:
    """Zero every dropout of ``model``: its ``nn.Dropout`` modules (LoRA's included) and the float rates that
    modules apply functionally (OPT's ``self.dropout``, attention's ``attention_dropout``). PPO then computes
    the same function in train mode as in eval mode, which gradient checkpointing (train mode only) needs."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
    return model


def enable_checkpointing(model: nn.Module) -> None:
    """Activation (gradient) checkpointing on a Hugging Face model: the policy, a LoRA-wrapped one (PEFT
    forwards the call to its base model) or a value model's backbone."""
    target = model.backbone if hasattr(model, "backbone") else model
    enable = getattr(target, "activation_checkpointing_enable", None)  # transformers >= 5.2x; the old name warns
    try:
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    except ValueError as err:  # "X does not support activation checkpointing"
        raise ConfigError(f"config key 'training.gradient_checkpointing': {err}") from None


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class SeparateLearner:
    """Policy and value model trained side by side (one process or DDP)."""

    def __init__(self, acc: Any, policy: nn.Module, value: nn.Module, training: Any, temperature: float = 1.0):
        from transformers import get_scheduler

        t = training
        self.acc, self.max_grad_norm, self.temperature = acc, t.max_grad_norm, temperature
        opt_p = torch.optim.AdamW(_trainable(policy), lr=t.learning_rate)
        opt_v = torch.optim.AdamW(value.parameters(), lr=t.value_learning_rate or t.learning_rate)
        self.sched_p = get_scheduler(t.lr_scheduler_type, opt_p, t.warmup_steps, t.max_steps)
        self.sched_v = get_scheduler(t.lr_scheduler_type, opt_v, t.warmup_steps, t.max_steps)
        self.policy_model, self.value_model, self.opt_p, self.opt_v = acc.prepare(policy, value, opt_p, opt_v)

    @property
    def policy(self) -> Any:
        return self.acc.unwrap_model(self.policy_model)

    @property
    def value(self) -> Any:
        return self.acc.unwrap_model(self.value_model)

    def update_mode(self, checkpointing: bool) -> None:
        """Eval mode for the updates too, so old and new log-probs come from one network; train mode only for
        gradient checkpointing (which runs only there), where :func:`disable_dropout` keeps the network the same."""
        self.policy_model.train(checkpointing)
        self.value_model.train(checkpointing)

    def forward(self, ids: torch.Tensor, attn: torch.Tensor, start: int):
        """(log-probs at the sampling temperature, entropies, values) of the response tokens, with gradients."""
        logprobs, entropy = rl.sequence_logprobs(self.policy_model, ids, attn, start, self.temperature)
        return logprobs, entropy, self.value_model(ids, attn)[:, start - 1 : -1].float()

    @contextlib.contextmanager
    def generating(self, gather: bool) -> Iterator[bool]:
        """The policy is whole on every process: generation needs nothing (yields ``synced_gpus`` False)."""
        yield False

    def backward(self, loss: torch.Tensor, sync: bool) -> None:
        """Add ``loss``'s gradients to the accumulated ones; DDP all-reduces them only when ``sync`` (the
        mini-batch's last micro-batch: its all-reduce carries the earlier ones' gradients too)."""
        with contextlib.ExitStack() as stack:
            if not sync:
                stack.enter_context(self.acc.no_sync(self.policy_model))
                stack.enter_context(self.acc.no_sync(self.value_model))
            self.acc.backward(loss)

    def step(self) -> None:
        """Clip each model's accumulated gradients, one AdamW step each, zero the gradients."""
        self.acc.clip_grad_norm_(self.policy_model.parameters(), self.max_grad_norm)
        self.acc.clip_grad_norm_(self.value_model.parameters(), self.max_grad_norm)
        for opt in (self.opt_p, self.opt_v):
            opt.step()
            opt.zero_grad()

    def end_step(self) -> None:
        self.sched_p.step()
        self.sched_v.step()

    def learning_rate(self) -> float:
        return float(self.opt_p.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {"opt_p": self.opt_p.state_dict(), "opt_v": self.opt_v.state_dict(),
                "sched_p": self.sched_p.state_dict(), "sched_v": self.sched_v.state_dict()}

    def save(self, directory: Path, is_main: bool) -> None:
        """The weights: ``policy/`` (a model or adapter) and ``value.safetensors``."""
        from safetensors.torch import save_file

        if is_main:
            self.policy.save_pretrained(directory / "policy")
            state = {k: v.contiguous() for k, v in self.value.state_dict().items()}
            save_file(state, str(directory / "value.safetensors"))

    def load(self, directory: Path, state: dict) -> None:
        """Optimizers and schedulers (the weights were loaded before the models were prepared)."""
        self.opt_p.load_state_dict(state["opt_p"])
        self.opt_v.load_state_dict(state["opt_v"])
        self.sched_p.load_state_dict(state["sched_p"])
        self.sched_v.load_state_dict(state["sched_v"])

    def final_policy(self) -> Any:
        return self.policy


class ZeroLearner:
    """Policy + value model in one DeepSpeed engine (ZeRO-2/3 through accelerate)."""

    def __init__(self, acc: Any, policy: nn.Module, value: nn.Module, training: Any,
                 build_policy: Callable[[], nn.Module], temperature: float = 1.0):
        from transformers import get_scheduler

        t = training
        self.acc, self.build_policy, self.temperature = acc, build_policy, temperature
        groups = [{"params": _trainable(policy), "lr": t.learning_rate},
                  {"params": list(value.parameters()), "lr": t.value_learning_rate or t.learning_rate}]
        self.engine, _ = acc.prepare(ActorCritic(policy, value), torch.optim.AdamW(groups, lr=t.learning_rate))
        base = self.engine.optimizer  # ZeRO wraps the AdamW; the schedule drives its parameter groups
        while not isinstance(base, torch.optim.Optimizer):
            base = base.optimizer
        self.sched = get_scheduler(t.lr_scheduler_type, base, t.warmup_steps, t.max_steps)
        self.stage = int(acc.state.deepspeed_plugin.zero_stage)

    @property
    def policy(self) -> Any:
        return self.engine.module.policy

    @property
    def value(self) -> Any:
        return self.engine.module.value

    def update_mode(self, checkpointing: bool) -> None:
        """See :meth:`SeparateLearner.update_mode`."""
        self.engine.train(checkpointing)

    def forward(self, ids: torch.Tensor, attn: torch.Tensor, start: int):
        logits, values = self.engine(input_ids=ids, attention_mask=attn, position_ids=rl.position_ids(attn),
                                     logits_to_keep=ids.shape[1] - start + 1)
        logprobs, entropy = rl.response_logprobs(logits, ids, start, self.temperature)
        return logprobs, entropy, values[:, start - 1 : -1].float()

    @contextlib.contextmanager
    def generating(self, gather: bool) -> Iterator[bool]:
        """The policy's weights for one rollout's generation; yields ``synced_gpus``.

        Under ZeRO-3 each forward gathers the sharded weights of each layer from all processes, so
        every process must keep running forwards until all are done (``synced_gpus``), one gather per
        layer and token. With ``gather`` the policy's weights are gathered whole once
        (``deepspeed.zero.GatheredParameters``) and ZeRO-3's fetch/release hooks are set aside
        meanwhile (as TRL's ``unwrap_model_for_generation`` does), so the tokens run on local weights
        and each process stops on its own; on exit the hooks are registered again and the weights
        re-partitioned. The whole policy is then in memory on every process during generation.
        """
        if self.stage < 3:
            yield False
            return
        if not gather:
            yield True
            return
        import deepspeed

        offload = self.engine.optimizer.parameter_offload
        with deepspeed.zero.GatheredParameters(list(self.policy.parameters())):
            params = [p for _, p in offload.module.named_parameters(recurse=True)]
            params += [p for _, p in offload.module.ds_external_parameters()]
            for param in params:
                param.ds_active_sub_modules.clear()
            for hook in [*offload.forward_hooks, *offload.backward_hooks]:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
            try:
                yield False
            finally:
                offload._register_deepspeed_module(offload.module)  # also invalidates the prefetch trace

    def backward(self, loss: torch.Tensor, sync: bool) -> None:
        """Add ``loss``'s gradients to the engine's accumulated ones; ``sync`` marks the mini-batch's last
        micro-batch (DeepSpeed's accumulation boundary). The loss is already weighted by the loop, so
        DeepSpeed's own 1/gradient_accumulation_steps scaling is off (``scale_wrt_gas=False``)."""
        self.engine.set_gradient_accumulation_boundary(sync)
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> None:
        """engine.step at the boundary: clip the accumulated gradients, AdamW step, zero the gradients."""
        self.engine.step()

    def end_step(self) -> None:
        self.sched.step()

    def learning_rate(self) -> float:
        """The policy's learning rate as the engine's optimizer sees it."""
        return float(self.engine.get_lr()[0])

    def state_dict(self) -> dict:
        return {"sched": self.sched.state_dict()}

    def _policy_state(self) -> dict | None:
        """The whole policy's state dict on the main process (gathered from all under ZeRO-3); collective."""
        state = self.acc.get_state_dict(self.engine)
        if not self.acc.is_main_process:
            return None
        return {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}

    def save(self, directory: Path, is_main: bool) -> None:
        """DeepSpeed's sharded checkpoint (weights + optimizer, every process) in ``zero/``, and
        the whole policy (a model or adapter) in ``policy/``. Collective."""
        self.engine.save_checkpoint(str(directory / "zero"), tag="state")
        policy_state = self._policy_state() if self.stage == 3 else None
        if is_main:
            self.policy.save_pretrained(directory / "policy", state_dict=policy_state)

    def load(self, directory: Path, state: dict) -> None:
        path, _ = self.engine.load_checkpoint(str(directory / "zero"), tag="state", load_lr_scheduler_states=False)
        if path is None:
            raise ConfigError(f"config key 'training.deepspeed': {directory} holds no DeepSpeed checkpoint; "
                              "it was written by a run without DeepSpeed")
        self.sched.load_state_dict(state["sched"])

    def final_policy(self) -> Any:
        """The trained policy, whole, on the main process (None elsewhere under ZeRO-3); collective."""
        if self.stage < 3:
            return self.policy
        state = self._policy_state()
        if state is None:
            return None
        policy = self.build_policy()
        policy.load_state_dict(state)
        return policy
