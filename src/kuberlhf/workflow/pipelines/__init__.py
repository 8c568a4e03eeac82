"""The kuberlhf Kubeflow pipelines, installed as ``kuberlhf.workflow.pipelines``.

* ``rlhf-ppo`` (:mod:`.rlhf_ppo`): SFT -> LoRA merge -> reward model -> PPO -> evaluation
* ``rlhf-dpo`` (:mod:`.rlhf_dpo`): SFT -> DPO -> evaluation
* ``rlhf-human`` (:mod:`.rlhf_human`): SFT -> candidates -> Label Studio rankings -> reward model -> PPO
  -> evaluation
* ``rlhf-rlaif`` (:mod:`.rlhf_rlaif`): SFT -> candidates -> AI labels under a constitution -> reward model
  -> PPO -> evaluation
* ``rest`` (:mod:`.rest`): SFT -> reward model -> N x (Grow -> M x Improve), unrolled at compile time
  -> evaluation

Each module has ``build(registry=None, tag=None)`` returning the ``@dsl.pipeline`` function
with its components' images resolved by :func:`kuberlhf.images.image_ref`. The same
definition runs locally (``kuberlhf pipeline run --local``, ``kfp.local``) and on Kubeflow
(``kuberlhf pipeline compile|submit|upload``); its ``mode`` parameter picks whether the
training stages run inside the step (``local``), as PyTorchJobs (``pytorchjob``) or as TrainJobs
(``trainjob``).
"""

# pipeline name -> module
PIPELINES = {
    "rlhf-ppo": "kuberlhf.workflow.pipelines.rlhf_ppo",
    "rlhf-dpo": "kuberlhf.workflow.pipelines.rlhf_dpo",
    "rlhf-human": "kuberlhf.workflow.pipelines.rlhf_human",
    "rlhf-rlaif": "kuberlhf.workflow.pipelines.rlhf_rlaif",
    "rest": "kuberlhf.workflow.pipelines.rest",
}
