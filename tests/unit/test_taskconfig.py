"""A KFP task's settings reach the job its step launches: compiled as task config passthroughs, handed to the step
as KFP's driver hands them, rendered onto the PyTorchJob's and the TrainJob's pods; checked, and layered between
the cluster settings and the run's overrides."""

# no `from __future__ import annotations`: KFP reads the pipeline function's annotations as types
import logging
from pathlib import Path

import pytest
import yaml
from k8schecks import crd_errors, pss_restricted_errors

from kuberlhf.errors import ConfigError
from kuberlhf.k8s import trainjob
from kuberlhf.k8s.launcher import render

REPO = Path(__file__).resolve().parents[2]
ARGS = ("sft", "configs/sft/demo.yaml", ["output_dir=s3://b/sft"], "run-1", "sft")
ZONE = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-a"]}


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("KUBERLHF_CLUSTER_CONFIG", str(tmp_path / "absent.yaml"))


def compile_gpu_step(tmp_path: Path) -> tuple[dict, dict]:
    """(pipeline spec, platform spec) of a pipeline whose SFT step a KFP user sized and placed."""
    from kfp import compiler, dsl, kubernetes

    from kuberlhf.workflow.components.sft import sft_op
    from kuberlhf.workflow.pipelines.cluster import configure

    sft = sft_op("registry.example/kuberlhf-sft:1")

    @dsl.pipeline(name="gpu-step")
    def gpu_step(mode: str = "pytorchjob"):
        data = dsl.importer(artifact_uri="s3://b/sft-data", artifact_class=dsl.Dataset)
        task = configure(sft(train_data=data.output, mode=mode), launcher=True)
        task.set_cpu_request("4").set_cpu_limit("8").set_memory_request("32Gi").set_memory_limit("64Gi")
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(2)
        task.set_env_variable("NCCL_DEBUG", "INFO")
        kubernetes.add_node_selector(task, "pool", "a100")
        kubernetes.add_toleration(task, key="dedicated", operator="Equal", value="ml", effect="NoSchedule")
        kubernetes.add_node_affinity(task, match_expressions=[ZONE])
        kubernetes.use_secret_as_env(task, "hf", {"HF_TOKEN": "HF_TOKEN"})  # a Secret the job does not get

    path = tmp_path / "gpu-step.yaml"
    compiler.Compiler().compile(gpu_step, str(path))
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform


def driver_task_config(spec: dict, platform: dict, executor: str) -> dict:
    """The dict KFP's driver hands a step's ``dsl.TaskConfig`` input, built from the compiled step as the driver
    builds it (kubeflow/pipelines backend/src/v2/driver: ``initPodSpecPatch`` in driver.go takes the resources,
    accelerator limits only, and the env from the container spec; ``extendPodSpecPatch`` in k8s.go adds node
    selector, tolerations, Secrets and ConfigMaps as env (``valueFrom``) and volumes, and required node affinity
    terms from the Kubernetes executor config; ``driver.Container`` marshals its Go ``TaskConfig`` struct with
    encoding/json: Kubernetes API field names, quantities as strings, empty fields left out, unset ones null)."""
    container = spec["deploymentSpec"]["executors"][executor]["container"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor]
    res = container.get("resources") or {}
    limits = {name: res[key] for key, name in (("resourceCpuLimit", "cpu"), ("resourceMemoryLimit", "memory"))
              if key in res}
    requests = {name: res[key] for key, name in (("resourceCpuRequest", "cpu"), ("resourceMemoryRequest", "memory"))
                if key in res}
    accelerator = res.get("accelerator") or {}
    if accelerator.get("resourceType") and accelerator.get("resourceCount"):
        limits[accelerator["resourceType"]] = accelerator["resourceCount"]
    env = [{"name": e["name"], "value": e["value"]} for e in container.get("env") or []]
    for secret in k8s.get("secretAsEnv") or []:
        for key in secret["keyToEnv"]:
            ref = {"name": secret["secretName"], "key": key["secretKey"]}
            if "optional" in secret:
                ref["optional"] = secret["optional"]
            env.append({"name": key["envVar"], "valueFrom": {"secretKeyRef": ref}})
    maps = k8s.get("configMapAsVolume") or []
    terms = [{"matchExpressions": term["matchExpressions"]} for term in k8s.get("nodeAffinity") or []
             if "weight" not in term]
    return {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}
        if terms else None,
        "tolerations": [{k: t[k] for k in ("key", "operator", "value", "effect", "tolerationSeconds") if t.get(k)}
                        for t in k8s.get("tolerations") or []] or None,
        "nodeSelector": (k8s.get("nodeSelector") or {}).get("labels"),
        "env": env,
        "volumes": [{"name": m["configMapName"], "configMap": {"name": m["configMapName"],
                                                              "optional": m.get("optional", False)}}
                    for m in maps] or None,
        "volumeMounts": [{"name": m["configMapName"], "mountPath": m["mountPath"]} for m in maps] or None,
        "resources": {k: v for k, v in (("limits", limits), ("requests", requests)) if v},
    }


