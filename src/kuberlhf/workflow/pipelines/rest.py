"""``rest``: SFT -> reward model -> N x (ReST Grow -> M x Improve) -> evaluation and report.

The iterations are unrolled when the pipeline is compiled (``iterations`` and ``improve_steps`` are
compile settings, not run parameters): each Grow and each Improve is a step of its own in the
Kubeflow UI, a Grow's output the ``Dataset`` of its scored samples, an Improve's the ``Model`` the
next step starts from. The Improve steps' thresholds are the ReST config's ``improve.thresholds``
(one per step).

$ kuberlhf pipeline run --local --pipeline rest --param iterations=2 --param improve_steps=2
$ kuberlhf pipeline compile --pipeline rest --param iterations=3 --out rest.yaml   # upload in the Kubeflow UI
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Metrics, Model

from kuberlhf.images import image_ref
from kuberlhf.workflow.components.data import data_op
from kuberlhf.workflow.components.evaluate import evaluate_op
from kuberlhf.workflow.components.merge import merge_op
from kuberlhf.workflow.components.rest import rest_grow_op, rest_improve_op
from kuberlhf.workflow.components.reward import reward_op
from kuberlhf.workflow.components.sft import sft_op
from kuberlhf.workflow.pipelines.cluster import configure
from kuberlhf.workflow.pipelines.params import described

NAME = "rest"
POLICY_STAGE = "rest"  # the stage whose policy the report compares with the SFT one
DESCRIPTION = ("ReST: SFT, reward model, Grow (sample and score) and Improve (filter by reward, fine-tune) "
               "iterations, evaluation report.")
# compile settings: the shape of the graph (name -> (default, description))
SETTINGS = {"iterations": (2, "Grow steps, each followed by its Improve steps"),
            "improve_steps": (2, "Improve steps after each Grow (the ReST config needs as many thresholds)")}


class Outputs(NamedTuple):
    report: HTML
    metrics: Metrics
    sft_model: Model
    reward_model: Model
    last_grow: Dataset
    policy: Model


def build(registry: str | None = None, tag: str | None = None, iterations: int = 2, improve_steps: int = 2):
    """The pipeline with ``iterations`` Grow steps of ``improve_steps`` Improve steps each, its steps' images
    from ``registry``/``tag`` (default: :mod:`kuberlhf.images`)."""
    sft, merge, reward = (sft_op(image_ref("sft", registry, tag)), merge_op(image_ref("sft", registry, tag)),
                          reward_op(image_ref("reward", registry, tag)))
    grow, improve = rest_grow_op(image_ref("sft", registry, tag)), rest_improve_op(image_ref("sft", registry, tag))
    evaluate, data = evaluate_op(image_ref("evaluate", registry, tag)), data_op(image_ref("sft", registry, tag))

    @dsl.pipeline(name=NAME, description=f"{DESCRIPTION} {iterations} x (Grow + {improve_steps} Improve).")
    @described("ReST: SFT, reward model, Grow and Improve iterations (unrolled at compile time), evaluation report.", policy="ReST",
               rest_config="ReST config file (configs/rest/...): K samples per prompt, improve.thresholds (one per Improve step), the fine-tuning of each Improve step.",
               rest_overrides='ReST key=value overrides for every Grow and Improve step, e.g. ["improve.thresholds=[0.6,0.9]", "improve.start_from=base", "sampling.num_candidates=16"].',
               rest_prompts="Prompts of the Grow steps (any data source); empty = the ReST config's data.train.")
    def rest(
        mode: str = "local",
        procs: int = 1,
        sft_config: str = "configs/sft/demo.yaml",
        sft_overrides: list = [],  # noqa: B006 (KFP default values, never mutated)
        sft_data: str = "",
        reward_config: str = "configs/reward/demo.yaml",
        reward_overrides: list = ["training.logging_steps=10"],  # noqa: B006
        reward_data: str = "",
        rest_config: str = "configs/rest/demo.yaml",
        rest_overrides: list = [],  # noqa: B006
        rest_prompts: str = "",
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
                ("rest", "Grow prompts", rest_prompts, rest_config, rest_overrides)):
            task = data(stage=stage, source=source, config=config, overrides=overrides)
            stage_data[stage] = configure(task, launcher=False).set_display_name(name).outputs["dataset"]
        sft_task = configure(sft(train_data=stage_data["sft"], config=sft_config, overrides=sft_overrides, **common),
                             launcher=True).set_display_name("SFT")
        merge_task = configure(merge(model=sft_task.outputs["model"]), launcher=False).set_display_name("LoRA merge")
        reward_task = configure(reward(train_data=stage_data["reward"], config=reward_config,
                                       overrides=reward_overrides, **common), launcher=True)
        reward_task.set_display_name("reward model")
        sft_model, reward_model = merge_task.outputs["merged"], reward_task.outputs["model"]
        policy, grow_task = sft_model, None
        for i in range(1, iterations + 1):
            grow_task = configure(grow(policy=policy, reference=sft_model, reward_model=reward_model,
                                       train_data=stage_data["rest"], iteration=i, config=rest_config,
                                       overrides=rest_overrides, **common), launcher=True)
            grow_task.set_display_name(f"Grow {i}")
            for m in range(1, improve_steps + 1):
                improve_task = configure(improve(policy=policy, reference=sft_model, reward_model=reward_model,
                                                 samples=grow_task.outputs["samples"], iteration=i, step=m,
                                                 config=rest_config, overrides=rest_overrides, **common),
                                         launcher=True)
                improve_task.set_display_name(f"Improve {i}.{m}")
                policy = improve_task.outputs["model"]
        eval_task = configure(evaluate(sft_model=sft_model, policy=policy, reward_model=reward_model,
                                       policy_stage=POLICY_STAGE, prompts=eval_prompts, gold_eval=gold_eval,
                                       samples=report_samples, seed=seed),
                              launcher=False).set_display_name("evaluation report")
        return Outputs(report=eval_task.outputs["report"], metrics=eval_task.outputs["metrics"],
                       sft_model=sft_model, reward_model=reward_model, last_grow=grow_task.outputs["samples"],
                       policy=policy)

    return rest
