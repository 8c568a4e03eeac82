"""The one table of stages: every layer that needs to know the stages reads it.

A :class:`Stage` names everything that belongs to one stage: its CLI verb (``kuberlhf sft``),
config class and run function (in ``kuberlhf.stages.<module>``), the kind of training data its
pipeline data step validates, the image it runs in, the component's input models and the config
keys that receive them, whether it is a Trainer stage or runs under DeepSpeed, and the report's
plots of its ``train_log.jsonl``. The CLI, the PyTorchJob builder and launcher, the pipeline steps
and data steps, :mod:`kuberlhf.images` and the report all read :data:`STAGES`.

This module imports nothing of the project but its errors: stage modules load on first use, so
reading the table costs nothing (the CLI builds its help from it without importing TRL or torch).

Adding a stage: write ``kuberlhf/stages/<name>.py`` (a config dataclass and ``run(cfg) -> dict``),
add its :class:`Stage` below, then its ``configs/<name>/demo.yaml`` and its component
(``kuberlhf/workflow/components/<name>.py``); ``tests/unit/test_registry.py`` checks that none is missing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from kuberlhf.errors import ConfigError

# A plot of the report: a title and panels; a panel is a y label and the logged series drawn on it:
# (key in train_log.jsonl, legend label).
Panel = tuple[str, list[tuple[str, str]]]


@dataclass(frozen=True)
class Stage:
    """Everything the other layers need to know about one stage."""

    name: str  # CLI verb, config folder, component and job task name
    module: str  # kuberlhf.stages.<module>: the config class and run(cfg) -> metrics
    config_class: str
    image: str  # folder under images/ (kuberlhf.images names the reference)
    data_kind: str | None  # kind of examples of its training data (kuberlhf.data.KINDS)
    inputs: dict[str, str] = field(default_factory=dict)  # component input model -> config key it sets
    progress_bars: bool = True  # its training loop shows progress bars (quieted in a pipeline step's log)
    deepspeed: bool = True  # runs under DeepSpeed ZeRO (training.deepspeed)
    report: tuple[str, list[Panel]] | None = None  # plot of its train_log.jsonl in the pipeline report
    components: tuple[str, ...] = ()  # factories of further components (one per step of its own loop)
    help: str = ""  # the CLI's one-line help; "" = the first line of its module's docstring

    @property
    def component(self) -> str:
        """``module:factory`` of its Kubeflow Pipelines component (kfp is imported only there)."""
        return f"kuberlhf.workflow.components.{self.name}:{self.name}_op"

    @property
    def all_components(self) -> list[str]:
        """``module:factory`` of each of its components: the stage's own, then ``components``."""
        module = self.component.split(":")[0]
        return [self.component, *(f"{module}:{factory}" for factory in self.components)]

    def load_module(self) -> Any:
        return importlib.import_module(self.module)

    @property
    def config_cls(self) -> type:
        return getattr(self.load_module(), self.config_class)

    def run(self, cfg: Any) -> dict:
        return self.load_module().run(cfg)

    @property
    def summary(self) -> str:
        """The CLI's one-line help: ``help``, else the first line of its module's docstring."""
        return self.help or (self.load_module().__doc__ or "").strip().splitlines()[0]


