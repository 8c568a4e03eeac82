"""``rlhf-ppo``: SFT -> LoRA merge -> reward model -> PPO -> evaluation and report.

Each training stage reads its data from a data step (validated JSON Lines, a ``Dataset``).

$ kuberlhf pipeline run --local                       # the built-in task on this machine (make demo)
$ kuberlhf pipeline compile --pipeline rlhf-ppo --out rlhf-ppo.yaml   # upload in the Kubeflow UI
$ kuberlhf pipeline submit --host http://ml-pipeline.kubeflow:8888 --param mode=pytorchjob
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Metrics, Model

from kuberlhf.images import image_ref
from kuberlhf.workflow.components.data import data_op
from kuberlhf.workflow.components.evaluate import evaluate_op
from kuberlhf.workflow.components.merge import merge_op
from kuberlhf.workflow.components.ppo import ppo_op
from kuberlhf.workflow.components.reward import reward_op
from kuberlhf.workflow.components.sft import sft_op
from kuberlhf.workflow.pipelines.cluster import configure
from kuberlhf.workflow.pipelines.params import described

NAME = "rlhf-ppo"
POLICY_STAGE = "ppo"  # the stage whose policy the report compares with the SFT one
DESCRIPTION = "RLHF with PPO: SFT, LoRA merge, reward model, PPO against the reward model, evaluation report."


class Outputs(NamedTuple):
    report: HTML
    metrics: Metrics
    sft_model: Model
    reward_model: Model
    policy: Model


def build(registry: str | None = None, tag: str | None = None):
    """The pipeline, its steps' images from ``registry``/``tag`` (default: :mod:`kuberlhf.images`)."""
    sft, merge, reward = (sft_op(image_ref("sft", registry, tag)), merge_op(image_ref("sft", registry, tag)),
                          reward_op(image_ref("reward", registry, tag)))
    ppo, evaluate = ppo_op(image_ref("ppo", registry, tag)), evaluate_op(image_ref("evaluate", registry, tag))
    data = data_op(image_ref("sft", registry, tag))

    @dsl.pipeline(name=NAME, description=DESCRIPTION)
    @described("RLHF with PPO: SFT, LoRA merge, reward model, PPO, evaluation report.",
               sft_overrides='SFT key=value overrides, e.g. ["training.max_steps=500", "finetune=lora", "lora.merge=false"].')
    def rlhf_ppo(
        mode: str = "local",
        procs: int = 1,
        sft_config: str = "configs/sft/demo.yaml",
        sft_overrides: list = [],  # noqa: B006 (KFP default values, never mutated)
        sft_data: str = "",
        reward_config: str = "configs/reward/demo.yaml",
        reward_overrides: list = ["training.logging_steps=10"],  # noqa: B006
        reward_data: str = "",
        ppo_config: str = "configs/ppo/demo.yaml",
        ppo_overrides: list = [],  # noqa: B006
        ppo_prompts: str = "",
        eval_prompts: str = "demo://prompts?n=200&split=test",
        gold_eval: bool = True,
        report_samples: int = 8,
        seed: int = 0,
    ) -> Outputs:
        common = {"mode": mode, "procs": procs, "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                  "task": dsl.PIPELINE_TASK_NAME_PLACEHOLDER}
        stage_data = {}
        for stage, name, source, config, overrides in (
                ("sft", "SFT data", sft_data, sft_config, sft_overrides),
                ("reward", "reward data", reward_data, reward_config, reward_overrides),
                ("ppo", "PPO prompts", ppo_prompts, ppo_config, ppo_overrides)):
            task = data(stage=stage, source=source, config=config, overrides=overrides)
            stage_data[stage] = configure(task, launcher=False).set_display_name(name).outputs["dataset"]
        sft_task = configure(sft(train_data=stage_data["sft"], config=sft_config, overrides=sft_overrides, **common),
                             launcher=True)
        sft_task.set_display_name("SFT")
        merge_task = configure(merge(model=sft_task.outputs["model"]), launcher=False).set_display_name("LoRA merge")
        reward_task = configure(reward(train_data=stage_data["reward"], config=reward_config,
                                       overrides=reward_overrides, **common), launcher=True)
        reward_task.set_display_name("reward model")
        ppo_task = configure(ppo(policy=merge_task.outputs["merged"], reward_model=reward_task.outputs["model"],
                                 train_data=stage_data["ppo"], config=ppo_config, overrides=ppo_overrides,
                                 **common), launcher=True)
        ppo_task.set_display_name("PPO")
        eval_task = configure(evaluate(sft_model=merge_task.outputs["merged"], policy=ppo_task.outputs["model"],
                                       reward_model=reward_task.outputs["model"], policy_stage=POLICY_STAGE,
                                       prompts=eval_prompts, gold_eval=gold_eval, samples=report_samples, seed=seed),
                              launcher=False).set_display_name("evaluation report")
        return Outputs(report=eval_task.outputs["report"], metrics=eval_task.outputs["metrics"],
                       sft_model=merge_task.outputs["merged"], reward_model=reward_task.outputs["model"],
                       policy=ppo_task.outputs["model"])

    return rlhf_ppo
