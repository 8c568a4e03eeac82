"""Checks of the Helm chart and the kustomize manifests, offline (no cluster).

$ python tests/deploy_check.py helm-lint          # lint --strict and render with the defaults and each
                                                  # ci/*-values.yaml, validate every object, bad values refused
$ python tests/deploy_check.py helm-lint --values my-values.yaml   # the same for more values files
$ python tests/deploy_check.py manifests-check    # kubectl kustomize each overlay, validate every object
$ python tests/deploy_check.py sync               # copy configs/, the chart's cluster.yaml and its Trainer
                                                  # runtimes into manifests/

Every object must pass ``k8schecks.validate_all`` (kubernetes-validate --strict for the oldest and
newest supported Kubernetes; custom resources against their CRD) and the restricted Pod Security
Standard. Kueue's LocalQueue has no vendored CRD: it is checked against the small strict schema
below (the fields of ``kueue.x-k8s.io/v1beta1`` LocalQueue that kuberlhf writes).
The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from k8schecks import K8S_VERSIONS, load_documents, pss_restricted_errors, validate_all  # noqa: E402

ROOT = HERE.parent
CHART = ROOT / "charts" / "kuberlhf"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
MANIFESTS = ROOT / "manifests"
# kustomize directory -> the chart values file it is equivalent to (None: the chart's defaults)
OVERLAYS = {"base": None, "overlays/dev": "ci/dev-values.yaml", "overlays/gpu": "ci/gpu-values.yaml",
            "overlays/trainjob": "ci/trainjob-values.yaml"}
STAGE_CONFIGS = "configs/*/*.yaml"
# objects an overlay takes from the chart's render as they are (`make chart-sync` writes them): the dev
# store's lifecycle Job carries files/s3-lifecycle.py in its args
GENERATED_OBJECTS = {"overlays/dev": {"devstore-lifecycle-job.yaml": ("Job", "kuberlhf-s3-lifecycle")}}
# overlays that ship the chart's Kubeflow Trainer runtimes (one file, every runtime the values render)
GENERATED_RUNTIMES = {"overlays/trainjob": "trainingruntimes.yaml"}
RUNTIME_KINDS = ("TrainingRuntime", "ClusterTrainingRuntime")
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by")
RELEASE = {"name": "kuberlhf", "namespace": "kuberlhf"}

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LOCALQUEUE_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kueue.x-k8s.io/v1beta1"}, "kind": {"const": "LocalQueue"},
        "metadata": {"type": "object", "required": ["name"],
                     "properties": {"name": {"type": "string", "maxLength": 63, "pattern": DNS1123_SUBDOMAIN}}},
        "spec": {"type": "object", "additionalProperties": False, "required": ["clusterQueue"], "properties": {
            "clusterQueue": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN},
            "stopPolicy": {"enum": ["None", "Hold", "HoldAndDrain"]},
            "fairSharing": {"type": "object", "additionalProperties": False,
                            "properties": {"weight": {"type": ["integer", "string"]}}}}},
    },
}

# values that break values.schema.json -> the text Helm's refusal must contain
BAD_VALUES = [
    ({"unknownKey": 1}, "'unknownKey' not allowed"),
    ({"cluster": {"nodez": 2}}, "'nodez' not allowed"),
    ({"cluster": {"nodes": "two"}}, "/cluster/nodes"),
    ({"cluster": {"gpuProduct": "v100"}}, "/cluster/gpuProduct"),
    ({"cluster": {"launcher": "mpirun"}}, "/cluster/launcher"),
    ({"image": {"tag": "latest"}}, "/image/tag"),
    ({"storage": {"createSecret": "yes"}}, "/storage/createSecret"),
    ({"devStore": {"persistence": {"size": "lots"}}}, "/devStore/persistence/size"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ({"devStore": {"abortIncompleteMultipartUploadDays": -1}}, "/devStore/abortIncompleteMultipartUploadDays"),
    ({"networkPolicy": {"objectStore": {"cidrs": ["s3.amazonaws.com"]}}}, "/networkPolicy/objectStore/cidrs"),
    ({"cluster": {"backend": "mpijob"}}, "/cluster/backend"),
    ({"trainer": {"runtimes": "yes"}}, "/trainer/runtimes"),
    ({"trainer": {"runtimeKind": "Cluster"}}, "/trainer/runtimeKind"),
]


# ---------------------------------------------------------------- Helm
@functools.cache
def _helm():
    import helm_python

    helm_python.disable_logging()  # quiet the loader's note about files/configs being a link
    return helm_python


def read_values(path: str | Path | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = CHART / path  # ci/dev-values.yaml
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict | None = None, api_versions: tuple[str, ...] = ()) -> dict[str, str]:
    """{template path: rendered text} with Helm's own engine (raises HelmValuesError, HelmRenderError).

    ``api_versions`` are what the cluster serves (``.Capabilities.APIVersions``, `helm template --api-versions`),
    e.g. ``trainer.kubeflow.org/v1alpha1/TrainingRuntime``; none by default, as in an offline `helm template`.
    """
    helm = _helm()
    with helm.Chart.load(CHART) as chart:
        if not api_versions:
            return chart.render(values or {}, **RELEASE)
        # Chart.render has no argument for them; the library's render options have (api_versions)
        from helm_python import _native

        options = {**RELEASE, "api_versions": list(api_versions)}
        return json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values or {}),
                                              json.dumps(options)))


def objects(rendered: dict[str, str], with_tests: bool = True) -> list[dict]:
    """The Kubernetes objects of a render (not NOTES.txt); ``with_tests=False`` leaves out the helm test pod."""
    return [obj for path, text in sorted(rendered.items()) if path.endswith((".yaml", ".yml"))
            and (with_tests or "/templates/tests/" not in path) for obj in load_documents(text)]


def lint_errors(values: dict | None = None) -> list[str]:
    """``helm lint --strict`` findings of warning level or worse, for the oldest and newest supported Kubernetes."""
    errors: list[str] = []
    for version in K8S_VERSIONS:
        report = _helm().lint(CHART, values or {}, strict=True, kube_version=f"v{version}")
        found = list(report["errors"]) + [m["error"] for m in report["messages"] if m["severity"] >= 2]
        for line in (line.strip().removeprefix("- ") for text in found for line in text.splitlines()):
            # Helm repeats a schema error under a header naming the chart: keep the error lines once
            if line and not line.startswith("values don't meet") and line != f"{CHART.name}:" and line not in errors:
                errors.append(line)
    return errors


def schema_refusal(values: dict) -> str:
    """Helm's message refusing ``values`` ('' when they are accepted)."""
    helm = _helm()
    try:
        render(values)
    except helm.HelmValuesError as err:
        return str(err)
    return ""


