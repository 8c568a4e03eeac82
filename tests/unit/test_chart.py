"""The Helm chart (charts/kuberlhf), rendered and linted by Helm's own engine (helm-python-sdk).

Every render (defaults and each ci/*-values.yaml) passes ``helm lint --strict``, strict schema
validation for the oldest and newest supported Kubernetes, and the restricted Pod Security
Standard; the launcher's Role holds exactly the contract's verbs; values that break the schema
are refused with a message naming the key; the Kubeflow Trainer runtimes are exactly what
``kuberlhf.k8s.trainjob.build_runtime`` renders from the chart's own cluster.yaml.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from deploy_check import (
    BAD_VALUES,
    CHART,
    CI_VALUES,
    ROOT,
    helm_lint,
    lint_errors,
    localqueue_errors,
    main,
    object_errors,
    objects,
    read_values,
    render,
    schema_refusal,
    undocumented_values,
    without_helm_labels,
)
from k8schecks import pss_restricted_errors, validate_all

CASES = [None, *[f"ci/{p.name}" for p in CI_VALUES]]
# the cases that render the Kubeflow Trainer runtimes (trainer.runtimes: true)
RUNTIME_CASES = [case for case in CASES if read_values(case).get("trainer", {}).get("runtimes") is True]
JOB_VERBS = {"create", "get", "list", "watch", "delete"}
LAUNCHER_RULES = {("kubeflow.org", "pytorchjobs"): JOB_VERBS, ("trainer.kubeflow.org", "trainjobs"): JOB_VERBS,
                  ("trainer.kubeflow.org", "trainingruntimes"): {"get"},
                  ("", "pods"): {"get", "list"}, ("", "pods/log"): {"get", "list"}, ("", "events"): {"list"}}
RUNTIME_KINDS = ("TrainingRuntime", "ClusterTrainingRuntime")
TRAINER_API = "trainer.kubeflow.org/v1alpha1"
CREDENTIAL = re.compile(r"(SECRET|PASSWORD|TOKEN|API_KEY|ACCESS_KEY)", re.IGNORECASE)


@functools.cache
def _rendered(case: str | None) -> dict[str, str]:
    return render(read_values(case))


def objs(case: str | None, with_tests: bool = True) -> list[dict]:
    return copy.deepcopy(objects(_rendered(case), with_tests))


def find(items: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in items if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def containers(obj: dict) -> list[dict]:
    from k8schecks import pod_specs

    return [c for _, spec in pod_specs(obj) for key in ("initContainers", "containers") for c in spec.get(key) or []]


def test_ci_values_files_exist():
    assert {p.name for p in CI_VALUES} >= {"default-values.yaml", "dev-values.yaml", "gpu-values.yaml",
                                           "kfp-values.yaml"}


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(case):
    assert lint_errors(read_values(case)) == []


@pytest.mark.parametrize("case", CASES)
def test_every_object_validates_and_pods_are_restricted(case):
    items = objs(case)
    assert items, "nothing rendered"
    assert validate_all([o for o in items if o["kind"] != "LocalQueue"]) == []
    assert [e for o in items for e in pss_restricted_errors(o)] == []
    assert object_errors(items) == []


def test_validators_catch_bad_objects():
    deployment = find(objs("ci/dev-values.yaml"), "Deployment", "kuberlhf-s3")[0]
    privileged = copy.deepcopy(deployment)
    privileged["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    assert any("privileged" in e for e in pss_restricted_errors(privileged))
    root = copy.deepcopy(deployment)
    del root["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    del root["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"]
    assert any("runAsNonRoot" in e for e in pss_restricted_errors(root))
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert validate_all([typo]) != []
    queue = find(objs("ci/gpu-values.yaml"), "LocalQueue")[0]
    assert localqueue_errors(queue) == []
    queue["spec"]["clusterQueu"] = queue["spec"].pop("clusterQueue")
    assert localqueue_errors(queue) != []


@pytest.mark.parametrize("case", CASES)
def test_launcher_role_has_exactly_the_contract_verbs(case):
    items = objs(case)
    (role,) = find(items, "Role")
    assert role["metadata"]["name"] == "kuberlhf-launcher"
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no nonResourceURLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == LAUNCHER_RULES
    (binding,) = find(items, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kuberlhf-launcher"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kuberlhf-launcher", "namespace": "kuberlhf"}]
    if read_values(case).get("trainer", {}).get("runtimeKind") != "ClusterTrainingRuntime":
        assert find(items, "ClusterRole") == [] and find(items, "ClusterRoleBinding") == []
        return
    # ClusterTrainingRuntimes: get of the four runtimes by name, for this namespace's launcher only
    from kuberlhf.k8s.trainjob import runtime_name, training_images

    (cluster_role,) = find(items, "ClusterRole")
    assert cluster_role["metadata"]["name"] == "kuberlhf-launcher-kuberlhf"
    assert cluster_role["rules"] == [{"apiGroups": ["trainer.kubeflow.org"], "resources": ["clustertrainingruntimes"],
                                      "resourceNames": sorted(runtime_name(i) for i in training_images()),
                                      "verbs": ["get"]}]
    (cluster_binding,) = find(items, "ClusterRoleBinding")
    assert cluster_binding["metadata"]["name"] == "kuberlhf-launcher-kuberlhf"
    assert cluster_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                          "name": "kuberlhf-launcher-kuberlhf"}
    assert cluster_binding["subjects"] == binding["subjects"]


def test_service_accounts():
    items = objs(None)
    assert find(items, "ServiceAccount", "kuberlhf-launcher")[0]["automountServiceAccountToken"] is True
    assert find(items, "ServiceAccount", "kuberlhf-train")[0]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("case", [None, "ci/default-values.yaml", "ci/kfp-values.yaml", "ci/gpu-values.yaml"])
def test_no_secret_without_dev_values(case):
    assert find(objs(case), "Secret") == []


@pytest.mark.parametrize("case", CASES)
def test_credentials_reach_pods_only_from_secrets(case):
    for obj in objs(case):
        for c in containers(obj):
            for env in c.get("env") or []:
                if CREDENTIAL.search(env["name"]) and not env["name"].endswith("_PATH"):
                    assert "value" not in env, f"{obj['kind']}/{c['name']}: literal {env['name']}"
                    assert "secretKeyRef" in env["valueFrom"], env


def test_dev_values_create_the_secrets_and_store():
    items = objs("ci/dev-values.yaml")
    values = read_values("ci/dev-values.yaml")
    (s3,) = find(items, "Secret", "kuberlhf-s3")
    assert s3["stringData"] == {"AWS_ACCESS_KEY_ID": values["storage"]["accessKeyId"],
                                "AWS_SECRET_ACCESS_KEY": values["storage"]["secretAccessKey"]}
    assert set(find(items, "Secret", "kuberlhf-wandb")[0]["stringData"]) == {"WANDB_API_KEY"}
    (deployment,) = find(items, "Deployment", "kuberlhf-s3")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert re.fullmatch(r"chrislusf/seaweedfs:\d+\.\d+", container["image"])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]} == {
        "AWS_ACCESS_KEY_ID": "kuberlhf-s3", "AWS_SECRET_ACCESS_KEY": "kuberlhf-s3"}
    assert "-bucket=kuberlhf" in container["args"] and "-s3.port=8333" in container["args"]
    assert find(items, "PersistentVolumeClaim", "kuberlhf-s3")
    (service,) = find(items, "Service", "kuberlhf-s3")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (policy,) = find(items, "NetworkPolicy", "kuberlhf")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {}}]}]
    cluster = yaml.safe_load(find(items, "ConfigMap", "kuberlhf-config")[0]["data"]["cluster.yaml"])
    assert cluster["storage_endpoint"] == "http://kuberlhf-s3.kuberlhf.svc:8333"
    assert cluster["wandb_secret"] == "kuberlhf-wandb"


def test_dev_store_without_persistence_uses_empty_dir():
    items = objects(render({"storage": {"createSecret": True, "accessKeyId": "a", "secretAccessKey": "b"},
                            "devStore": {"enabled": True, "persistence": {"enabled": False}}}))
    assert find(items, "PersistentVolumeClaim") == []
    volumes = find(items, "Deployment")[0]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "emptyDir": {}} in volumes


def test_created_secret_needs_its_keys():
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match="storage.accessKeyId"):
        render({"storage": {"createSecret": True}})


@pytest.mark.parametrize("values, expected", BAD_VALUES, ids=[str(v) for v, _ in BAD_VALUES])
def test_schema_refuses_bad_values_naming_the_key(values, expected):
    message = schema_refusal(values)
    assert expected in message, message
    assert any(expected in e for e in lint_errors(values))


def test_schema_refusal_check_fails_on_good_values():
    assert schema_refusal({"cluster": {"nodes": 2}}) == ""


def test_schema_forbids_unknown_keys_at_every_level():
    def walk(schema, path):
        if schema.get("type") == "object" and "properties" in schema:
            assert schema.get("additionalProperties") is False, path
            for key, sub in schema["properties"].items():
                walk(sub, f"{path}.{key}")

    import json

    walk(json.loads((CHART / "values.schema.json").read_text()), "<root>")


def test_helm_lint_command_fails_on_a_values_file_that_breaks_the_schema(tmp_path, capsys):
    bad = tmp_path / "bad-values.yaml"
    bad.write_text("cluster:\n  nodes: 2\n  gpuz: 8\n")
    assert helm_lint([str(bad)]) is False
    assert main(["helm-lint", "--values", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "FAIL bad-values.yaml" in out and "'gpuz' not allowed" in out
    good = tmp_path / "good-values.yaml"
    good.write_text("cluster:\n  nodes: 2\n")
    assert main(["helm-lint", "--values", str(good)]) == 0


def test_every_value_is_documented():
    assert undocumented_values() == []
    assert undocumented_values("# -- a documented\na: 1\nb:\n  # -- c documented\n  c: 2\n") == ["b"]


def test_configmap_holds_the_repository_configs():
    (cm,) = find(objs(None), "ConfigMap", "kuberlhf-config")
    expected = {f"{p.parent.name}.{p.name}": p.read_text() for p in ROOT.glob("configs/*/*.yaml")}
    assert expected and {k: v for k, v in cm["data"].items() if k != "cluster.yaml"} == expected


def test_configs_link_survives_packaging(tmp_path):
    import helm_python

    archive = helm_python.package(CHART, destination=tmp_path)
    with helm_python.Chart.load(archive) as chart:
        rendered = chart.render({}, name="kuberlhf", namespace="kuberlhf")
    (cm,) = find(objects(rendered), "ConfigMap")
    assert cm["data"]["ppo.demo.yaml"] == (ROOT / "configs" / "ppo" / "demo.yaml").read_text()


@pytest.mark.parametrize("case", CASES)
def test_cluster_yaml_is_a_valid_cluster_config(case, monkeypatch, tmp_path):
    from kuberlhf.k8s.spec import load_cluster

    monkeypatch.setenv("KUBERLHF_CLUSTER_CONFIG", str(tmp_path / "absent.yaml"))
    (cm,) = find(objs(case), "ConfigMap", "kuberlhf-config")
    data = yaml.safe_load(cm["data"]["cluster.yaml"])
    cluster = load_cluster(data)
    assert cluster.namespace == "kuberlhf" and cluster.service_account == "kuberlhf-train"
    values = read_values(case).get("cluster", {})
    assert cluster.gpu_product == values.get("gpuProduct", "")
    assert cluster.kueue_queue == values.get("kueueQueue", "")
    assert cluster.storage_secret == "kuberlhf-s3"
    assert cluster.termination_grace_period_seconds == values.get("terminationGracePeriodSeconds", 300)


def test_cluster_values_map_to_cluster_config_keys():
    from kuberlhf.k8s.spec import ClusterConfig

    values = read_values(CHART / "values.yaml")["cluster"]
    snake = {re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key) for key in values}
    assert snake <= set(ClusterConfig.__dataclass_fields__), snake - set(ClusterConfig.__dataclass_fields__)


def test_images_agree_with_kuberlhf_images(monkeypatch):
    from kuberlhf import __version__, images
    from kuberlhf.k8s import trainjob

    monkeypatch.delenv("KUBERLHF_IMAGE_REGISTRY", raising=False)
    monkeypatch.delenv("KUBERLHF_IMAGE_TAG", raising=False)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    values = read_values(CHART / "values.yaml")
    assert values["image"]["registry"] == images.DEFAULT_REGISTRY and values["image"]["tag"] == __version__
    launcher = images.image_ref("launcher")
    assert launcher == f"ghcr.io/kuberlhf/kuberlhf-launcher:{__version__}"
    used = {c["image"] for case in CASES for o in objs(case) for c in containers(o)}
    training = {images.image_ref(image) for image in trainjob.training_images()}  # the Trainer runtimes'
    assert used == {launcher, *training, f"chrislusf/seaweedfs:{values['devStore']['image']['tag']}",
                    f"heartexlabs/label-studio:{values['devLabelStudio']['image']['tag']}"}
    # the dev Label Studio is the version the tests run
    assert f"label-studio=={values['devLabelStudio']['image']['tag']}" in (ROOT / "requirements/label-studio.in").read_text()
    assert not any(image.endswith(":latest") or ":" not in image for image in used)


def test_upload_job_runs_pipeline_upload_after_install_and_upgrade():
    assert find(objs(None), "Job") == []
    host = read_values("ci/kfp-values.yaml")["pipelines"]["host"]
    (job,) = find(objs("ci/kfp-values.yaml"), "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    (container,) = containers(job)
    assert container["command"] + container["args"] == ["kuberlhf", "pipeline", "upload", "--host", host]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "kuberlhf-launcher"


@pytest.mark.parametrize("case", CASES)
def test_standard_labels(case):
    for obj in objs(case):
        labels = obj["metadata"]["labels"]
        assert labels["helm.sh/chart"] == "kuberlhf-0.1.0"
        assert {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by", "app.kubernetes.io/component"} <= set(labels), obj["kind"]


def test_template_files_are_dashed_and_hold_one_resource_each():
    counts = {}
    for case in CASES:
        for path, text in _rendered(case).items():
            if path.endswith(".yaml"):
                assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*\.yaml", Path(path).name), path
                counts[path] = max(counts.get(path, 0), len(objects({path: text})))
    assert set(counts.values()) == {1}, counts  # each template renders one object (with some ci values)


# ---------------------------------------------------------------- helm test
def _helm_test_script():
    spec = importlib.util.spec_from_file_location("helm_test_script", CHART / "files" / "helm-test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _allowed_by(role: dict):
    """An RBAC evaluator for one Role (what the API server's SelfSubjectAccessReview answers)."""
    def allowed(group, resource, sub, verb):
        full = f"{resource}/{sub}" if sub else resource
        return any(group in r["apiGroups"] and full in r["resources"] and verb in r["verbs"] for r in role["rules"])
    return allowed


def test_helm_test_says_when_the_cluster_dns_does_not_answer():
    script = _helm_test_script()

    def no_dns(name, port):
        raise OSError(-3, "Temporary failure in name resolution")

    assert script.dns_failure(lambda name, port: [("ok",)]) == ""
    assert script.dns_failure(no_dns) == ("kubernetes.default.svc does not resolve ([Errno -3] Temporary failure in "
                                          "name resolution): the job's pods would not find each other")


def test_helm_test_pod_runs_the_check_script():
    (pod,) = [o for o in objs(None) if o["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["serviceAccountName"] == "kuberlhf-launcher"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-c"]
    assert container["args"] == [(CHART / "files" / "helm-test.py").read_text()]
    compile(container["args"][0], "helm-test.py", "exec")


def test_helm_test_script_checks_the_rendered_role():
    script = _helm_test_script()
    (role,) = find(objs(None), "Role")
    assert script.rbac_failures(_allowed_by(role)) == []
    def rule(r: dict, resource: str) -> dict:
        return next(x for x in r["rules"] if resource in x["resources"])

    wider = copy.deepcopy(role)
    rule(wider, "pods")["verbs"].append("delete")
    rule(wider, "trainingruntimes")["verbs"].append("list")
    assert script.rbac_failures(_allowed_by(wider)) == ["list trainingruntimes.trainer.kubeflow.org: allowed, expected "
                                                        "refused", "delete pods: allowed, expected refused"]
    narrower = copy.deepcopy(role)
    rule(narrower, "pytorchjobs")["verbs"].remove("watch")
    rule(narrower, "trainjobs")["verbs"].remove("create")
    assert script.rbac_failures(_allowed_by(narrower)) == [
        "watch pytorchjobs.kubeflow.org: refused, expected allowed",
        "create trainjobs.trainer.kubeflow.org: refused, expected allowed"]


def test_helm_test_script_checks_the_cluster_role_of_cluster_runtimes():
    script = _helm_test_script()
    (pod,) = [o for o in objs("ci/trainjob-cluster-values.yaml") if o["kind"] == "Pod"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["RUNTIME_KIND"] == "ClusterTrainingRuntime"
    (role,) = find(objs("ci/trainjob-cluster-values.yaml"), "ClusterRole")

    def allowed_by(cluster_role):
        def allowed(name, verb):
            return any("clustertrainingruntimes" in r["resources"] and verb in r["verbs"]
                       and (not r.get("resourceNames") or name in r["resourceNames"]) for r in cluster_role["rules"])
        return allowed

    assert script.cluster_runtime_failures(allowed_by(role)) == []
    assert list(script.RUNTIMES) == role["rules"][0]["resourceNames"]
    any_name = copy.deepcopy(role)
    del any_name["rules"][0]["resourceNames"]
    assert script.cluster_runtime_failures(allowed_by(any_name)) == [
        "get clustertrainingruntimes.trainer.kubeflow.org/torch-distributed: allowed, expected refused"]


def test_helm_test_script_checks_the_object_store(s3_server, monkeypatch, tmp_path):
    script = _helm_test_script()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.admin.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.admin.secret_access_key)
    assert script.s3_failure() == ""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    assert "SignatureDoesNotMatch" in script.s3_failure()



def test_dev_label_studio_gives_the_pipeline_its_address_and_key_from_one_secret():
    from kuberlhf.workflow.pipelines.rlhf_human import LABEL_STUDIO_KEYS, LABEL_STUDIO_SECRET

    items = objs("ci/dev-values.yaml")
    (secret,) = find(items, "Secret", LABEL_STUDIO_SECRET)
    assert set(LABEL_STUDIO_KEYS.values()) <= set(secret["stringData"])
    assert secret["stringData"]["LABEL_STUDIO_URL"] == "http://kuberlhf-label-studio.kuberlhf.svc:8080"
    (deployment,) = find(items, "Deployment", "kuberlhf-label-studio")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert all("valueFrom" in e for e in container["env"] if e["name"].startswith("LABEL_STUDIO_")
               and e["name"] != "LABEL_STUDIO_BASE_DATA_DIR"), "a credential as a literal value"
    assert "--enable-legacy-api-token" in container["args"] and "0.0.0.0" in container["args"]
    (service,) = find(items, "Service", "kuberlhf-label-studio")
    assert service["spec"]["ports"][0]["port"] == 8080
    assert find(items, "PersistentVolumeClaim", "kuberlhf-label-studio")
    assert not find(objs(None), "Deployment", "kuberlhf-label-studio")  # off by default
    with pytest.raises(Exception, match="devLabelStudio.apiToken"):
        render({"devLabelStudio": {"enabled": True, "username": "a@b.c", "password": "p"}})


# ---------------------------------------------------------------- network policies
# A training pod's labels are the PyTorchJob builder's template labels plus the Training Operator's own.
NS = "kuberlhf"
API_SERVER = "34.120.7.9"  # a public address, as the endpoint of a managed control plane often is
LAUNCH_VALUES = {"networkPolicy": {"apiServer": {"cidrs": [f"{API_SERVER}/32"], "port": 443}}}


def training_pod(job: str = "sft-run-1", role: str = "Master", namespace: str = NS) -> dict:
    from k8schecks import endpoint

    from kuberlhf.k8s.pytorchjob import PORT, PORT_NAME, build_pytorchjob
    from kuberlhf.k8s.spec import ClusterConfig

    built = build_pytorchjob("sft", "configs/sft/demo.yaml", [], ClusterConfig(nodes=2), job)
    labels = {**built["spec"]["pytorchReplicaSpecs"][role]["template"]["metadata"]["labels"],
              "training.kubeflow.org/job-name": job, "training.kubeflow.org/operator-name": "pytorchjob-controller",
              "training.kubeflow.org/replica-type": role.lower(), "training.kubeflow.org/replica-index": "0"}
    return endpoint(namespace, labels, ports={PORT_NAME: PORT})


def step_pod(launches: bool) -> dict:
    """A KFP step pod of a kuberlhf pipeline; the steps that can launch a PyTorchJob carry the launcher label."""
    from k8schecks import endpoint

    from kuberlhf.workflow.pipelines.cluster import LAUNCHER_POD_LABELS

    labels = {"pipelines.kubeflow.org/v2_component": "true", "workflows.argoproj.io/workflow": "rlhf-ppo-x"}
    return endpoint(NS, {**labels, **(LAUNCHER_POD_LABELS if launches else {})})


def policies(values: dict | str | None) -> list[dict]:
    items = objs(values) if values is None or isinstance(values, str) else objects(render(values))
    return find(items, "NetworkPolicy")


def dns_pod():
    from k8schecks import endpoint

    return endpoint("kube-system", {"k8s-app": "kube-dns"})


@pytest.mark.parametrize("case", CASES)
def test_training_pods_are_isolated_both_ways(case):
    from k8schecks import selector_matches

    pod = training_pod()
    selecting = [p for p in policies(case) if selector_matches(p["spec"]["podSelector"], pod["labels"])]
    assert {t for p in selecting for t in p["spec"]["policyTypes"]} == {"Ingress", "Egress"}


@pytest.mark.parametrize("case", CASES)
def test_training_pods_accept_only_pods_of_their_jobs_namespace(case):
    from k8schecks import endpoint, network_allows

    pols, master, worker = policies(case), training_pod(), training_pod(role="Worker")
    assert network_allows(pols, worker, master, 23456)  # the rendezvous store (c10d) on the master
    assert network_allows(pols, master, worker, 41234)  # NCCL / gloo connections on ephemeral ports
    outsiders = [training_pod(namespace="team-b"), step_pod(launches=False), step_pod(launches=True),
                 endpoint(NS, {"app": "jupyter"}), endpoint("kubeflow", {"app": "ml-pipeline"}),
                 endpoint(ip="10.2.3.4"), endpoint(ip="8.8.8.8")]
    for other in outsiders:
        assert not network_allows(pols, other, master, 23456), other
        assert not network_allows(pols, other, worker, 41234), other


@pytest.mark.parametrize("case", CASES)
def test_training_pods_reach_dns_and_https_but_not_the_cluster(case):
    from k8schecks import endpoint, network_allows

    pols, pod = policies(case), training_pod()
    assert network_allows(pols, pod, dns_pod(), 53, "UDP") and network_allows(pols, pod, dns_pod(), 53, "TCP")
    assert not network_allows(pols, pod, dns_pod(), 8080)
    assert not network_allows(pols, pod, endpoint("kube-system", {"app": "other"}), 53, "UDP")
    assert network_allows(pols, pod, endpoint(ip="52.218.1.10"), 443)  # AWS S3, the HF Hub, W&B
    for ip, port in (("8.8.8.8", 22), ("52.218.1.10", 80), ("10.96.0.1", 443), ("10.1.2.3", 23456),
                     ("172.20.0.5", 443), ("192.168.1.1", 443), ("169.254.169.254", 80), ("169.254.169.254", 443)):
        assert not network_allows(pols, pod, endpoint(ip=ip), port), (ip, port)
    for other in (step_pod(launches=False), endpoint(NS, {"app": "jupyter"}), endpoint("kubeflow", {"app": "x"})):
        assert not network_allows(pols, pod, other, 443) and not network_allows(pols, pod, other, 8888)


def test_training_pods_reach_the_dev_store():
    from k8schecks import endpoint, network_allows

    items = objs("ci/dev-values.yaml")
    (store,) = find(items, "Deployment", "kuberlhf-s3")
    store_pod = endpoint(NS, store["spec"]["template"]["metadata"]["labels"], ports={"s3": 8333})
    pols = find(items, "NetworkPolicy")
    assert network_allows(pols, training_pod(), store_pod, 8333)
    assert network_allows(pols, step_pod(launches=False), store_pod, 8333)  # the pipeline steps read and write too
    assert not network_allows(pols, training_pod(), store_pod, 22)
    assert not network_allows(pols, endpoint("team-b", {}), store_pod, 8333)
    assert not network_allows(policies(None), training_pod(), store_pod, 8333)  # no dev store: no rule for it


def test_object_store_and_public_https_are_set_by_values():
    from k8schecks import endpoint, network_allows

    values = {"networkPolicy": {"publicHttps": False, "objectStore": {
        "cidrs": ["10.50.0.0/16"], "ports": [9000],
        "peers": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}]}}}
    pols, pod = policies(values), training_pod()
    assert network_allows(pols, pod, endpoint(ip="10.50.3.4"), 9000)
    assert network_allows(pols, pod, endpoint("minio", {"app": "minio"}), 9000)
    assert not network_allows(pols, pod, endpoint(ip="10.50.3.4"), 443)
    assert not network_allows(pols, pod, endpoint(ip="52.218.1.10"), 443)  # publicHttps off
    assert not network_allows(pols, pod, endpoint(ip="10.51.0.1"), 9000)
    assert network_allows(pols, pod, dns_pod(), 53, "UDP")
    assert validate_all(pols) == []


