"""The ``rloo`` stage as a KFP component: RLOO of the SFT policy against the reward model (TRL)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from kuberlhf.workflow.components.passthrough import TASK_CONFIG_PASSTHROUGHS


def rloo_op(image: str):
    """The ``rloo`` component running in ``image``."""

    @dsl.component(base_image=image, task_config_passthroughs=TASK_CONFIG_PASSTHROUGHS)
    def rloo(
        policy: Input[Model],
        reward_model: Input[Model],
        train_data: Input[Dataset],
        model: Output[Model],
        metrics: Output[Metrics],
        job_manifest: Output[Artifact],
        logs: Output[Artifact],
        config: str = "configs/rloo/demo.yaml",
        overrides: list = [],  # noqa: B006 (a KFP default value, never mutated)
        mode: str = "local",
        procs: int = 1,
        run_id: str = "",
        task: str = "rloo",
        task_config: dsl.TaskConfig = None,
    ):
        """RLOO with a KL penalty to the SFT policy (config file plus key=value overrides)."""
        from kuberlhf.workflow.steps import run_stage_step

        run_stage_step("rloo", {"policy": policy, "reward_model": reward_model}, model, metrics, job_manifest, logs,
                       train_data=train_data, config=config, overrides=overrides, mode=mode, procs=procs,
                       run_id=run_id, task=task, task_config=task_config)

    return rloo
