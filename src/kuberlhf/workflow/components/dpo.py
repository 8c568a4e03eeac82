"""The ``dpo`` stage as a KFP component: direct preference optimisation of the SFT policy."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from kuberlhf.workflow.components.passthrough import TASK_CONFIG_PASSTHROUGHS


def dpo_op(image: str):
    """The ``dpo`` component running in ``image``."""

    @dsl.component(base_image=image, task_config_passthroughs=TASK_CONFIG_PASSTHROUGHS)
    def dpo(
        policy: Input[Model],
        train_data: Input[Dataset],
        model: Output[Model],
        metrics: Output[Metrics],
        job_manifest: Output[Artifact],
        logs: Output[Artifact],
        config: str = "configs/dpo/demo.yaml",
        overrides: list = [],  # noqa: B006 (a KFP default value, never mutated)
        mode: str = "local",
        procs: int = 1,
        run_id: str = "",
        task: str = "dpo",
        task_config: dsl.TaskConfig = None,
    ):
        """DPO of the SFT policy on preference pairs (config file plus key=value overrides)."""
        from kuberlhf.workflow.steps import run_stage_step

        run_stage_step("dpo", {"policy": policy}, model, metrics, job_manifest, logs, train_data=train_data,
                       config=config, overrides=overrides, mode=mode, procs=procs, run_id=run_id, task=task,
                       task_config=task_config)

    return dpo