def test_no_reachable_object_store_is_refused():
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match="networkPolicy.objectStore"):
        render({"networkPolicy": {"publicHttps": False}})


def test_only_launcher_steps_reach_the_api_server():
    from k8schecks import endpoint, network_allows

    assert not find(objs(None), "NetworkPolicy", "kuberlhf-launcher")  # no API server address: steps unrestricted
    items = objects(render(LAUNCH_VALUES))
    assert validate_all(items) == []
    pols, api = find(items, "NetworkPolicy"), endpoint(ip=API_SERVER)
    launcher = step_pod(launches=True)
    assert network_allows(pols, launcher, api, 443)
    assert not network_allows(pols, training_pod(), api, 443)  # outside the cluster, but excluded from publicHttps
    assert not network_allows(pols, launcher, endpoint(ip=API_SERVER), 22)
    assert network_allows(pols, launcher, endpoint("kubeflow", {"app": "ml-pipeline"}), 8888)  # KFP's services
    assert network_allows(pols, launcher, dns_pod(), 53, "UDP")
    assert network_allows(pols, launcher, endpoint(ip="52.218.1.10"), 443)  # a local-mode step trains in the pod
    assert not network_allows(pols, launcher, endpoint(ip="10.1.2.3"), 443)
    assert not network_allows(pols, launcher, training_pod(), 23456)


