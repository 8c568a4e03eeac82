"""``rlhf-dpo``: SFT -> DPO -> evaluation and report.

Each training stage reads its data from a data step (validated JSON Lines, a ``Dataset``).

$ kuberlhf pipeline run --local --pipeline rlhf-dpo
$ kuberlhf pipeline compile --pipeline rlhf-dpo --out rlhf-dpo.yaml
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Metrics, Model

from kuberlhf.images import image_ref
from kuberlhf.workflow.components.data import data_op
from kuberlhf.workflow.components.dpo import dpo_op
from kuberlhf.workflow.components.evaluate import evaluate_op
from kuberlhf.workflow.components.sft import sft_op
from kuberlhf.workflow.pipelines.cluster import configure
from kuberlhf.workflow.pipelines.params import described

NAME = "rlhf-dpo"
POLICY_STAGE = "dpo"  # the stage whose policy the report compares with the SFT one
DESCRIPTION = "RLHF with DPO: SFT, direct preference optimisation on preference pairs, evaluation report."


class Outputs(NamedTuple):
    report: HTML
    metrics: Metrics
    sft_model: Model
    policy: Model


def build(registry: str | None = None, tag: str | None = None):
    """The pipeline, its steps' images from ``registry``/``tag`` (default: :mod:`kuberlhf.images`)."""
    sft, dpo = sft_op(image_ref("sft", registry, tag)), dpo_op(image_ref("dpo", registry, tag))
    evaluate, data = evaluate_op(image_ref("evaluate", registry, tag)), data_op(image_ref("sft", registry, tag))

    @dsl.pipeline(name=NAME, description=DESCRIPTION)
    @described("RLHF with DPO: SFT, DPO, evaluation report.", policy="DPO",
               sft_config="SFT config file (a path in the image, e.g. configs/sft/opt-1.3b-qlora.yaml, or a file of the kuberlhf-config ConfigMap). Keep lora.merge=true: DPO starts from a standalone model.",
               dpo_config="DPO config file (configs/dpo/...); its model is the SFT step's output.",
               dpo_overrides='DPO key=value overrides, e.g. ["beta=0.05", "data.on_bad_row=skip"].',
               dpo_data="DPO preference pairs (prompt/chosen/rejected or hh-rlhf rows), e.g. s3://bucket/pairs.jsonl; empty = the DPO config's data.train.")
    def rlhf_dpo(
        mode: str = "local",
        procs: int = 1,
        sft_config: str = "configs/sft/demo.yaml",
        sft_overrides: list = [],  # noqa: B006 (KFP default values, never mutated)
        sft_data: str = "",
        dpo_config: str = "configs/dpo/demo.yaml",
        dpo_overrides: list = ["training.logging_steps=5"],  # noqa: B006
        dpo_data: str = "",
        eval_prompts: str = "demo://prompts?n=200&split=test",
        gold_eval: bool = True,
        report_samples: int = 8,
        seed: int = 0,
    ) -> Outputs:
        common = {"mode": mode, "procs": procs, "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                  "task": dsl.PIPELINE_TASK_NAME_PLACEHOLDER}
        sft_data_task = configure(data(stage="sft", source=sft_data, config=sft_config, overrides=sft_overrides),
                                  launcher=False).set_display_name("SFT data")
        dpo_data_task = configure(data(stage="dpo", source=dpo_data, config=dpo_config, overrides=dpo_overrides),
                                  launcher=False).set_display_name("DPO data")
        sft_task = configure(sft(train_data=sft_data_task.outputs["dataset"], config=sft_config,
                                 overrides=sft_overrides, **common), launcher=True)
        sft_task.set_display_name("SFT")
        dpo_task = configure(dpo(policy=sft_task.outputs["model"], train_data=dpo_data_task.outputs["dataset"],
                                 config=dpo_config, overrides=dpo_overrides, **common),
                             launcher=True).set_display_name("DPO")
        eval_task = configure(evaluate(sft_model=sft_task.outputs["model"], policy=dpo_task.outputs["model"],
                                       policy_stage=POLICY_STAGE, prompts=eval_prompts, gold_eval=gold_eval,
                                       samples=report_samples, seed=seed),
                              launcher=False).set_display_name("evaluation report")
        return Outputs(report=eval_task.outputs["report"], metrics=eval_task.outputs["metrics"],
                       sft_model=sft_task.outputs["model"], policy=dpo_task.outputs["model"])

    return rlhf_dpo
