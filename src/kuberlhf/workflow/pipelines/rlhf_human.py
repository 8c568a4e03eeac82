"""``rlhf-human``: SFT -> candidates -> people rank them in Label Studio -> reward model -> PPO -> report.

The classic recipe with its first step: the SFT policy writes K candidates per prompt, they go to a
Label Studio project, a step waits until the asked share is ranked (polling, progress in its log),
and the rankings become the reward model's preference pairs. Label Studio's address and key come
from the ``kuberlhf-label-studio`` Secret (the chart's dev Label Studio writes it).

$ kuberlhf pipeline compile --pipeline rlhf-human --out rlhf-human.yaml   # upload in the Kubeflow UI
$ LABEL_STUDIO_URL=... LABEL_STUDIO_API_KEY=... kuberlhf pipeline run --local --pipeline rlhf-human
"""

from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Dataset, Metrics, Model

from kuberlhf.images import image_ref
from kuberlhf.workflow.components.data import data_op
from kuberlhf.workflow.components.evaluate import evaluate_op
from kuberlhf.workflow.components.feedback import feedback_export_op, feedback_import_op, feedback_wait_op
from kuberlhf.workflow.components.generate import generate_op
from kuberlhf.workflow.components.merge import merge_op
from kuberlhf.workflow.components.ppo import ppo_op
from kuberlhf.workflow.components.reward import reward_op
from kuberlhf.workflow.components.sft import sft_op
from kuberlhf.workflow.pipelines.cluster import configure
from kuberlhf.workflow.pipelines.params import described

NAME = "rlhf-human"
POLICY_STAGE = "ppo"  # the stage whose policy the report compares with the SFT one
DESCRIPTION = ("RLHF from human rankings: SFT, K candidates per prompt, ranking in Label Studio, reward model on the "
               "rankings' pairs, PPO, evaluation report.")
LABEL_STUDIO_SECRET = "kuberlhf-label-studio"
LABEL_STUDIO_KEYS = {"LABEL_STUDIO_URL": "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY": "LABEL_STUDIO_API_KEY"}


class Outputs(NamedTuple):
    report: HTML
    metrics: Metrics
    sft_model: Model
    feedback: Dataset
    reward_model: Model
    policy: Model


def _label_studio(task: dsl.PipelineTask) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, LABEL_STUDIO_SECRET, LABEL_STUDIO_KEYS, optional=True)
    return task