def test_chart_pods_policy_leaves_training_pods_to_theirs():
    from k8schecks import selector_matches

    (chart_pods,) = find(objs(None), "NetworkPolicy", "kuberlhf")
    assert not selector_matches(chart_pods["spec"]["podSelector"], training_pod()["labels"])
    assert not selector_matches(chart_pods["spec"]["podSelector"], step_pod(launches=True)["labels"])


# ---------------------------------------------------------------- hardening
DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_images_are_referenced_by_digest_when_one_is_set():
    values = {**read_values("ci/dev-values.yaml"), "image": {"registry": "ghcr.io/kuberlhf", "tag": "0.1.0",
                                                             "pullPolicy": "IfNotPresent", "digest": DIGEST}}
    values["devStore"] = {**values["devStore"], "image": {"repository": "chrislusf/seaweedfs", "tag": "4.48",
                                                          "digest": DIGEST}}
    values["devLabelStudio"] = {**values["devLabelStudio"], "image": {"repository": "heartexlabs/label-studio",
                                                                      "tag": "1.23.2", "digest": DIGEST}}
    items = objects(render({**values, "pipelines": {"host": "http://ml-pipeline.kubeflow.svc:8888"}}))
    used = {c["image"] for o in items for c in containers(o)}
    assert used == {f"ghcr.io/kuberlhf/kuberlhf-launcher@{DIGEST}", f"chrislusf/seaweedfs@{DIGEST}",
                    f"heartexlabs/label-studio@{DIGEST}"}
    assert validate_all(items) == []
    assert all("@" not in c["image"] for o in objs("ci/dev-values.yaml") for c in containers(o))  # no digest: tags


