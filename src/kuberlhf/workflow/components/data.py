"""The ``data`` step as a KFP component: a stage's training data, validated, as a ``Dataset``."""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output


def data_op(image: str):
    """The ``data`` component running in ``image``."""

    @dsl.component(base_image=image)
    def data(
        dataset: Output[Dataset],
        metrics: Output[Metrics],
        stage: str,
        source: str = "",
        config: str = "",
        overrides: list = [],  # noqa: B006 (a KFP default value, never mutated)
    ):
        """Validate a stage's training data (source, or the config's data.train) and write it as JSON Lines."""
        from kuberlhf.workflow.data import run_data_step

        run_data_step(stage, dataset, metrics, source=source, config=config, overrides=overrides)

    return data
