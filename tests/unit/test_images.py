"""The stage images: Dockerfiles (hadolint and house rules), locks, names, and the make targets.

The checks live in images/check.py (`make images-check`); each test here also shows that a
check catches the bad case it is for, on a copy of images/ in tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "images"))

import build  # noqa: E402  (images/build.py)
import check  # noqa: E402  (images/check.py)

from kuberlhf import images  # noqa: E402

IMAGES = list(images.IMAGES)
ZERO = "sha256:" + "0" * 64


@pytest.fixture
def tree(tmp_path, monkeypatch) -> Path:
    """A copy of images/ that the checks read instead of the real one."""
    copy = tmp_path / "images"
    shutil.copytree(ROOT / "images", copy, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    monkeypatch.setattr(check, "IMAGES_DIR", copy)
    return copy


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, count))


# --- hadolint --------------------------------------------------------------------------------

@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_passes(image):
    assert check.hadolint_errors(ROOT / "images" / image / "Dockerfile") == []


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n"
                   "USER root\nCMD python app.py\n")
    found = "\n".join(check.hadolint_errors(bad))
    for rule in ("DL3006", "DL3015", "DL3013", "DL3042", "DL3002", "DL3025", "DL3049"):
        assert rule in found, f"hadolint did not report {rule}: {found}"


def test_hadolint_failure_fails_images_check(tree):
    """A finding of hadolint alone (a label removed) makes `images/check.py` exit non-zero."""
    edit(tree / "ppo/Dockerfile", '      org.opencontainers.image.licenses="Apache-2.0"',
         '      org.example.note="x"')
    edit(tree / "ppo/Dockerfile", 'org.opencontainers.image.source="${SOURCE}" \\',
         'org.opencontainers.image.source="${SOURCE}" \\\n      org.opencontainers.image.licenses="Apache-2.0" \\')
    assert check.dockerfile_errors("ppo") == []  # only hadolint objects (DL3050: superfluous label)
    assert any("DL3050" in e for e in check.hadolint_errors(tree / "ppo/Dockerfile"))
    proc = subprocess.run([sys.executable, str(ROOT / "images/check.py"), "--offline", "--images-dir", str(tree)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DL3050" in proc.stdout and "1 finding(s)" in proc.stdout


def test_images_check_passes_offline():
    proc = subprocess.run([sys.executable, str(ROOT / "images/check.py"), "--offline"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped: lock resolution on the registry: --offline was given" in proc.stdout


# --- Dockerfile rules ------------------------------------------------------------------------

@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_follows_the_rules(image):
    assert check.dockerfile_errors(image) == []


@pytest.mark.parametrize("image, old, new, complaint", [
    ("launcher", "library/debian:bookworm-slim@", "library/debian:bookworm@", "is not kuberlhf.images.BASE_IMAGE"),
    ("torch", f"@{ZERO}", "", "no 'ARG BASE_IMAGE="),
    ("launcher", "FROM ${BASE_IMAGE}", "FROM debian:bookworm", "first FROM"),
    ("sft", "FROM ${TORCH_IMAGE}", "FROM ${BASE_IMAGE}", "starts from the torch image"),
    ("sft", "--require-hashes --only-binary=:all: --no-deps -r", "--require-hashes --only-binary=:all: -r",
     "complete requirements.lock"),
    ("launcher", "    && pip check \\\n", "", "pip check"),
    ("torch", "    && pip check \\\n", "", "pip check"),
    ("sft", "COPY images/sft/requirements.lock", "COPY images/dpo/requirements.lock", "does not copy its own locks"),
    ("launcher", "python3.11 python3.11-venv", "python3.12 python3.12-venv", "PYTHON_VERSION"),
    ("torch", "python3.11 -m venv", "python3.12 -m venv", "PYTHON_VERSION"),
    ("sft", "USER 10001:10001", "USER kuberlhf", "numeric non-root"),
    ("sft", "USER 10001:10001", "USER 0", "numeric non-root"),
    ("sft", 'VOLUME ["/data"]', "", "/data volume"),
    ("sft", "XDG_CACHE_HOME=/data/cache", "XDG_CACHE_HOME=/home/kuberlhf/.cache", "/data volume"),
    ("sft", 'title="kuberlhf-sft"', 'title="kuberlhf-train"', "label org.opencontainers.image.title"),
    ("sft", "with bitsandbytes, DeepSpeed)\" \\", "DeepSpeed)\" \\", "label org.opencontainers.image.description"),
    ("torch", 'version="${VERSION}"', 'version="0.1.0"', "must come from ARG VERSION"),
    ("sft", 'ENTRYPOINT ["kuberlhf", "sft"]', 'ENTRYPOINT ["kuberlhf", "ppo"]', "ENTRYPOINT"),
    ("sft", "WORKDIR /opt/kuberlhf", "WORKDIR /app", "WORKDIR"),
    ("sft", "DS_BUILD_OPS=0 pip install", "pip install", "DS_BUILD_OPS=0"),
])
def test_dockerfile_rules_catch(tree, image, old, new, complaint):
    assert check.dockerfile_errors(image) == []
    edit(tree / image / "Dockerfile", old, new)
    errors = check.dockerfile_errors(image)
    assert any(complaint in e for e in errors), errors


def test_base_digests_must_agree(tree):
    assert check.consistency_errors() == []
    edit(tree / "torch/Dockerfile", f"@{ZERO}", "@sha256:" + "1" * 64)
    assert any("different base digests" in e for e in check.consistency_errors())


def test_image_folders_names_and_labels_agree_with_the_library():
    assert sorted(p.parent.name for p in (ROOT / "images").glob("*/Dockerfile")) == sorted(images.IMAGES)
    assert set(images.STAGE_IMAGE.values()) == set(images.IMAGES) - {images.TORCH_IMAGE}
    for image in IMAGES:
        text = (ROOT / "images" / image / "Dockerfile").read_text()
        assert f'org.opencontainers.image.title="{images.image_name(image)}"' in text
        assert f'org.opencontainers.image.description="{images.IMAGES[image]}"' in text
        from_torch = image in images.TRAINING_IMAGES
        assert (f"ARG BASE_IMAGE={images.BASE_IMAGE}@sha256:" in text) != from_torch, image
        assert ("FROM ${TORCH_IMAGE}" in text) == from_torch, image
    for stage, image in images.STAGE_IMAGE.items():
        assert images.image_ref(stage, registry="r.example", tag="t") == f"r.example/kuberlhf-{image}:t"
    out = subprocess.run([sys.executable, "-m", "kuberlhf.images"], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src"),
                                        "KUBERLHF_IMAGE_REGISTRY": "", "KUBERLHF_IMAGE_TAG": ""}).stdout
    assert out.splitlines() == [f"{image} {images.DEFAULT_REGISTRY}/kuberlhf-{image}:{images.__version__}"
                                for image in IMAGES]
    assert images.oci_labels("ppo")["org.opencontainers.image.version"] == images.image_tag()


# --- locks -----------------------------------------------------------------------------------

@pytest.mark.parametrize("image", IMAGES)
def test_lock_is_hashed_and_agrees_with_pyproject(image):
    assert check.lock_errors(image) == []
    entries, errors = check.all_locked(image)
    assert not errors and all(e.hashes for e in entries.values())
    declared = check.pyproject_requirements()
    for name, entry in entries.items():
        if name in declared:
            assert declared[name].specifier.contains(entry.version, prereleases=True), (name, entry.version)


def test_per_image_content_rules():
    locked = {image: set(check.all_locked(image)[0]) for image in IMAGES}
    assert "trl" not in locked["ppo"] and "bitsandbytes" not in locked["ppo"]
    assert "bitsandbytes" in locked["sft"]
    assert {"deepspeed", "trl"} <= locked["sft"] & locked["reward"] & locked["dpo"]
    assert "deepspeed" in locked["ppo"] and "deepspeed" not in locked["launcher"]
    assert "matplotlib" in locked["ppo"] and "kubeflow-training" in locked["launcher"]
    assert not {"torch", "transformers", "triton", "matplotlib"} & locked["launcher"]
    for image in images.TRAINING_IMAGES:
        assert {"kfp", "kubernetes", "torch", "gguf"} <= locked[image], image
    for image in IMAGES:
        source = ROOT / f"images/{image}/source.lock"
        assert source.exists() != (image == images.TORCH_IMAGE)
        if source.exists():
            assert set(check.parse_lock(source)[0]) <= set(check.SOURCE_ONLY)


def _drop_entry(path: Path, name: str) -> None:
    text = path.read_text()
    new = re.sub(rf"(?ms)^{re.escape(name)}==.*?(?=^\S)", "", text, count=1)
    assert new != text
    path.write_text(new)


@pytest.mark.parametrize("image, mutate, complaint", [
    ("launcher", lambda t: edit(t / "launcher/requirements.lock", "six==1.17.0 \\\n", "six==1.17.0\n"),
     "has no --hash"),
    ("ppo", lambda t: edit(t / "ppo/requirements.lock", "transformers==5.23.0", "transformers==4.57.0"),
     "outside pyproject.toml's transformers"),
    ("ppo", lambda t: edit(t / "ppo/requirements.lock", "tqdm==", "trl==1.16.0 \\\n    --hash=sha256:" + "a" * 64
                           + "\ntqdm=="), "must not contain trl"),
    ("sft", lambda t: _drop_entry(t / "sft/requirements.lock", "bitsandbytes"), "bitsandbytes"),
    ("sft", lambda t: _drop_entry(t / "sft/source.lock", "deepspeed"), "does not lock it"),
    ("dpo", lambda t: edit(t / "dpo/requirements.lock", "# via", "deepspeed==0.19.8 \\\n    --hash=sha256:"
                           + "b" * 64 + "\n    # via"), "belongs in source.lock"),
    ("ppo", lambda t: edit(t / "ppo/requirements.lock", "==", ">=", 1), "not a hashed pin"),
])
def test_lock_rules_catch(tree, image, mutate, complaint):
    assert check.lock_errors(image) == []
    mutate(tree)
    errors = check.lock_errors(image)
    assert any(complaint in e for e in errors), errors


def test_requirements_in_lists_only_what_the_image_locks(tree):
    edit(tree / "ppo/requirements.in", "kfp\n", "kfp\ntrl\n")  # TRL: no PPO trainer, not in the PPO image
    assert any("lists trl" in e for e in check.lock_errors("ppo"))


# --- make images, images-pin: engines and base digests ---------------------------------------

def _fake_tool(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_build_refuses_an_unpinned_base(tree, monkeypatch, capsys):
    monkeypatch.delenv("IMAGES_ALLOW_UNPINNED", raising=False)
    assert build.main(["build", "ppo"]) == 2
    assert "not pinned (placeholder digest)" in capsys.readouterr().err


def test_build_without_an_engine_fails_clearly(tree, tmp_path, monkeypatch, capsys):
    _fake_tool(tmp_path / "bin", "docker", 'echo "Cannot connect to the Docker daemon" >&2; exit 1\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("IMAGES_ALLOW_UNPINNED", "1")
    assert build.main(["build", "ppo"]) == 2
    err = capsys.readouterr().err
    assert "no usable container engine" in err and "Cannot connect to the Docker daemon" in err
    assert "podman: not installed" in err and "buildah: not installed" in err


def test_build_command_line(tree, tmp_path, monkeypatch):
    """With an engine present, each image is built from the repository root with its ref and labels."""
    log = tmp_path / "calls"
    _fake_tool(tmp_path / "bin", "podman", f'echo "$@" >> {log}\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("IMAGES_ALLOW_UNPINNED", "1")
    assert build.main(["build", "ppo", "launcher"]) == 0
    info, torch, ppo, launcher = log.read_text().splitlines()  # the torch image first: ppo starts from it
    assert info == "info"
    common = ["--build-arg", f"VERSION={images.image_tag()}", "--build-arg", f"SOURCE={images.SOURCE_URL}"]
    assert torch.split() == ["build", "--platform", "linux/amd64", "-f", str(tree / "torch/Dockerfile"),
                             "-t", images.image_ref("torch"), *common,
                             "--build-arg", f"BASE_IMAGE={images.BASE_IMAGE}", str(ROOT)]
    assert ppo.split() == ["build", "--platform", "linux/amd64", "-f", str(tree / "ppo/Dockerfile"),
                           "-t", images.image_ref("ppo"), *common,
                           "--build-arg", f"TORCH_IMAGE={images.image_ref('torch')}", str(ROOT)]
    assert images.image_ref("launcher") in launcher.split() and "TORCH_IMAGE" not in launcher


def test_build_on_a_local_base_names_images_local_and_push_refuses_them(tree, tmp_path, monkeypatch, capsys):
    log = tmp_path / "calls"
    _fake_tool(tmp_path / "bin", "podman", f'echo "$@" >> {log}\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("IMAGES_ALLOW_UNPINNED", raising=False)
    refs = build.build(["sft"], allow_unpinned=False, engine="podman", base="local/debian:bookworm", registry="local")
    assert refs == [f"local/kuberlhf-torch:{images.image_tag()}", f"local/kuberlhf-sft:{images.image_tag()}"]
    torch = log.read_text().splitlines()[1].split()
    assert "BASE_IMAGE=local/debian:bookworm" in torch
    assert torch[torch.index("--network") + 1] == "host"  # the local daemon has no bridge
    monkeypatch.setenv("KUBERLHF_IMAGE_REGISTRY", "local")
    assert build.main(["push", "sft"]) == 2
    assert "refusing to push local/kuberlhf-torch" in capsys.readouterr().err
    assert len(log.read_text().splitlines()) == 3  # nothing pushed


def test_pin_writes_the_digest_and_build_then_uses_it(tree, tmp_path, monkeypatch):
    digest = "sha256:" + "c" * 64
    _fake_tool(tmp_path / "bin", "crane", f'[ "$1" = digest ] && [ "$2" = "{images.BASE_IMAGE}" ] && echo {digest}\n')
    log = tmp_path / "calls"
    _fake_tool(tmp_path / "bin", "buildah", f'echo "$@" >> {log}\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert build.main(["pin"]) == 0
    assert set(check.base_digests().values()) == {digest}
    assert check.consistency_errors() == [] and check.dockerfile_errors("sft") == []
    monkeypatch.delenv("IMAGES_ALLOW_UNPINNED", raising=False)
    assert build.main(["build", "sft"]) == 0
    call = log.read_text().splitlines()[-1].split()
    assert call[:3] == ["build", "--layers", "--platform"] and not any(a.startswith("BASE_IMAGE=") for a in call)


def test_pin_without_a_tool_fails_clearly(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("DIGEST", raising=False)
    assert build.main(["pin"]) == 2
    err = capsys.readouterr().err
    assert f"could not resolve {images.BASE_IMAGE}" in err
    assert all(f"{tool}: not installed" in err for tool in ("skopeo", "crane", "docker", "podman"))
    assert set(check.base_digests().values()) == {ZERO}
    assert build.main(["pin", "--digest", "sha256:1234"]) == 2
    assert "not a sha256:<64 hex>" in capsys.readouterr().err


# --- Makefile --------------------------------------------------------------------------------

def test_make_targets():
    text = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split()
    for target, script in (("images", "build.py build"), ("images-pin", "build.py pin"),
                           ("images-lock", "build.py lock"), ("images-check", "check.py"),
                           ("images-base", "engine.py base"), ("images-smoke", "smoke.py")):
        rule = re.search(rf"^{target}:([^#\n]*)## .+\n\t(.+)$", text, re.M)
        assert rule, f"no documented target {target}"
        assert "install" in rule.group(1).split() and f"images/{script}" in rule.group(2)
        assert target in phony


def test_resolution_is_skipped_with_a_reason_when_the_registry_is_unreachable(monkeypatch):
    monkeypatch.setattr(check, "INDEX_URL", "http://127.0.0.1:9/simple")
    lines: list[str] = []
    assert check.run_checks(out=lines.append) == 0
    assert any(line.startswith("skipped: lock resolution on the registry: the package registry "
                               "(http://127.0.0.1:9/simple) is unreachable") for line in lines), lines


# --- the images run what the suite tested ----------------------------------------------------

@pytest.mark.parametrize("image", IMAGES)
def test_image_lock_is_what_the_suite_runs_and_is_whole(image):
    assert check.tested_errors(image) == []


@pytest.mark.parametrize("mutate, complaint", [
    (lambda t: edit(t / "ppo/requirements.lock", "\ntqdm==4.70.1", "\ntqdm==4.70.0"),
     "locks tqdm==4.70.0, the suite runs 4.70.1"),
    (lambda t: _drop_entry(t / "ppo/requirements.lock", "jmespath"), "requires jmespath"),
    (lambda t: edit(t / "ppo/requirements.lock", "\ntqdm==", "\nleft-pad==1.0 \\\n    --hash=sha256:" + "d" * 64
                    + "\ntqdm=="), "left-pad==1.0 is not in requirements/constraints.txt"),
])
def test_tested_rules_catch(tree, mutate, complaint):
    assert check.tested_errors("ppo") == []
    mutate(tree)
    errors = check.tested_errors("ppo")
    assert any(complaint in e for e in errors), errors


def test_an_image_python_other_than_the_suites_is_caught(monkeypatch):
    monkeypatch.setattr(images, "PYTHON_VERSION", "3.12")
    assert any("is not the suite's Python" in e for e in check.tested_errors("launcher"))


def test_training_images_share_the_torch_layer(tree):
    """Each training lock pins the torch image's packages at its versions: pip then leaves that layer as it is."""
    assert check.consistency_errors() == []
    edit(tree / "torch/requirements.lock", "\nsympy==1.14.0", "\nsympy==1.13.3")
    errors = check.consistency_errors()
    assert sum("the torch image locks sympy==1.13.3" in e for e in errors) == len(images.TRAINING_IMAGES), errors