@pytest.mark.parametrize("case", CASES)
def test_only_pods_that_call_the_api_mount_a_token(case):
    """Every chart pod says whether it mounts a token; only the helm test pod (it asks the API server what the
    launcher may do) does. KFP step pods run as kuberlhf-launcher, whose token KFP's own launcher needs in each."""
    from k8schecks import pod_specs

    mounting = []
    for obj in objs(case):
        for _, spec in pod_specs(obj):
            assert isinstance(spec.get("automountServiceAccountToken"), bool), obj["metadata"]["name"]
            if spec["automountServiceAccountToken"]:
                mounting.append(obj["metadata"]["name"])
    assert mounting == ["kuberlhf-test-access"]


def test_dev_store_gets_a_rule_aborting_incomplete_multipart_uploads():
    items = objs("ci/dev-values.yaml")
    (job,) = find(items, "Job", "kuberlhf-s3-lifecycle")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    spec = job["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["args"] == [(CHART / "files" / "s3-lifecycle.py").read_text()]
    compile(container["args"][0], "s3-lifecycle.py", "exec")
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["AWS_ENDPOINT_URL_S3"] == "http://kuberlhf-s3.kuberlhf.svc:8333"
    assert (env["BUCKETS"], env["ABORT_INCOMPLETE_MULTIPART_DAYS"]) == ("kuberlhf", "1")
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "kuberlhf-s3", "key": "AWS_ACCESS_KEY_ID"}}
    off = read_values("ci/dev-values.yaml")
    off["devStore"] = {**off["devStore"], "abortIncompleteMultipartUploadDays": 0}
    assert not find(objects(render(off)), "Job")
    assert not find(objs(None), "Job")


