"""The labeling round as KFP components: export candidates to Label Studio, wait for the labelers, import.

Label Studio's address and key come from the ``kuberlhf-label-studio`` Secret as environment
variables (``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``); they never appear in a parameter.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def feedback_export_op(image: str):
    @dsl.component(base_image=image)
    def feedback_export(
        candidates: Input[Dataset],
        exported: Output[Artifact],
        project: str = "",
        instructions: str = "configs/feedback/ranking-instructions.html",
        unusable_bucket: bool = False,
        labelers_per_task: int = 1,
        run_id: str = "",
    ):
        """Create or reuse the Label Studio project and add the tasks it lacks (idempotent)."""
        from kuberlhf.workflow.steps import feedback_export_step

        feedback_export_step(candidates.path, exported, project, instructions, unusable_bucket, labelers_per_task,
                             run_id)

    return feedback_export


def feedback_wait_op(image: str):
    @dsl.component(base_image=image)
    def feedback_wait(exported: Input[Artifact], progress: Output[Metrics], fraction: float = 1.0,
                      timeout_s: float = 604800.0, poll_s: float = 60.0):
        """Poll Label Studio until the given fraction of the tasks is annotated (progress in the log)."""
        from kuberlhf.workflow.steps import feedback_wait_step

        feedback_wait_step(exported, progress, fraction, timeout_s, poll_s)

    return feedback_wait


def feedback_import_op(image: str):
    @dsl.component(base_image=image)
    def feedback_import(
        candidates: Input[Dataset],
        exported: Input[Artifact],
        progress: Input[Metrics],
        pairs: Output[Dataset],
        metrics: Output[Metrics],
        ties: str = "skip",
        unusable: str = "last",
        merge: str = "majority",
        eval_fraction: float = 0.1,
        seed: int = 0,
    ):
        """The finished rankings as preference pairs (train.jsonl, eval.jsonl held out by prompt)."""
        from kuberlhf.workflow.steps import feedback_import_step

        feedback_import_step(candidates.path, exported, pairs, metrics, ties, unusable, merge, eval_fraction, seed)

    return feedback_import
