"""LoRA merge as a KFP component: an SFT adapter merged into its base model (``kuberlhf merge``)."""

from kfp import dsl
from kfp.dsl import Input, Model, Output


def merge_op(image: str):
    """The ``merge`` component running in ``image``."""

    @dsl.component(base_image=image)
    def merge(model: Input[Model], merged: Output[Model]):
        """Merge the SFT adapter into a standalone model; a full fine-tune passes through unchanged."""
        from kuberlhf.models.publish import merge_artifact

        result = merge_artifact(model.path, merged.path)
        merged.metadata.update({"stage": "merge", "adapter_merged": result["merged"]})

    return merge
