"""Evaluation and report as a KFP component: gold-judge scores, training curves, sample generations."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output


def evaluate_op(image: str):
    """The ``evaluate`` component running in ``image``."""

    @dsl.component(base_image=image)
    def evaluate(
        sft_model: Input[Model],
        policy: Input[Model],
        report: Output[HTML],
        metrics: Output[Metrics],
        reward_model: Input[Model] = None,
        policy_stage: str = "ppo",
        prompts: str = "demo://prompts?n=200&split=test",
        gold_eval: bool = True,
        samples: int = 8,
        seed: int = 0,
        labels: Input[Dataset] = None,
    ):
        """Score the SFT and final policies on held-out prompts and write the HTML report."""
        from kuberlhf.workflow.report import write_report

        result = write_report(
            report.path,
            sft_dir=sft_model.path,
            policy_dir=policy.path,
            policy_stage=policy_stage,
            reward_dir=reward_model.path if reward_model is not None else None,
            prompts=prompts,
            gold=gold_eval,
            samples=samples,
            seed=seed,
            labels_dir=labels.path if labels is not None else None,
        )
        for key, value in result.items():
            metrics.log_metric(key, value)

    return evaluate
