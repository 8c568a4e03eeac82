"""End to end on a real cluster: a tiny rlhf-ppo run whose training stages are PyTorchJobs or TrainJobs.

Needs a cluster with Kubeflow Pipelines and the Training Operator (or Kubeflow Trainer v2 and the
chart's runtimes, for TrainJobs), the chart installed in a namespace, this commit's images
pushed, and the object store reachable from here:

    KUBERLHF_E2E_BACKEND     pytorchjob (default) or trainjob: the pipeline's mode
    KUBERLHF_E2E_KFP_HOST    Kubeflow Pipelines API (e.g. http://ml-pipeline-ui.kubeflow:80)
    KUBERLHF_E2E_NAMESPACE   namespace the chart is installed in (the run and its jobs go there)
    KUBERLHF_E2E_BUCKET      bucket of the run's pipeline root (s3://BUCKET/kuberlhf-e2e): the training
                             pods write their models there through the kuberlhf-s3 Secret
    KUBECONFIG               or in-cluster credentials, to read the jobs
    AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   to read the artifacts

`.github/workflows/gpu-e2e.yml` sets all of them; without them every test here is skipped.
"""

from __future__ import annotations

import json
import math
import os

import pytest

HOST = os.environ.get("KUBERLHF_E2E_KFP_HOST", "")
NAMESPACE = os.environ.get("KUBERLHF_E2E_NAMESPACE", "")
BUCKET = os.environ.get("KUBERLHF_E2E_BUCKET", "")
BACKEND = os.environ.get("KUBERLHF_E2E_BACKEND", "pytorchjob")
pytestmark = pytest.mark.skipif(
    not (HOST and NAMESPACE and BUCKET),
    reason="no cluster configured: set KUBERLHF_E2E_KFP_HOST, KUBERLHF_E2E_NAMESPACE and KUBERLHF_E2E_BUCKET "
    "(see .github/workflows/gpu-e2e.yml)",
)
STAGES = ("sft", "reward", "ppo")
# small enough for minutes on one GPU node, large enough that every stage trains and checkpoints
PARAMS = {
    "mode": BACKEND,
    "sft_overrides": ["training.max_steps=60", "training.save_steps=30"],
    "reward_overrides": ["training.max_steps=60", "training.save_steps=30"],
    "ppo_overrides": ["training.max_steps=20", "training.save_steps=10"],
    "report_samples": 4,
}


@pytest.fixture(scope="module")
def finished_run():
    from kuberlhf.workflow import remote

    client = remote.client(HOST)
    started = remote.submit(HOST, "rlhf-ppo", PARAMS, experiment="kuberlhf-e2e", namespace=None,
                            pipeline_root=f"s3://{BUCKET}/kuberlhf-e2e",
                            run_name=f"e2e-{os.environ.get('GITHUB_RUN_ID', 'local')}", kfp_client=client)
    run = client.wait_for_run_completion(started["run_id"], timeout=int(os.environ.get("KUBERLHF_E2E_TIMEOUT", 5400)))
    return started, run


def jobs_of_the_run() -> list[dict]:
    """The PyTorchJobs or TrainJobs kuberlhf created in the namespace."""
    from kubernetes import client, config

    from kuberlhf.k8s.kubeapi import BACKEND as KINDS

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    kind = KINDS[BACKEND]
    items = client.CustomObjectsApi().list_namespaced_custom_object(
        kind.group, kind.version, NAMESPACE, kind.plural, label_selector="app.kubernetes.io/managed-by=kuberlhf")
    return items["items"]


def condition(job: dict) -> str:
    conditions = [c for c in job.get("status", {}).get("conditions", []) if c.get("status") == "True"]
    return conditions[-1]["type"] if conditions else "Unknown"


def output_dir(job: dict) -> str:
    if job["kind"] == "TrainJob":
        container = job["spec"]["trainer"]
    else:
        container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    args = [*container.get("command", []), *container.get("args", [])]
    (uri,) = [a.split("=", 1)[1] for a in args if a.startswith("output_dir=")]
    return uri


def test_run_succeeded(finished_run):
    started, run = finished_run
    assert str(run.state).upper() == "SUCCEEDED", f"run {started['url']} ended {run.state}"


def test_each_training_stage_ran_as_a_succeeded_job_of_the_backend(finished_run):
    from kuberlhf.k8s.kubeapi import BACKEND as KINDS

    jobs = {j["metadata"]["labels"]["kuberlhf.io/stage"]: j for j in jobs_of_the_run()}
    assert set(STAGES) <= set(jobs), f"{KINDS[BACKEND].kind}s found: {sorted(jobs)}"
    done = KINDS[BACKEND].succeeded
    assert {s: condition(jobs[s]) for s in STAGES} == {s: done for s in STAGES}


def test_artifacts_are_complete_and_ppo_metrics_are_sane(finished_run):
    from kuberlhf.artifacts import storage

    jobs = {j["metadata"]["labels"]["kuberlhf.io/stage"]: j for j in jobs_of_the_run()}
    for stage in STAGES:
        uri = output_dir(jobs[stage])
        assert uri.startswith("s3://") and storage.is_complete(uri), f"{stage}: {uri} has no manifest"
    with storage.open_uri(output_dir(jobs["ppo"]).rstrip("/") + "/metrics.json") as f:
        metrics = json.load(f)
    for key in ("gold_score_before", "gold_score_after", "kl"):
        assert math.isfinite(metrics[key]), f"{key} = {metrics[key]}"