# --- the launcher image has no torch ---------------------------------------------------------

LAUNCHER_PROBE = r"""
import importlib, importlib.machinery, io, json, sys
from contextlib import redirect_stdout

HIDE = set(json.loads(sys.argv[1]))


def hidden(name):
    return any(name == m or name.startswith(m + ".") for m in HIDE)


class Absent(importlib.machinery.PathFinder):
    # the path finder, blind to the modules of the distributions the launcher image does not install
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if hidden(name) else super().find_spec(name, path, target)


sys.meta_path = [Absent if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
import importlib.util
assert importlib.util.find_spec("torch") is None
from kuberlhf.cli import main

for module in ("kuberlhf.k8s.launcher", "kuberlhf.k8s.cli", "kuberlhf.workflow.steps",
               *(f"kuberlhf.workflow.components.{m}" for m in sys.argv[2].split(","))):
    importlib.import_module(module)
for backend, kind in (("pytorchjob", "kind: PyTorchJob"), ("trainjob", "kind: TrainJob")):
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["launch", "ppo", "--dry-run", "--backend", backend, "output_dir=s3://b/ppo", "--run-id", "r"]) == 0
    assert kind in out.getvalue(), out.getvalue()[:300]
with redirect_stdout(io.StringIO()):  # the chart's upload job: compile every pipeline
    assert main(["pipeline", "compile", "--pipeline", "all", "--out", sys.argv[3]]) == 0
print("imported:", sorted(m for m in sys.modules if hidden(m)))
"""


