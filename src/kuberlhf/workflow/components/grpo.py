"""The ``grpo`` stage as a KFP component: GRPO of the SFT policy against the reward model (TRL)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from kuberlhf.workflow.components.passthrough import TASK_CONFIG_PASSTHROUGHS


def grpo_op(image: str):
    """The ``grpo`` component running in ``image``."""

    @dsl.component(base_image=image, task_config_passthroughs=TASK_CONFIG_PASSTHROUGHS)
    def grpo(
        policy: Input[Model],
        reward_model: Input[Model],
        train_data: Input[Dataset],
        model: Output[Model],
        metrics: Output[Metrics],
        job_manifest: Output[Artifact],
        logs: Output[Artifact],
        config: str = "configs/grpo/demo.yaml",
        overrides: list = [],  # noqa: B006 (a KFP default value, never mutated)
        mode: str = "local",
        procs: int = 1,
        run_id: str = "",
        task: str = "grpo",
        task_config: dsl.TaskConfig = None,
    ):
        """GRPO with a KL penalty to the SFT policy (config file plus key=value overrides)."""
        from kuberlhf.workflow.steps import run_stage_step

        run_stage_step("grpo", {"policy": policy, "reward_model": reward_model}, model, metrics, job_manifest, logs,
                       train_data=train_data, config=config, overrides=overrides, mode=mode, procs=procs,
                       run_id=run_id, task=task, task_config=task_config)

    return grpo