# ---------------------------------------------------------------- Kubeflow Trainer runtimes
def chart_runtimes(items: list[dict]) -> dict[str, dict]:
    """The chart's runtimes by name, without the labels Helm writes on their metadata."""
    return {o["metadata"]["name"]: without_helm_labels(o) for o in items if o["kind"] in RUNTIME_KINDS}


def chart_cluster(case: str | None, tmp_path: Path, monkeypatch):
    """The ClusterConfig the launcher reads from the chart's cluster.yaml (the ConfigMap's, as a file), with the
    image registry and tag of the chart's values (what kuberlhf.images reads from the environment)."""
    from kuberlhf.k8s.spec import load_cluster

    image = {**read_values(CHART / "values.yaml")["image"], **read_values(case).get("image", {})}
    monkeypatch.setenv("KUBERLHF_IMAGE_REGISTRY", image["registry"])
    monkeypatch.setenv("KUBERLHF_IMAGE_TAG", image["tag"])
    monkeypatch.setenv("KUBERLHF_CLUSTER_CONFIG", str(tmp_path / "absent.yaml"))
    (cm,) = find(objs(case), "ConfigMap", "kuberlhf-config")
    path = tmp_path / "cluster.yaml"
    path.write_text(cm["data"]["cluster.yaml"])
    return load_cluster(path)