def pytorchjob_pod(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]


def trainjob_pod(cluster, job: dict) -> dict:
    """The pod Trainer makes from the stage's runtime and the TrainJob."""
    return trainjob.effective_pod(trainjob.build_runtime("sft", cluster), job)


POD = {"pytorchjob": lambda cluster, job: pytorchjob_pod(job), "trainjob": trainjob_pod}


def test_the_compiled_step_declares_the_passthroughs_and_takes_the_task_config(tmp_path):
    spec, platform = compile_gpu_step(tmp_path)
    component = spec["components"]["comp-sft"]
    assert component["inputDefinitions"]["parameters"]["task_config"] == {"isOptional": True,
                                                                        "parameterType": "TASK_CONFIG"}
    assert component["taskConfigPassthroughs"] == [
        {"field": "RESOURCES"}, {"field": "KUBERNETES_NODE_SELECTOR"}, {"field": "KUBERNETES_TOLERATIONS"},
        {"field": "KUBERNETES_AFFINITY"}, {"field": "ENV", "applyToTask": True},
        {"field": "KUBERNETES_VOLUMES", "applyToTask": True}]
    # what the driver then forwards instead of applying it to the step's pod
    container = spec["deploymentSpec"]["executors"]["exec-sft"]["container"]
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert container["resources"]["resourceCpuLimit"] == "8"
    executor = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-sft"]
    assert executor["nodeSelector"] == {"labels": {"pool": "a100"}}
    assert executor["tolerations"][0]["key"] == "dedicated"


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_a_kfp_tasks_gpus_resources_placement_and_env_reach_the_jobs_pods(tmp_path, backend, caplog):
    spec, platform = compile_gpu_step(tmp_path)
    task_config = driver_task_config(spec, platform, "exec-sft")
    assert task_config["resources"] == {"limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"},
                                        "requests": {"cpu": "4", "memory": "32Gi"}}
    with caplog.at_level(logging.WARNING):
        cluster, job = render(*ARGS, backend=backend, task_config=task_config)
    assert crd_errors(job) == []
    pod = POD[backend](cluster, job)
    assert pss_restricted_errors({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                  "spec": pod["spec"]}) == []
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "2"},
                                      "limits": {"memory": "64Gi", "cpu": "8", "nvidia.com/gpu": "2"}}
    assert "--nproc_per_node=2" in container["command"]  # one training process per GPU
    if backend == "trainjob":
        assert job["spec"]["trainer"]["resourcesPerNode"] == container["resources"]
        assert job["spec"]["trainer"]["numProcPerNode"] == 2
    assert pod["spec"]["nodeSelector"] == {"pool": "a100"}
    assert pod["spec"]["tolerations"] == [  # the GPU taint's, as for cluster.gpus_per_node, then the task's
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]
    assert pod["spec"]["affinity"] == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [ZONE]}]}}}
    env = {e["name"]: e for e in container["env"]}
    assert env["NCCL_DEBUG"] == {"name": "NCCL_DEBUG", "value": "INFO"}
    # Secrets reach the job only from the deployment: the step's own kuberlhf-s3 env is the job's anyway, hf's is not
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "kuberlhf-s3"
    assert "HF_TOKEN" not in env and "HF_TOKEN not forwarded" in caplog.text
    assert "volumes" not in caplog.text  # the step's kuberlhf-config mount is the job's own too


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_without_task_settings_the_job_is_the_one_of_the_cluster_settings(backend):
    """A kfp.local run, or a task that sets nothing: the step's TaskConfig is empty and changes nothing."""
    from kfp import dsl

    from kuberlhf.k8s.taskconfig import cluster_values
    from kuberlhf.workflow.steps import task_config_dict

    empty = task_config_dict(dsl.TaskConfig())
    assert empty == {"affinity": None, "tolerations": None, "nodeSelector": None, "env": None, "volumes": None,
                     "volumeMounts": None, "resources": None}
    assert cluster_values(empty) == {} and cluster_values({"resources": {}, "env": []}) == {}
    assert render(*ARGS, backend=backend, task_config=empty) == render(*ARGS, backend=backend)


