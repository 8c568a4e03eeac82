"""`helm test` for kuberlhf, run in the launcher image as ServiceAccount kuberlhf-launcher.

Checks, one line each, exit status 1 when one fails:
- the ServiceAccount may do what the launcher needs and nothing more (SelfSubjectAccessReview), and with
  ClusterTrainingRuntimes (RUNTIME_KIND) read those four and no other;
- the object store answers and accepts the credentials of the storage Secret;
- the cluster's DNS answers in the namespace (the training pods of one job find each other by name).
"""

import os
import sys

# (API group, resource, subresource, verb) in the release namespace
JOB_VERBS = ("create", "get", "list", "watch", "delete")
ALLOWED = [("kubeflow.org", "pytorchjobs", "", verb) for verb in JOB_VERBS] + [
    ("trainer.kubeflow.org", "trainjobs", "", verb) for verb in JOB_VERBS] + [
    ("trainer.kubeflow.org", "trainingruntimes", "", "get")] + [
    ("", resource, sub, verb) for resource, sub in (("pods", ""), ("pods", "log")) for verb in ("get", "list")] + [
    ("", "events", "", "list")]
DENIED = [("kubeflow.org", "pytorchjobs", "", "update"), ("trainer.kubeflow.org", "trainjobs", "", "update"),
          ("trainer.kubeflow.org", "trainingruntimes", "", "update"),
          ("trainer.kubeflow.org", "trainingruntimes", "", "list"), ("", "pods", "", "create"),
          ("", "pods", "", "delete"), ("", "secrets", "", "get"), ("", "configmaps", "", "list"),
          ("", "events", "", "create")]
# ClusterTrainingRuntimes (cluster-wide) the launcher reads by name: (name, verb)
RUNTIMES = ("kuberlhf-dpo", "kuberlhf-ppo", "kuberlhf-reward", "kuberlhf-sft")
CLUSTER_ALLOWED = [(name, "get") for name in RUNTIMES]
CLUSTER_DENIED = [("torch-distributed", "get"), ("", "list"), ("kuberlhf-sft", "update")]


def rbac_failures(allowed) -> list[str]:
    """``allowed(group, resource, subresource, verb) -> bool`` for each expected and each refused access."""
    failures = []
    for access in ALLOWED + DENIED:
        want = access in ALLOWED
        if allowed(*access) != want:
            group, resource, sub, verb = access
            what = f"{verb} {resource}{'/' + sub if sub else ''}{'.' + group if group else ''}"
            failures.append(f"{what}: {'refused' if want else 'allowed'}, expected {'allowed' if want else 'refused'}")
    return failures


def cluster_runtime_failures(allowed) -> list[str]:
    """``allowed(name, verb) -> bool`` of clustertrainingruntimes.trainer.kubeflow.org for each expected and
    each refused access."""
    failures = []
    for name, verb in CLUSTER_ALLOWED + CLUSTER_DENIED:
        want = (name, verb) in CLUSTER_ALLOWED
        if allowed(name, verb) != want:
            what = f"{verb} clustertrainingruntimes.trainer.kubeflow.org{'/' + name if name else ''}"
            failures.append(f"{what}: {'refused' if want else 'allowed'}, expected {'allowed' if want else 'refused'}")
    return failures


def s3_failure() -> str:
    """'' when the store lists buckets, or refuses only the listing (AccessDenied) after accepting the keys."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session().client("s3", region_name=os.environ.get("AWS_REGION") or "us-east-1",
                                            config=Config(retries={"max_attempts": 2}, connect_timeout=10,
                                                          read_timeout=30))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or "AWS S3"
    try:
        client.list_buckets()
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code != "AccessDenied":
            return f"object store {endpoint}: {code or err}"
    except BotoCoreError as err:
        return f"object store {endpoint}: {err}"
    return ""


def dns_failure(resolve=None, name: str = "kubernetes.default.svc") -> str:
    """'' when ``name`` resolves through the pod's DNS (a job's Workers reach its Master by name)."""
    import socket

    try:
        (resolve or socket.getaddrinfo)(name, 443)
    except OSError as err:
        return f"{name} does not resolve ({err}): the job's pods would not find each other"
    return ""


def main() -> int:
    from kubernetes import client, config

    config.load_incluster_config()
    namespace = os.environ["NAMESPACE"]
    api = client.AuthorizationV1Api()

    def allowed(group, resource, sub, verb):
        attrs = client.V1ResourceAttributes(namespace=namespace, group=group, resource=resource,
                                            subresource=sub or None, verb=verb)
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
        return bool(api.create_self_subject_access_review(review).status.allowed)

    def cluster_allowed(name, verb):
        attrs = client.V1ResourceAttributes(group="trainer.kubeflow.org", resource="clustertrainingruntimes",
                                            name=name or None, verb=verb)
        review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs))
        return bool(api.create_self_subject_access_review(review).status.allowed)

    failures = rbac_failures(allowed)
    if os.environ.get("RUNTIME_KIND") == "ClusterTrainingRuntime":
        failures += cluster_runtime_failures(cluster_allowed)
    print("launcher RBAC:", "ok" if not failures else "; ".join(failures))
    store = s3_failure()
    print("object store:", store or "ok")
    dns = dns_failure()
    print("cluster DNS:", dns or "ok")
    return 1 if failures or store or dns else 0


if __name__ == "__main__":
    sys.exit(main())
