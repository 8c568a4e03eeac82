"""The ``rest`` stage as KFP components: the whole ReST loop in one step, or one Grow or Improve step each
(the ``rest`` pipeline unrolls its iterations into these)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from kuberlhf.workflow.components.passthrough import TASK_CONFIG_PASSTHROUGHS


def rest_op(image: str):
    """The whole ReST loop (``kuberlhf rest``) as one component running in ``image``."""

    @dsl.component(base_image=image, task_config_passthroughs=TASK_CONFIG_PASSTHROUGHS)
    def rest(
        policy: Input[Model],
        reward_model: Input[Model],
        train_data: Input[Dataset],
        model: Output[Model],
        metrics: Output[Metrics],
        job_manifest: Output[Artifact],
        logs: Output[Artifact],
        config: str = "configs/rest/demo.yaml",
        overrides: list = [],  # noqa: B006 (a KFP default value, never mutated)
        mode: str = "local",
        procs: int = 1,
        run_id: str = "",
        task: str = "rest",
        task_config: dsl.TaskConfig = None,
    ):
        """ReST: Grow and Improve iterations of the SFT policy against the reward model (config plus overrides)."""
        from kuberlhf.workflow.steps import run_stage_step

        run_stage_step("rest", {"policy": policy, "reward_model": reward_model}, model, metrics, job_manifest, logs,
                       train_data=train_data, config=config, overrides=overrides, mode=mode, procs=procs,
                       run_id=run_id, task=task, task_config=task_config)

    return rest


def rest_grow_op(image: str):
    """One ReST Grow step (``kuberlhf rest phase=grow``) running in ``image``."""

    @dsl.component(base_image=image, task_config_passthroughs=TASK_CONFIG_PASSTHROUGHS)
    def rest_grow(
        policy: Input[Model],
        reference: Input[Model],
        reward_model: Input[Model],
        train_data: Input[Dataset],
        samples: Output[Dataset],
        metrics: Output[Metrics],
        job_manifest: Output[Artifact],
        logs: Output[Artifact],
        iteration: int = 1,
        config: str = "configs/rest/demo.yaml",
        overrides: list = [],  # noqa: B006 (a KFP default value, never mutated)
        mode: str = "local",
        procs: int = 1,
        run_id: str = "",
        task: str = "rest-grow",
        task_config: dsl.TaskConfig = None,
    ):
        """ReST Grow: K samples per prompt from the current policy, each scored by the reward model."""
        from kuberlhf.workflow.steps import run_stage_step

        run_stage_step("rest", {"policy": policy, "reference": reference, "reward_model": reward_model}, samples,
                       metrics, job_manifest, logs, train_data=train_data, config=config,
                       overrides=[*overrides, "phase=grow", f"iteration={iteration}"], mode=mode, procs=procs,
                       run_id=run_id, task=task, task_config=task_config)

    return rest_grow


def rest_improve_op(image: str):
    """One ReST Improve step (``kuberlhf rest phase=improve``) running in ``image``."""

    @dsl.component(base_image=image, task_config_passthroughs=TASK_CONFIG_PASSTHROUGHS)
    def rest_improve(
        policy: Input[Model],
        reference: Input[Model],
        reward_model: Input[Model],
        samples: Input[Dataset],
        model: Output[Model],
        metrics: Output[Metrics],
        job_manifest: Output[Artifact],
        logs: Output[Artifact],
        iteration: int = 1,
        step: int = 1,
        config: str = "configs/rest/demo.yaml",
        overrides: list = [],  # noqa: B006 (a KFP default value, never mutated)
        mode: str = "local",
        procs: int = 1,
        run_id: str = "",
        task: str = "rest-improve",
        task_config: dsl.TaskConfig = None,
    ):
        """ReST Improve: fine-tune on the Grow samples whose reward reaches this step's threshold."""
        from kuberlhf.workflow.steps import run_stage_step

        run_stage_step("rest", {"policy": policy, "reference": reference, "reward_model": reward_model,
                                "samples": samples}, model, metrics, job_manifest, logs, config=config,
                       overrides=[*overrides, "phase=improve", f"iteration={iteration}", f"step={step}"], mode=mode,
                       procs=procs, run_id=run_id, task=task, task_config=task_config)

    return rest_improve