def python_runtimes(cluster) -> dict[str, dict]:
    from kuberlhf.k8s.trainjob import build_runtime, runtime_name, training_images

    return {runtime_name(image): build_runtime(image, cluster, cluster.runtime_kind) for image in training_images()}


def test_some_cases_render_each_runtime_kind():
    kinds = {read_values(case).get("trainer", {}).get("runtimeKind", "TrainingRuntime") for case in RUNTIME_CASES}
    assert kinds == set(RUNTIME_KINDS)


@pytest.mark.parametrize("case", RUNTIME_CASES)
def test_runtimes_are_what_build_runtime_renders_from_the_charts_cluster_yaml(case, tmp_path, monkeypatch):
    from kuberlhf.k8s.trainjob import runtime_differences

    ours = chart_runtimes(objs(case))
    expected = python_runtimes(chart_cluster(case, tmp_path, monkeypatch))
    assert sorted(ours) == sorted(expected)
    for name, runtime in expected.items():
        diff = difflib.unified_diff(json.dumps(runtime, indent=1, sort_keys=True).splitlines(),
                                    json.dumps(ours[name], indent=1, sort_keys=True).splitlines(),
                                    "build_runtime", "chart", lineterm="", n=1)
        assert ours[name] == runtime, f"{name} differs:\n" + "\n".join(diff)
        assert runtime_differences(runtime, ours[name]) == []  # what the launcher checks before a TrainJob