def test_the_run_beats_the_task_which_beats_the_cluster_file(tmp_path, monkeypatch):
    mounted = tmp_path / "cluster.yaml"
    mounted.write_text(yaml.safe_dump({
        "cpu": "16", "memory": "128Gi", "gpus_per_node": 8, "procs_per_node": 8, "gpu_product": "a100",
        "node_selector": {"pool": "general", "team": "ml"}, "tolerations": [{"key": "spot", "operator": "Exists"}],
        "env": {"LOG_LEVEL": "info", "NCCL_DEBUG": "WARN"},
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}}))
    monkeypatch.setenv("KUBERLHF_CLUSTER_CONFIG", str(mounted))
    task = {"resources": {"limits": {"nvidia.com/gpu": "4", "memory": "256Gi"}},
            "nodeSelector": {"pool": "a100-pool"}, "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [ZONE]}]}}}}
    overrides = [*ARGS[2], "cluster.procs_per_node=2", "cluster.memory_limit=512Gi"]
    cluster, _ = render(ARGS[0], ARGS[1], overrides, *ARGS[3:], task_config=task)
    assert cluster.gpus_per_node == 4  # the task's, over the file's 8
    assert cluster.procs_per_node == 2 and cluster.memory_limit == "512Gi"  # the run's, over the file's and task's
    assert (cluster.cpu, cluster.memory, cluster.gpu_product) == ("16", "128Gi", "a100")  # the file's: nobody else
    assert cluster.node_selector == {"pool": "a100-pool", "team": "ml"}
    assert cluster.tolerations == [{"key": "spot", "operator": "Exists"}, {"key": "dedicated", "operator": "Exists"}]
    assert cluster.env == {"LOG_LEVEL": "info", "NCCL_DEBUG": "INFO"}
    assert set(cluster.affinity) == {"podAntiAffinity", "nodeAffinity"}
    run_selector = render(ARGS[0], ARGS[1], [*ARGS[2], "cluster.node_selector.pool=h100-pool"], *ARGS[3:],
                          task_config=task)[0]
    assert run_selector.node_selector == {"pool": "h100-pool", "team": "ml"}
    assert run_selector.procs_per_node == 4  # without the run's: one process per GPU of the task's


@pytest.mark.parametrize("task_config, message", [
    ({"resources": {"limits": {"cpu": "lots"}}}, "task config resources.limits.cpu (set_cpu_limit): not a Kubernetes"),
    ({"resources": {"requests": {"memory": "8 GB"}}}, "task config resources.requests.memory (set_memory_request)"),
    ({"resources": {"limits": {"amd.com/gpu": "1"}}},
     "task config resources.limits.amd.com/gpu (set_accelerator_type/limit): the job's pods take cpu, memory and "
     "nvidia.com/gpu"),
    ({"resources": {"limits": {"nvidia.com/gpu": "500m"}}},
     "task config resources.limits.nvidia.com/gpu (set_accelerator_type/limit): a whole number of GPUs"),
    ({"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "2"}}},
     "task config resources.limits.nvidia.com/gpu (set_accelerator_type/limit): differs from"),
    ({"env": [{"name": "HF_TOKEN", "value": "hf_x"}]},
     "task config env.HF_TOKEN (set_env_variable): 'HF_TOKEN' looks like a credential"),
    ({"env": [{"name": "AWS_ENDPOINT_URL_S3", "value": "http://elsewhere"}]},
     "task config env.AWS_ENDPOINT_URL_S3 (set_env_variable): 'AWS_ENDPOINT_URL_S3' is set by the deployment"),
    ({"env": [{"name": "WANDB_BASE_URL", "value": "http://elsewhere"}]}, "task config env.WANDB_BASE_URL"),
    ({"env": [{"name": "PET_NNODES", "value": "9"}]}, "task config env.PET_NNODES"),
    ({"env": [{"name": "KUBERLHF_FAILPOINTS", "value": "x"}]}, "task config env.KUBERLHF_FAILPOINTS"),
    ({"env": [{"name": "DEBUG_KEYS", "value": "$(AWS_SECRET_ACCESS_KEY)"}]},
     "task config env.DEBUG_KEYS (set_env_variable): '$(' is expanded by the kubelet"),
    ({"env": [{"name": "1BAD", "value": "x"}]}, "task config env.1BAD (set_env_variable): '1BAD' is not a valid"),
    ({"nodeSelector": {"pool": 1}}, "task config nodeSelector.pool (kubernetes.add_node_selector): values must be"),
    ({"tolerations": [{"key": "a", "tolerationSecs": 5}]},
     "task config tolerations[0] (kubernetes.add_toleration): unknown field(s) ['tolerationSecs']"),
    ({"affinity": {"nodeAfinity": {}}}, "task config affinity.nodeAfinity (kubernetes.add_node_affinity)"),
    ({"resources": {"limits": {"memory": "4Gi"}}},  # below the default request, 8Gi
     "config key 'cluster.memory_limit': 4Gi is below the request cluster.memory=8Gi (Kubernetes refuses such a "
     "pod) (the step's KFP task config set cluster.memory_limit)"),
])
def test_a_bad_task_setting_fails_before_anything_is_created_naming_the_field(task_config, message):
    with pytest.raises(ConfigError) as err:
        render(*ARGS, backend="pytorchjob", task_config=task_config)
    assert message in str(err.value)