def build(registry: str | None = None, tag: str | None = None):
    """The pipeline, its steps' images from ``registry``/``tag`` (default: :mod:`kuberlhf.images`)."""
    sft, merge = sft_op(image_ref("sft", registry, tag)), merge_op(image_ref("sft", registry, tag))
    generate, ppo = generate_op(image_ref("ppo", registry, tag)), ppo_op(image_ref("ppo", registry, tag))
    reward, data = reward_op(image_ref("reward", registry, tag)), data_op(image_ref("sft", registry, tag))
    labeling = image_ref("feedback", registry, tag)
    export, wait, collect = feedback_export_op(labeling), feedback_wait_op(labeling), feedback_import_op(labeling)
    evaluate = evaluate_op(image_ref("evaluate", registry, tag))

    @dsl.pipeline(name=NAME, description=DESCRIPTION)
    @described("RLHF from human rankings: SFT, candidates, Label Studio ranking, reward model, PPO, evaluation report.",
               feedback_project="Label Studio project title; empty = one project per pipeline run (kuberlhf-<run id>). A run with a named project reuses it and adds no task twice.",
               feedback_instructions="Instructions and criteria shown to labelers (an HTML file in the image or the kuberlhf-config ConfigMap).",
               feedback_unusable_bucket="Let labelers set candidates apart as unusable (a second bucket of the ranker).",
               feedback_labelers_per_task="Labelers wanted per task (Label Studio's overlap); several are merged as feedback_merge says.",
               feedback_fraction="Share of the tasks that must be finished (ranked by feedback_labelers_per_task labelers, or skipped) before the pipeline goes on (1.0 = all).",
               feedback_timeout_s="Seconds the waiting step waits for the labelers at most (default a week); then the run fails with the progress so far.",
               feedback_poll_s="Seconds between two looks at the project's progress.",
               feedback_ties="Tied candidates: skip (no pair between them) or drop (rankings with ties give no pairs).",
               feedback_unusable="Unusable candidates: last (below every ranked one) or drop (in no pair).",
               feedback_merge="Several labelers of one task: majority (a pair per majority vote) or separate (every labeler's pairs).",
               feedback_eval_fraction="Share of the ranked prompts whose pairs are held out to measure the reward model's pairwise accuracy.",
               reward_config="Reward-model config file (configs/reward/...); its training data are the rankings' pairs.",
               reward_overrides='Reward-model key=value overrides, e.g. ["data.group_by_prompt=true", "training.max_steps=500"].',
               seed="Sampling seed of the evaluation and of the held-out prompts of the pairs.")
    def rlhf_human(
        mode: str = "local",
        procs: int = 1,
        sft_config: str = "configs/sft/demo.yaml",
        sft_overrides: list = [],  # noqa: B006 (KFP default values, never mutated)
        sft_data: str = "",
        generate_config: str = "configs/generate/demo.yaml",
        generate_overrides: list = [],  # noqa: B006
        generate_prompts: str = "",
        feedback_project: str = "",
        feedback_instructions: str = "configs/feedback/ranking-instructions.html",
        feedback_unusable_bucket: bool = False,
        feedback_labelers_per_task: int = 1,
        feedback_fraction: float = 1.0,
        feedback_timeout_s: float = 604800.0,
        feedback_poll_s: float = 60.0,
        feedback_ties: str = "skip",
        feedback_unusable: str = "last",
        feedback_merge: str = "majority",
        feedback_eval_fraction: float = 0.1,
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
                ("generate", "prompts to rank", generate_prompts, generate_config, generate_overrides),
                ("ppo", "PPO prompts", ppo_prompts, ppo_config, ppo_overrides)):
            task = data(stage=stage, source=source, config=config, overrides=overrides)
            stage_data[stage] = configure(task, launcher=False).set_display_name(name).outputs["dataset"]
        sft_task = configure(sft(train_data=stage_data["sft"], config=sft_config, overrides=sft_overrides, **common),
                             launcher=True).set_display_name("SFT")
        merge_task = configure(merge(model=sft_task.outputs["model"]), launcher=False).set_display_name("LoRA merge")
        generate_task = configure(generate(policy=merge_task.outputs["merged"], train_data=stage_data["generate"],
                                           config=generate_config, overrides=generate_overrides, **common),
                                  launcher=True).set_display_name("candidates")
        export_task = _label_studio(configure(export(
            candidates=generate_task.outputs["candidates"], project=feedback_project,
            instructions=feedback_instructions, unusable_bucket=feedback_unusable_bucket,
            labelers_per_task=feedback_labelers_per_task, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
            launcher=False)).set_display_name("to Label Studio")
        wait_task = _label_studio(configure(wait(
            exported=export_task.outputs["exported"], fraction=feedback_fraction, timeout_s=feedback_timeout_s,
            poll_s=feedback_poll_s), launcher=False)).set_display_name("labelers rank")
        wait_task.set_caching_options(enable_caching=False)  # progress is news each time
        import_task = _label_studio(configure(collect(
            candidates=generate_task.outputs["candidates"], exported=export_task.outputs["exported"],
            progress=wait_task.outputs["progress"], ties=feedback_ties, unusable=feedback_unusable,
            merge=feedback_merge, eval_fraction=feedback_eval_fraction, seed=seed),
            launcher=False)).set_display_name("rankings to pairs")
        import_task.set_caching_options(enable_caching=False)  # the rankings live in Label Studio
        reward_task = configure(reward(train_data=import_task.outputs["pairs"], config=reward_config,
                                       overrides=reward_overrides, **common), launcher=True)
        reward_task.set_display_name("reward model")
        ppo_task = configure(ppo(policy=merge_task.outputs["merged"], reward_model=reward_task.outputs["model"],
                                 train_data=stage_data["ppo"], config=ppo_config, overrides=ppo_overrides,
                                 **common), launcher=True).set_display_name("PPO")
        eval_task = configure(evaluate(sft_model=merge_task.outputs["merged"], policy=ppo_task.outputs["model"],
                                       reward_model=reward_task.outputs["model"], policy_stage=POLICY_STAGE,
                                       prompts=eval_prompts, gold_eval=gold_eval, samples=report_samples, seed=seed),
                              launcher=False).set_display_name("evaluation report")
        return Outputs(report=eval_task.outputs["report"], metrics=eval_task.outputs["metrics"],
                       sft_model=merge_task.outputs["merged"], feedback=import_task.outputs["pairs"],
                       reward_model=reward_task.outputs["model"], policy=ppo_task.outputs["model"])

    return rlhf_human