def test_runtime_comparison_sees_a_changed_field(tmp_path, monkeypatch):
    from kuberlhf.k8s.trainjob import runtime_differences, runtime_pod

    case = "ci/trainjob-values.yaml"
    expected = python_runtimes(chart_cluster(case, tmp_path, monkeypatch))["kuberlhf-ppo"]
    ours = chart_runtimes(objs(case))["kuberlhf-ppo"]
    assert ours == expected
    pull = copy.deepcopy(ours)
    runtime_pod(pull)["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    assert pull != expected
    assert runtime_differences(expected, pull) == [
        "image_pull_policy: the runtime has 'Always', the cluster settings want 'IfNotPresent'"]
    codes = copy.deepcopy(ours)
    job = codes["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    job["podFailurePolicy"]["rules"][1]["onExitCodes"]["values"].remove(127)
    assert codes != expected
    labelled = copy.deepcopy(ours)
    labelled["metadata"]["labels"]["kuberlhf.io/extra"] = "x"  # not a label Helm writes
    assert labelled != expected


def test_runtimes_only_when_asked_or_when_the_cluster_serves_them():
    served = (f"{TRAINER_API}/TrainingRuntime", f"{TRAINER_API}/ClusterTrainingRuntime")

    def kinds(values, api_versions=()):
        return sorted((o["kind"], o["metadata"]["name"]) for o in objects(render(values, api_versions))
                      if o["kind"] in RUNTIME_KINDS)

    four = [("TrainingRuntime", f"kuberlhf-{i}") for i in ("dpo", "ppo", "reward", "sft")]
    assert kinds({}) == []  # "auto" on a cluster without Kubeflow Trainer v2 (and in an offline helm template)
    assert kinds({"trainer": {"runtimes": True}}) == four
    assert kinds({}, served) == four  # "auto" where the cluster serves trainer.kubeflow.org/v1alpha1 runtimes
    assert kinds({}, ("trainer.kubeflow.org/v1alpha1",)) == []  # the group version alone: not the kind
    assert kinds({"trainer": {"runtimes": False}}, served) == []
    assert kinds({"trainer": {"runtimeKind": "ClusterTrainingRuntime"}}, served[1:]) == [
        ("ClusterTrainingRuntime", name) for _, name in four]
    assert kinds({"trainer": {"runtimeKind": "ClusterTrainingRuntime"}}, served[:1]) == []


def test_runtime_values_reach_cluster_yaml():
    cm = find(objs("ci/trainjob-cluster-values.yaml"), "ConfigMap", "kuberlhf-config")[0]
    cluster = yaml.safe_load(cm["data"]["cluster.yaml"])
    assert (cluster["backend"], cluster["runtime_kind"]) == ("trainjob", "ClusterTrainingRuntime")
    default = yaml.safe_load(find(objs(None), "ConfigMap", "kuberlhf-config")[0]["data"]["cluster.yaml"])
    assert (default["backend"], default["runtime_kind"]) == ("pytorchjob", "TrainingRuntime")
    # the keys the chart fixes (no value sets them) are kuberlhf's defaults: the images' UID, the chart's ConfigMap
    from kuberlhf.k8s.spec import ClusterConfig

    fixed = ("service_account", "config_map", "run_as_user", "gang_scheduling")
    assert {k: default[k] for k in fixed} == {k: getattr(ClusterConfig(), k) for k in fixed}


def test_elastic_training_is_refused_with_the_trainjob_backend():
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match="cluster.elasticMaxNodes"):
        render({"cluster": {"backend": "trainjob", "nodes": 2, "elasticMinNodes": 1, "elasticMaxNodes": 4}})


def test_trainjob_pods_are_training_pods_to_the_network_policies(tmp_path, monkeypatch):
    """A TrainJob's pod (the runtime's template with the TrainJob's patches, plus JobSet's labels) gets the
    training pods' policy, not the chart pods' one."""
    from k8schecks import endpoint, network_allows, selector_matches

    from kuberlhf.k8s.trainjob import build_trainjob, effective_pod

    case = "ci/trainjob-values.yaml"
    cluster = chart_cluster(case, tmp_path, monkeypatch)
    job = build_trainjob("sft", "configs/sft/demo.yaml", [], cluster, "sft-run-1")
    items = objs(case)
    pod = effective_pod(find(items, "TrainingRuntime", "kuberlhf-sft")[0], job)

    def node(index: int) -> dict:
        return endpoint(NS, {**pod["metadata"]["labels"], "jobset.sigs.k8s.io/jobset-name": "sft-run-1",
                             "jobset.sigs.k8s.io/replicatedjob-name": "node",
                             "batch.kubernetes.io/job-completion-index": str(index)})

    pols = find(items, "NetworkPolicy")
    (chart_pods,) = find(items, "NetworkPolicy", "kuberlhf")
    assert not selector_matches(chart_pods["spec"]["podSelector"], node(0)["labels"])
    assert network_allows(pols, node(1), node(0), 29500)  # Trainer's torch port (PET_MASTER_PORT) on node 0
    for other in (step_pod(launches=True), endpoint(NS, {"app": "jupyter"}), training_pod(namespace="team-b")):
        assert not network_allows(pols, other, node(0), 29500), other
    assert network_allows(pols, node(0), dns_pod(), 53, "UDP")
    assert not network_allows(pols, node(0), endpoint(ip="10.96.0.1"), 443)