def _modules(dist) -> list[list[str]]:
    """The dotted module paths (as parts) of a distribution's Python files and extension modules."""
    out = []
    for file in dist.files or []:
        parts = file.parts
        if parts and not parts[0].endswith((".dist-info", ".data")) and parts[0] != ".." and \
                file.name.endswith((".py", ".so")):
            out.append([*parts[:-1], file.name.split(".", 1)[0]])
    return out


def absent_modules(locked: set[str]) -> set[str]:
    """The shortest module names that only distributions outside ``locked`` provide (``kfp.kubernetes``
    of kfp-kubernetes within kfp's namespace, ``torch``)."""
    import importlib.metadata

    dists = list(importlib.metadata.distributions())
    present = {".".join(parts[:k]) for d in dists if check.canonicalize_name(d.metadata["Name"]) in locked
               for parts in _modules(d) for k in range(1, len(parts) + 1)}
    hide = set()
    for dist in dists:
        if check.canonicalize_name(dist.metadata["Name"]) in locked:
            continue
        for parts in _modules(dist):
            names = (".".join(parts[:k]) for k in range(1, len(parts) + 1))
            first = next((name for name in names if name not in present), None)
            if first:
                hide.add(first)
    return hide


def test_launcher_paths_run_without_what_the_launcher_image_lacks(tmp_path):
    """`kuberlhf launch`, the KFP component shells and the pipeline compile (the chart's upload job) with
    every module of the packages the launcher image does not install (torch, transformers, datasets,
    kfp-kubernetes' if it were left out, ...) made unimportable, as in that image."""

    locked = set(check.all_locked("launcher")[0]) | {"kuberlhf"}
    hide = sorted(absent_modules(locked))
    assert {"torch", "transformers", "trl", "deepspeed", "matplotlib", "datasets"} <= set(hide)
    components = sorted(p.stem for p in (ROOT / "src/kuberlhf/workflow/components").glob("*.py")
                        if p.stem != "__init__")
    proc = subprocess.run([sys.executable, "-c", LAUNCHER_PROBE, json.dumps(hide), ",".join(components), str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("imported: []"), proc.stdout
    assert {"rlhf-ppo.yaml", "rlhf-dpo.yaml"} <= {p.name for p in tmp_path.glob("*.yaml")}


def test_resolution_covers_every_image_including_the_wheels_only_torch_image(monkeypatch):
    """The registry look-up itself stubbed: every pin is 'picked' with its first locked hash."""
    calls = []

    def wheels(pins, timeout):
        picked = {}
        for pin in pins:
            name, version = pin.split("==")
            for image in IMAGES:
                entry = check.parse_lock(ROOT / f"images/{image}/requirements.lock")[0].get(name)
                if entry and entry.version == version:
                    picked[name, version] = (f"{name}.whl", sorted(entry.hashes)[0])
        return picked, ""

    monkeypatch.setattr(check, "_pip_dry_run", wheels)
    monkeypatch.setattr(check, "_pip_source_dry_run", lambda lock, timeout: calls.append(lock.parent.name) or "")
    assert check.resolve_errors() == []
    assert images.TORCH_IMAGE not in calls and calls  # source locks resolved once per distinct content


def test_build_on_a_local_base_from_make_images_is_named_local(tmp_path, monkeypatch, capsys):
    """IMAGES_BASE=local/debian:bookworm make images: the images are local/..., whatever the registry says."""
    log = tmp_path / "calls"
    _fake_tool(tmp_path / "bin", "docker", f'echo "$@" >> {log}\n')  # info and image inspect answer 0
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("IMAGES_BASE", "local/debian:bookworm")
    monkeypatch.setenv("KUBERLHF_IMAGE_REGISTRY", "ghcr.io/someone")
    assert build.main(["build", "launcher"]) == 0
    built = [line.split() for line in log.read_text().splitlines() if line.startswith("build")]
    assert [call[call.index("-t") + 1] for call in built] == [f"local/kuberlhf-launcher:{images.image_tag()}"]
    assert "BASE_IMAGE=local/debian:bookworm" in built[0]


def test_a_dockerd_started_here_adds_no_bridge_and_no_firewall_rules(tmp_path, monkeypatch):
    """Seen: a dockerd started on a machine without iptables installed docker.io (and iptables), then set the
    FORWARD policy to DROP and left it so; a test cluster's pods on their own bridge could no longer reach its
    DNS. The daemon started here gets neither a bridge nor firewall rules."""
    import engine

    started = []

    class Proc:
        pid = 4242

        def poll(self):
            return None

        def wait(self, timeout=None):
            return 0

    answers = iter([False, True])
    monkeypatch.setattr(engine, "docker_answers", lambda: next(answers))
    monkeypatch.setattr(engine, "require_root", lambda what: None)
    monkeypatch.setattr(engine.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(engine, "STATE", tmp_path)
    monkeypatch.setattr(engine, "ROOT", tmp_path)
    monkeypatch.setattr(engine.subprocess, "Popen", lambda argv, **kw: started.append(argv) or Proc())
    monkeypatch.setattr(engine.os, "killpg", lambda pid, sig: None)
    monkeypatch.setattr(engine, "unmount_leftovers", lambda: [])
    with engine.docker_daemon():
        pass
    (argv,) = started
    assert argv[0] == "dockerd" and "--bridge=none" in argv and "--iptables=false" in argv
