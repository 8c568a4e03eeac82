"""The pipelines' library: what a step runs (:mod:`.steps`), the evaluation report (:mod:`.report`),
local runs with ``kfp.local`` (:mod:`.local`), compiling (:mod:`.compiling`), the Kubeflow Pipelines
server (:mod:`.remote`) and the ``kuberlhf pipeline`` command (:mod:`.cli`)."""
