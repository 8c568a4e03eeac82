"""Kubeflow Pipelines (v2) components, one per stage, installed as ``kuberlhf.workflow.components``.

Each module holds a factory ``<stage>_op(image)`` that returns the ``@dsl.component`` of
its stage built on ``image`` (the pipelines pass ``kuberlhf.images.image_ref(stage)``).
Components are thin: module-level imports are kfp only, and each body imports the
library (:mod:`kuberlhf.workflow.steps`, :mod:`kuberlhf.models.publish`, :mod:`kuberlhf.workflow.report`)
and calls it.
"""
