"""The ``generate`` stage as a KFP component: K candidate responses per prompt, for people to rank."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from kuberlhf.workflow.components.passthrough import TASK_CONFIG_PASSTHROUGHS


def generate_op(image: str):
    """The ``generate`` component running in ``image``."""

    @dsl.component(base_image=image, task_config_passthroughs=TASK_CONFIG_PASSTHROUGHS)
    def generate(
        policy: Input[Model],
        train_data: Input[Dataset],
        candidates: Output[Dataset],
        metrics: Output[Metrics],
        job_manifest: Output[Artifact],
        logs: Output[Artifact],
        config: str = "configs/generate/demo.yaml",
        overrides: list = [],  # noqa: B006 (a KFP default value, never mutated)
        mode: str = "local",
        procs: int = 1,
        run_id: str = "",
        task: str = "generate",
        task_config: dsl.TaskConfig = None,
    ):
        """K candidates per prompt from the policy (config file plus key=value overrides)."""
        from kuberlhf.workflow.steps import run_stage_step

        run_stage_step("generate", {"policy": policy}, candidates, metrics, job_manifest, logs,
                       train_data=train_data, config=config, overrides=overrides, mode=mode, procs=procs,
                       run_id=run_id, task=task, task_config=task_config)

    return generate
