"""Cluster settings every step of the pipelines shares (ignored by local runs).

Names follow the deployment's contract: the ``kuberlhf-config`` ConfigMap (``cluster.yaml``
and the stage configs) mounted at ``/etc/kuberlhf``; object-store credentials from the
``kuberlhf-s3`` Secret and the optional W&B key from ``kuberlhf-wandb``, as environment
variables taken from the Secrets (never literal values).
"""

from kfp import dsl, kubernetes

CONFIG_MAP = "kuberlhf-config"
CONFIG_DIR = "/etc/kuberlhf"
S3_SECRET = "kuberlhf-s3"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
WANDB_SECRET = "kuberlhf-wandb"
RETRIES = 2  # a launcher step re-attaches to its PyTorchJob, or a local stage resumes from its checkpoint
# pod labels of the steps that can launch a PyTorchJob: the chart's kuberlhf-launcher NetworkPolicy
# selects them (egress to the API server); the other steps never reach the API on kuberlhf's behalf
LAUNCHER_POD_LABELS = {"kuberlhf.io/role": "launcher"}


def configure(task: dsl.PipelineTask, *, launcher: bool) -> dsl.PipelineTask:
    """Mount the settings, pass the credentials, enable caching; retries and the launcher label on steps that
    launch training."""
    kubernetes.use_config_map_as_volume(task, CONFIG_MAP, CONFIG_DIR, optional=True)
    kubernetes.use_secret_as_env(task, S3_SECRET, S3_KEYS, optional=True)
    task.set_caching_options(enable_caching=True)
    if launcher:
        for key, value in LAUNCHER_POD_LABELS.items():
            kubernetes.add_pod_label(task, key, value)
        kubernetes.use_secret_as_env(task, WANDB_SECRET, {"WANDB_API_KEY": "WANDB_API_KEY"}, optional=True)
        task.set_retry(num_retries=RETRIES, backoff_duration="60s", backoff_factor=2.0, backoff_max_duration="3600s")
    return task
