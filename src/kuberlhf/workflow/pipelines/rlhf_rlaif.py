"""``rlhf-rlaif``: SFT -> candidates -> AI labels under a constitution -> reward model -> PPO -> report.

RLHF with AI feedback (Bai et al. 2022, Lee et al. 2023): the SFT policy writes K candidates per
prompt, a judge model labels every pair under a principle of the written constitution (both orders
averaged, :mod:`kuberlhf.stages.rlaif`), the reward model learns the AI labels, PPO follows it.
The report shows the labelling too: pairs kept, the share whose label flips with the order, and on
the built-in task the AI labels' agreement with the gold judge.

$ kuberlhf pipeline run --local --pipeline rlhf-rlaif --param judge_model=/models/SmolLM2-135M-Instruct.gguf
$ kuberlhf pipeline compile --pipeline rlhf-rlaif --out rlhf-rlaif.yaml   # upload in the Kubeflow UI
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Model

from kuberlhf.images import image_ref
from kuberlhf.workflow.components.data import data_op
from kuberlhf.workflow.components.evaluate import evaluate_op
from kuberlhf.workflow.components.generate import generate_op
from kuberlhf.workflow.components.merge import merge_op
from kuberlhf.workflow.components.ppo import ppo_op
from kuberlhf.workflow.components.reward import reward_op
from kuberlhf.workflow.components.rlaif import rlaif_op
from kuberlhf.workflow.components.sft import sft_op
from kuberlhf.workflow.pipelines.cluster import configure
from kuberlhf.workflow.pipelines.params import described

NAME = "rlhf-rlaif"
POLICY_STAGE = "ppo"  # the stage whose policy the report compares with the SFT one
DESCRIPTION = ("RLHF from AI feedback: SFT, K candidates per prompt, a judge model labels their pairs under a written "
               "constitution, reward model on the AI labels, PPO, evaluation report.")


class Outputs(NamedTuple):
    report: HTML
    metrics: Metrics
    sft_model: Model
    ai_labels: Dataset
    reward_model: Model
    policy: Model


def build(registry: str | None = None, tag: str | None = None):
    """The pipeline, its steps' images from ``registry``/``tag`` (default: :mod:`kuberlhf.images`)."""
    sft, merge = sft_op(image_ref("sft", registry, tag)), merge_op(image_ref("sft", registry, tag))
    generate, ppo = generate_op(image_ref("ppo", registry, tag)), ppo_op(image_ref("ppo", registry, tag))
    rlaif, reward = rlaif_op(image_ref("ppo", registry, tag)), reward_op(image_ref("reward", registry, tag))
    evaluate, data = evaluate_op(image_ref("evaluate", registry, tag)), data_op(image_ref("sft", registry, tag))

    @dsl.pipeline(name=NAME, description=DESCRIPTION)
    @described("RLHF from AI feedback: SFT, candidates, AI labels under a constitution, reward model, PPO, report.",
               judge_model="The judge: a hub name, s3:// URI, path in the image or .gguf file (e.g. SmolLM2-135M-Instruct); empty = this run's SFT policy judges its own candidates (meaningful only for a capable instruct model).",
               constitution="The principles (and few-shot examples) the judge follows: a YAML file in the image or the kuberlhf-config ConfigMap (configs/constitutions/...).",
               rlaif_config="AI-labelling config (configs/rlaif/...): batch size, confidence threshold, held-out share.",
               rlaif_overrides='AI-labelling key=value overrides, e.g. ["labeling.min_confidence=0.2"].',
               reward_config="Reward-model config file (configs/reward/...); its training data are the AI-labelled pairs.")
    def rlhf_rlaif(
        mode: str = "local",
        procs: int = 1,
        sft_config: str = "configs/sft/demo.yaml",
        sft_overrides: list = [],  # noqa: B006 (KFP default values, never mutated)
        sft_data: str = "",
        generate_config: str = "configs/generate/demo.yaml",
        generate_overrides: list = [],  # noqa: B006
        generate_prompts: str = "",
        judge_model: str = "",
        constitution: str = "configs/constitutions/demo.yaml",
        rlaif_config: str = "configs/rlaif/demo.yaml",
        rlaif_overrides: list = [],  # noqa: B006
        reward_config: str = "configs/reward/demo.yaml",
        reward_overrides: list = [],  # noqa: B006
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
                ("generate", "prompts to label", generate_prompts, generate_config, generate_overrides),
                ("ppo", "PPO prompts", ppo_prompts, ppo_config, ppo_overrides)):
            task = data(stage=stage, source=source, config=config, overrides=overrides)
            stage_data[stage] = configure(task, launcher=False).set_display_name(name).outputs["dataset"]
        sft_task = configure(sft(train_data=stage_data["sft"], config=sft_config, overrides=sft_overrides, **common),
                             launcher=True).set_display_name("SFT")
        merge_task = configure(merge(model=sft_task.outputs["model"]), launcher=False).set_display_name("LoRA merge")
        generate_task = configure(generate(policy=merge_task.outputs["merged"], train_data=stage_data["generate"],
                                           config=generate_config, overrides=generate_overrides, **common),
                                  launcher=True).set_display_name("candidates")
        rlaif_task = configure(rlaif(judge=merge_task.outputs["merged"], train_data=generate_task.outputs["candidates"],
                                     judge_model=judge_model, constitution=constitution, config=rlaif_config,
                                     overrides=rlaif_overrides, **common),
                               launcher=True).set_display_name("AI labels")
        reward_task = configure(reward(train_data=rlaif_task.outputs["pairs"], config=reward_config,
                                       overrides=reward_overrides, **common), launcher=True)
        reward_task.set_display_name("reward model")
        ppo_task = configure(ppo(policy=merge_task.outputs["merged"], reward_model=reward_task.outputs["model"],
                                 train_data=stage_data["ppo"], config=ppo_config, overrides=ppo_overrides,
                                 **common), launcher=True).set_display_name("PPO")
        eval_task = configure(evaluate(sft_model=merge_task.outputs["merged"], policy=ppo_task.outputs["model"],
                                       reward_model=reward_task.outputs["model"], policy_stage=POLICY_STAGE,
                                       prompts=eval_prompts, gold_eval=gold_eval, samples=report_samples, seed=seed,
                                       labels=rlaif_task.outputs["pairs"]),
                              launcher=False).set_display_name("evaluation report")
        return Outputs(report=eval_task.outputs["report"], metrics=eval_task.outputs["metrics"],
                       sft_model=merge_task.outputs["merged"], ai_labels=rlaif_task.outputs["pairs"],
                       reward_model=reward_task.outputs["model"], policy=ppo_task.outputs["model"])

    return rlhf_rlaif