def undocumented_values(text: str | None = None) -> list[str]:
    """Keys of values.yaml without a ``# -- <key> ...`` comment right above them.

    The keys inside a ``resources`` block are Kubernetes' own (requests, limits, cpu, memory).
    """
    lines = (text if text is not None else (CHART / "values.yaml").read_text()).splitlines()
    missing, comments, parents = [], [], []  # parents: (indent, key) of the enclosing mappings
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if match:
            indent, key = len(match.group(1)), match.group(2)
            parents = [(i, k) for i, k in parents if i < indent]
            if "resources" not in {k for _, k in parents} and not any(c.startswith(f"# -- {key}") for c in comments):
                missing.append(".".join([k for _, k in parents] + [key]))
            parents.append((indent, key))
        if stripped:
            comments = []
    return missing


# ---------------------------------------------------------------- kustomize
def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        raise RuntimeError("kubectl not found next to the Python interpreter or on PATH: run `make install`")
    return found


def kustomize(directory: str | Path) -> list[dict]:
    """``kubectl kustomize DIR`` -> objects (raises RuntimeError with kustomize's message)."""
    proc = subprocess.run([kubectl(), "kustomize", str(MANIFESTS / directory)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"kubectl kustomize {directory}: {proc.stderr.strip()}")
    return load_documents(proc.stdout)


# ---------------------------------------------------------------- object checks
def localqueue_errors(obj: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(LOCALQUEUE_SCHEMA)
    return [f"LocalQueue: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(obj)]


def object_errors(objs: list[dict]) -> list[str]:
    """Schema errors (strict, both Kubernetes versions; CRDs; LocalQueue) and restricted-PSS violations."""
    kueue = [o for o in objs if o.get("apiVersion", "").startswith("kueue.x-k8s.io/")]
    errors = validate_all([o for o in objs if o not in kueue])
    for obj in kueue:
        errors += localqueue_errors(obj)
    for obj in objs:
        errors += [f"{obj.get('kind')}/{obj['metadata'].get('name')}: {e}" for e in pss_restricted_errors(obj)]
    return errors


# ---------------------------------------------------------------- manifests generated from the repository
def cluster_yaml(values_file: str | None) -> str:
    """The chart's cluster.yaml for a values file: the kustomize overlays ship the same."""
    for obj in objects(render(read_values(values_file))):
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == "kuberlhf-config":
            return obj["data"]["cluster.yaml"]
    raise RuntimeError("the chart rendered no kuberlhf-config ConfigMap")


def _without_helm(node):
    if isinstance(node, dict):
        return {k: _without_helm(v) for k, v in node.items() if k not in HELM_ONLY_LABELS and k != "annotations"}
    if isinstance(node, list):
        return [_without_helm(v) for v in node]
    return node


def generated_object(values_file: str | None, kind: str, name: str) -> str:
    """A chart object as an overlay ships it: without Helm's labels and annotations and the namespace."""
    for obj in objects(render(read_values(values_file))):
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            obj = _without_helm(obj)
            obj["metadata"].pop("namespace", None)
            head = f"# Generated by `make chart-sync` from the chart's {kind} {name}: do not edit.\n"
            return head + yaml.safe_dump(obj, sort_keys=False, width=120)
    raise RuntimeError(f"the chart rendered no {kind} {name} with {values_file}")


def without_helm_labels(obj: dict) -> dict:
    """An object without the labels Helm writes on its metadata (the rest as it is, annotations included)."""
    obj = json.loads(json.dumps(obj))
    labels = obj["metadata"].get("labels") or {}
    for key in HELM_ONLY_LABELS:
        labels.pop(key, None)
    return obj


def generated_runtimes(values_file: str | None) -> str:
    """The chart's Trainer runtimes for a values file as an overlay ships them: without Helm's labels and the
    namespace (the kustomization sets it), every other field as kuberlhf.k8s.trainjob.build_runtime renders it."""
    docs = []
    for obj in objects(render(read_values(values_file))):
        if obj["kind"] in RUNTIME_KINDS:
            obj = without_helm_labels(obj)
            obj["metadata"].pop("namespace", None)
            docs.append(yaml.safe_dump(obj, sort_keys=False, width=120))
    if not docs:
        raise RuntimeError(f"the chart rendered no Trainer runtime with {values_file} (set trainer.runtimes: true)")
    head = (f"# Generated by `make chart-sync` from the chart's Trainer runtimes with {values_file}: do not edit.\n"
            "# The launcher compares each with the cluster settings (cluster.yaml) before it creates a TrainJob.\n")
    return head + "---\n".join(docs)


def config_kustomization(configs: list[Path]) -> str:
    lines = ["# Generated by `make chart-sync` from configs/ and the chart's cluster.yaml: do not edit.",
             "# kuberlhf-config: cluster.yaml and each configs/<stage>/<name>.yaml as key <stage>.<name>.yaml",
             "apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization", "configMapGenerator:",
             "  - name: kuberlhf-config", "    options:", "      disableNameSuffixHash: true", "      labels:",
             "        app.kubernetes.io/component: config", "    files:",
             "      - cluster.yaml"]
    for path in configs:
        rel = path.relative_to(ROOT)
        lines.append(f"      - {rel.parent.name}.{rel.name}={rel}")
    return "\n".join(lines) + "\n"


def expected_files() -> dict[Path, str]:
    """Every file `sync` writes under manifests/, with its content."""
    configs = sorted(ROOT.glob(STAGE_CONFIGS))
    base = MANIFESTS / "base" / "config"
    files = {base / path.relative_to(ROOT): path.read_text() for path in configs}
    files[base / "kustomization.yaml"] = config_kustomization(configs)
    for directory, values_file in OVERLAYS.items():
        target = base if values_file is None else MANIFESTS / directory
        files[target / "cluster.yaml"] = cluster_yaml(values_file)
        for file_name, (kind, name) in GENERATED_OBJECTS.get(directory, {}).items():
            files[target / file_name] = generated_object(values_file, kind, name)
        if directory in GENERATED_RUNTIMES:
            files[target / GENERATED_RUNTIMES[directory]] = generated_runtimes(values_file)
    return files


def stale_files() -> list[str]:
    """Files under manifests/ that `sync` would change, add or delete."""
    expected = expected_files()
    problems = [str(p.relative_to(ROOT)) for p, text in expected.items() if not p.exists() or p.read_text() != text]
    copies = MANIFESTS / "base" / "config" / "configs"
    problems += [f"{p.relative_to(ROOT)} (not in configs/)" for p in copies.rglob("*") if p.is_file()
                 and p not in expected]
    return problems


def sync() -> list[str]:
    expected = expected_files()
    copies = MANIFESTS / "base" / "config" / "configs"
    for path in list(copies.rglob("*")) if copies.exists() else []:
        if path.is_file() and path not in expected:
            path.unlink()
    changed = []
    for path, text in expected.items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(str(path.relative_to(ROOT)))
    return changed


# ---------------------------------------------------------------- commands
def _report(name: str, errors: list[str]) -> bool:
    print(f"{'ok  ' if not errors else 'FAIL'} {name}")
    for error in errors:
        print(f"     {error}")
    return not errors


def helm_lint(extra_values: list[str]) -> bool:
    ok = _report("values.yaml: every key documented by a `# -- <key>` comment",
                 [f"undocumented: {k}" for k in undocumented_values()])
    for values_file in [None, *[str(p) for p in CI_VALUES], *extra_values]:
        label = Path(values_file).name if values_file else "default values"
        try:
            values = read_values(values_file)
        except (OSError, yaml.YAMLError) as err:
            ok &= _report(label, [str(err)])
            continue
        errors = lint_errors(values)
        if not errors:
            try:
                errors = object_errors(objects(render(values)))
            except Exception as err:  # HelmValuesError, HelmRenderError: the message says what is wrong
                errors = [str(err).strip()]
        ok &= _report(f"{label}: lint --strict, render, validate", errors)
    for values, expected in BAD_VALUES:
        message = schema_refusal(values)
        errors = [] if expected in message else [f"{values} accepted" if not message else f"{values}: {message!r}"]
        ok &= _report(f"schema refuses {values}", errors)
    return ok


def manifests_check() -> bool:
    ok = _report("manifests/ in sync with configs/ and the chart (`make chart-sync`)",
                 [f"stale: {p}" for p in stale_files()])
    for directory in OVERLAYS:
        try:
            errors = object_errors(kustomize(directory))
        except RuntimeError as err:
            errors = [str(err)]
        ok &= _report(f"kubectl kustomize manifests/{directory}: validate", errors)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lint = sub.add_parser("helm-lint", help="lint, render and validate the chart; bad values refused")
    lint.add_argument("--values", action="append", default=[], help="more values files to check")
    sub.add_parser("manifests-check", help="build and validate each kustomize overlay")
    sub.add_parser("sync", help="copy configs/, the chart's cluster.yaml and runtimes into manifests/")
    args = parser.parse_args(argv)
    if args.command == "helm-lint":
        return 0 if helm_lint(args.values) else 1
    if args.command == "manifests-check":
        return 0 if manifests_check() else 1
    for path in sync():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
