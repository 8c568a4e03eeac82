"""What a launching step's KFP task hands on to the job it launches (KFP's task config passthroughs).

Every component that can launch a job (those of the stage registry) declares these and takes a
``task_config: dsl.TaskConfig`` input, which KFP fills at run time with the task's settings. Resources
(``set_cpu_limit``, ``set_memory_request``, ``set_accelerator_type/limit``, ...), node selector, tolerations and
affinity are forwarded only: the step's own pod, a launcher in the cluster modes, does not get them (it would
hold the job's GPUs while it waits). Env and volumes are applied to the step's pod too: it needs its Secrets'
env and the mounted ``kuberlhf-config`` (and KFP refuses to compile a step whose volumes are not declared here).
:mod:`kuberlhf.k8s.taskconfig` says what reaches the job and which setting wins.
"""

from kfp import dsl

TASK_CONFIG_PASSTHROUGHS = [
    dsl.TaskConfigField.RESOURCES,
    dsl.TaskConfigField.KUBERNETES_NODE_SELECTOR,
    dsl.TaskConfigField.KUBERNETES_TOLERATIONS,
    dsl.TaskConfigField.KUBERNETES_AFFINITY,
    dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.ENV, apply_to_task=True),
    dsl.TaskConfigPassthrough(field=dsl.TaskConfigField.KUBERNETES_VOLUMES, apply_to_task=True),
]