_POLICY = {"policy": "policy.name_or_path", "reward_model": "reward_model.name_or_path"}

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("sft", "kuberlhf.stages.sft", "SftConfig", image="sft", data_kind="sft",
          report=("SFT: loss", [("loss", [("loss", "training"), ("eval_loss", "held-out")])])),
    Stage("reward", "kuberlhf.stages.reward", "RewardConfig", image="reward", data_kind="preference",
          report=("Reward model: pairwise accuracy", [("pairwise accuracy", [("accuracy", "training batches")])])),
    Stage("ppo", "kuberlhf.stages.ppo", "PpoConfig", image="ppo", data_kind="prompt", inputs=_POLICY,
          report=("PPO: reward and KL to the SFT policy",
                  [("reward-model score", [("reward", "rollouts")]), ("KL per sequence", [("kl", "rollouts")]),
                   ("judge score (held-out)", [("eval_score", "eval.every_steps")])])),
    Stage("generate", "kuberlhf.stages.generate", "GenerateConfig", image="ppo", data_kind="prompt",
          inputs={"policy": "policy.name_or_path"}, progress_bars=False, deepspeed=False),
    Stage("rlaif", "kuberlhf.stages.rlaif", "RlaifConfig", image="ppo", data_kind="candidates",
          inputs={"judge": "judge.name_or_path"}, progress_bars=False, deepspeed=False),
    Stage("rest", "kuberlhf.stages.rest", "RestConfig", image="sft", data_kind="prompt",
          inputs={**_POLICY, "samples": "samples", "reference": "reference"},
          components=("rest_grow_op", "rest_improve_op"),
          report=("ReST: reward and gold score per Improve step",
                  [("mean reward", [("reward_kept", "kept samples"), ("reward_all", "all samples")]),
                   ("gold score", [("gold_kept", "kept samples"), ("gold_all", "all samples"),
                                   ("eval_score", "policy (held-out)")]),
                   ("KL to the SFT policy", [("kl", "held-out")])])),
    Stage("dpo", "kuberlhf.stages.dpo", "DpoConfig", image="dpo", data_kind="preference",
          inputs={"policy": "model.name_or_path"},
          report=("DPO: loss and preference accuracy",
                  [("DPO loss", [("loss", "training")]),
                   ("implicit-reward accuracy", [("rewards/accuracies", "training")])])),
    Stage("rloo", "kuberlhf.stages.online", "RlooConfig", image="dpo", data_kind="prompt", inputs=_POLICY,
          help="RLOO (TRL) of the SFT policy against the trained reward model.",
          report=("RLOO: loss and reward", [("loss", [("loss", "training")]), ("reward", [("reward", "training")])])),
    Stage("grpo", "kuberlhf.stages.online", "GrpoConfig", image="dpo", data_kind="prompt", inputs=_POLICY,
          help="GRPO (TRL) of the SFT policy against the trained reward model.",
          report=("GRPO: loss and reward", [("loss", [("loss", "training")]), ("reward", [("reward", "training")])])),
)}
# stages whose output is a policy trained further from the SFT one (the pipeline report compares the two)
POLICY_STAGES = tuple(name for name, s in STAGES.items() if "policy" in s.inputs and s.report)


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; one of {', '.join(STAGES)}")
    return STAGES[name]


def stage_argv(stage: str, config: str | None, overrides: list[str]) -> list[str]:
    """The arguments of ``kuberlhf STAGE`` (after the program): what a pipeline step or a pod runs."""
    return [stage, *(["--config", config] if config else []), *overrides]


def load_stage_config(stage: str, config: str | None, overrides: list[str]) -> Any:
    """The checked config of ``stage``: its class's defaults < the YAML file < ``key=value`` overrides."""
    from kuberlhf.config import load_config

    return load_config(get_stage(stage).config_cls, config, overrides)


def run_stage(stage: str, config: str | None, overrides: list[str]) -> dict:
    """Load the stage's config and run it; returns its metrics (those of the finished artifact already
    in ``output_dir`` when it was made with this very config: a rerun has nothing to do)."""
    from kuberlhf.artifacts import lease
    from kuberlhf.errors import AlreadyFinished, KuberlhfError

    try:
        return get_stage(stage).run(load_stage_config(stage, config, overrides))
    except AlreadyFinished as done:
        import logging

        logging.getLogger(__name__).info("%s", done)
        return done.metrics
    except KuberlhfError:  # stopped on an error: give the output back (a kill leaves it to the TTL)
        for output_dir in lease.held():
            lease.drop(output_dir)
        raise


def run_and_report(stage: str, config: str | None, overrides: list[str]) -> int:
    """:func:`run_stage` as ``kuberlhf STAGE`` and a pipeline step run it: its exit status, with its error
    on one line (stderr), or its result line (stdout, from the main process). A lost peer of a distributed
    run (gloo/NCCL: its pod deleted, its node gone) exits 200, retryable; any other exception is a bug and
    propagates with its traceback."""
    import sys

    from kuberlhf.distributed import is_world_main, lost_peer
    from kuberlhf.errors import EXIT_TRANSIENT, KuberlhfError

    try:
        metrics = run_stage(stage, config, overrides)
    except KuberlhfError as err:
        print(f"kuberlhf {stage}: error: {err}", file=sys.stderr)
        return err.exit_code
    except Exception as err:
        if not lost_peer(err):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"kuberlhf {stage}: error: another process of the run was lost ({first}); exiting "
              f"{EXIT_TRANSIENT}, retryable: the job restarts its pods and the run resumes from its last checkpoint",
              file=sys.stderr)
        return EXIT_TRANSIENT
    if is_world_main():
        print(done_line(stage, metrics))
    return 0


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging() -> None:
    """The log format of a stage's process, run from the CLI or inside a pipeline step."""
    import logging

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def done_line(stage: str, metrics: dict) -> str:
    """What a finished stage prints: ``kuberlhf STAGE: done: key=value, ...`` (its float metrics)."""
    summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
    return f"kuberlhf {stage}: done: {summary}"
