"""The ``rlaif`` stage as a KFP component: a judge model labels the candidates' pairs under a constitution."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from kuberlhf.workflow.components.passthrough import TASK_CONFIG_PASSTHROUGHS


def rlaif_op(image: str):
    """The ``rlaif`` component running in ``image``."""

    @dsl.component(base_image=image, task_config_passthroughs=TASK_CONFIG_PASSTHROUGHS)
    def rlaif(
        judge: Input[Model],
        train_data: Input[Dataset],
        pairs: Output[Dataset],
        metrics: Output[Metrics],
        job_manifest: Output[Artifact],
        logs: Output[Artifact],
        config: str = "configs/rlaif/demo.yaml",
        overrides: list = [],  # noqa: B006 (a KFP default value, never mutated)
        mode: str = "local",
        procs: int = 1,
        run_id: str = "",
        task: str = "rlaif",
        judge_model: str = "",
        constitution: str = "",
        task_config: dsl.TaskConfig = None,
    ):
        """AI preference labels of the candidates (config file plus key=value overrides); the judge is the
        ``judge`` model, or ``judge_model`` when set (a hub name, s3:// URI, path in the image or .gguf file);
        ``constitution``: a file in the image or the ConfigMap, in place of the config's."""
        from kuberlhf.workflow.configs import resolve_config
        from kuberlhf.workflow.steps import run_stage_step

        inputs, named = ({}, [f"judge.name_or_path={judge_model}"]) if judge_model else ({"judge": judge}, [])
        named += [f"constitution={resolve_config(constitution)}"] if constitution else []
        run_stage_step("rlaif", inputs, pairs, metrics, job_manifest, logs, train_data=train_data,
                       config=config, overrides=[*overrides, *named], mode=mode, procs=procs, run_id=run_id,
                       task=task, task_config=task_config)

    return rlaif
