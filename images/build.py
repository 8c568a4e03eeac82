"""Build, pin and lock the stage images (`make images`, `make images-pin`, `make images-lock`).

$ .venv/bin/python images/build.py build [IMAGE ...]   # docker, podman or buildah, whichever works
$ .venv/bin/python images/build.py pin [--digest sha256:...]
$ .venv/bin/python images/build.py lock [IMAGE ...]

* build: tags each image ``kuberlhf.images.image_ref(image)`` with the OCI version and
  source as build args. It refuses a base image still at the placeholder digest unless
  IMAGES_ALLOW_UNPINNED=1 (then it builds on the bare tag, which is not reproducible).
  IMAGES_ENGINE=docker|podman|buildah picks the engine.
* pin: resolves kuberlhf.images.BASE_IMAGE to its digest (skopeo, crane, docker buildx
  imagetools or podman, whichever is present and answers) and writes it into every
  Dockerfile's ``ARG BASE_IMAGE=...@sha256:...`` line; ``--digest`` writes a known digest.
* lock: resolves images/<image>/requirements.in with uv for linux x86_64 and the images'
  Python, taking each range from pyproject.toml and the exact versions from
  requirements/constraints.txt, into a hash-locked requirements.lock; source-only packages
  (deepspeed) are downloaded from the registry and locked by their sdist hash.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import check  # noqa: E402  (images/check.py: paths, lock parsing, kuberlhf.images)
from check import PLACEHOLDER_DIGEST, ROOT, SOURCE_ONLY, images  # noqa: E402

ENGINES = ("docker", "podman", "buildah")


class Failure(Exception):
    """A one-line reason the command cannot go on."""


def _run(cmd: list[str], timeout: int = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def _tail(proc: subprocess.CompletedProcess) -> str:
    """The first line of what a failed command said (engines put the reason there)."""
    lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
    return lines[0] if lines else f"exit {proc.returncode}"


# --- build -----------------------------------------------------------------------------------

def find_engine(requested: str = "") -> str:
    """The first container engine that is installed and usable; a Failure says why none is."""
    why = []
    for engine in ([requested] if requested else ENGINES):
        if engine not in ENGINES:
            raise Failure(f"IMAGES_ENGINE={engine!r}: use one of {', '.join(ENGINES)}")
        if not shutil.which(engine):
            why.append(f"{engine}: not installed")
            continue
        probe = [engine, "info"] if engine != "buildah" else [engine, "version"]
        try:
            proc = _run(probe, timeout=30)
        except subprocess.TimeoutExpired:
            why.append(f"{engine}: '{' '.join(probe)}' did not answer in 30 s")
            continue
        if proc.returncode == 0:
            return engine
        why.append(f"{engine}: '{' '.join(probe)}' failed ({_tail(proc)})")
    raise Failure("no usable container engine (docker with a running daemon, podman or buildah): " + "; ".join(why))


def build_order(selected: list[str]) -> list[str]:
    """``selected`` in build order, with the torch image first whenever a training image needs it."""
    wanted = set(selected) | ({images.TORCH_IMAGE} if set(selected) & set(images.TRAINING_IMAGES) else set())
    return [image for image in images.IMAGES if image in wanted]


def build(selected: list[str], allow_unpinned: bool, engine: str = "", base: str = "",
          registry: str | None = None) -> list[str]:
    """Build ``selected`` (and the torch image they start from); returns the references built.

    ``base``: build on this base image instead of the pinned one (``make images-base`` makes
    local/debian:bookworm where no registry is reachable); the images are then named under
    ``registry`` (``local`` for a local base), never pushed.
    """
    digests = check.base_digests()
    order = build_order(selected)
    unpinned = sorted(image for image in order if digests.get(image) == PLACEHOLDER_DIGEST)
    if unpinned and not allow_unpinned and not base:
        raise Failure(f"the base image of {', '.join(unpinned)} is not pinned (placeholder digest): run "
                      "make images-pin, or build on the bare tag with IMAGES_ALLOW_UNPINNED=1 (not reproducible), "
                      "or on a local base: make images-base")
    tool = find_engine(engine)
    built = []
    for image in order:
        ref = images.image_ref(image, registry)
        cmd = [tool, "build"] if tool != "buildah" else [tool, "build", "--layers"]
        cmd += ["--platform", "linux/amd64", "-f", str(check.image_dir(image) / "Dockerfile"), "-t", ref,
                "--build-arg", f"VERSION={images.image_tag()}", "--build-arg", f"SOURCE={images.SOURCE_URL}"]
        if base:  # the local base's daemon (images/engine.py) has no bridge: RUN steps use the host's network
            cmd += ["--network", "host"]
        if check.on_torch(image):
            cmd += ["--build-arg", f"TORCH_IMAGE={images.image_ref(images.TORCH_IMAGE, registry)}"]
        elif base:
            cmd += ["--build-arg", f"BASE_IMAGE={base}"]
        elif digests[image] == PLACEHOLDER_DIGEST:
            cmd += ["--build-arg", f"BASE_IMAGE={images.BASE_IMAGE}"]
        cmd.append(str(ROOT))
        print("+", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode:
            raise Failure(f"building {ref} with {tool} failed (output above)")
        built.append(ref)
    for ref in built:
        print(f"built {ref}")
    return built


def push(selected: list[str], engine: str = "") -> None:
    """Push the built images to their registry (log in first: docker/podman login, buildah login)."""
    refs = [images.image_ref(image) for image in build_order(selected)]
    local = [ref for ref in refs if ref.startswith("local/")]
    if local:
        raise Failure(f"refusing to push {', '.join(local)}: images on a local base are for this machine only "
                      "(they may carry its trust store); build on the pinned base to push")
    tool = find_engine(engine)
    for ref in refs:
        cmd = [tool, "push", ref]
        print("+", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode:
            raise Failure(f"pushing {ref} with {tool} failed (output above; logged in to the registry?)")
        print(f"pushed {ref}")


# --- pin -------------------------------------------------------------------------------------

def _digest_commands(ref: str) -> list[tuple[str, list[list[str]]]]:
    return [
        ("skopeo", [["skopeo", "inspect", "--format", "{{.Digest}}", f"docker://{ref}"]]),
        ("crane", [["crane", "digest", ref]]),
        ("docker", [["docker", "buildx", "version"],
                    ["docker", "buildx", "imagetools", "inspect", ref, "--format", "{{json .Manifest.Digest}}"]]),
        ("podman", [["podman", "pull", "--quiet", ref],
                    ["podman", "image", "inspect", "--format", "{{.Digest}}", ref]]),
    ]


def resolve_digest(ref: str) -> str:
    why = []
    for tool, commands in _digest_commands(ref):
        if not shutil.which(tool):
            why.append(f"{tool}: not installed")
            continue
        procs = []
        try:
            for cmd in commands:  # each step runs only when the one before it worked
                procs.append(_run(cmd, timeout=300))
                if procs[-1].returncode:
                    break
        except subprocess.TimeoutExpired:
            why.append(f"{tool}: no answer in 300 s")
            continue
        found = re.search(r"sha256:[0-9a-f]{64}", procs[-1].stdout)
        if procs[-1].returncode == 0 and found:
            return found.group(0)
        why.append(f"{tool}: '{' '.join(procs[-1].args[:3])}' failed ({_tail(procs[-1])})")
    raise Failure(f"could not resolve {ref} to a digest (" + "; ".join(why) + "); "
                  "where no registry is reachable, set it by hand: make images-pin DIGEST=sha256:<64 hex>")


def pin(digest: str = "") -> None:
    digest = digest or resolve_digest(images.BASE_IMAGE)
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest) or digest == PLACEHOLDER_DIGEST:
        raise Failure(f"DIGEST={digest!r} is not a sha256:<64 hex> image digest")
    for image in check.base_digests():  # the training images start from the torch image
        path = check.image_dir(image) / "Dockerfile"
        text, n = re.subn(r"^ARG BASE_IMAGE=.*$", f"ARG BASE_IMAGE={images.BASE_IMAGE}@{digest}",
                          path.read_text(), count=1, flags=re.M)
        if n != 1:
            raise Failure(f"{check._rel(path)}: no 'ARG BASE_IMAGE=' line to pin")
        path.write_text(text)
    print(f"pinned {images.BASE_IMAGE}@{digest} in {len(check.base_digests())} Dockerfiles")


# --- lock ------------------------------------------------------------------------------------

def _constraint(name: str) -> str:
    version = check.constraints().get(name)
    if version is None:
        raise Failure(f"{name} has no exact version in requirements/constraints.txt")
    return f"=={version}"


def lock(image: str) -> None:
    declared = check.pyproject_requirements()
    names = check.wanted(image)
    with tempfile.TemporaryDirectory() as tmp:
        # the input is named requirements.in: the lock's annotations read "via -r requirements.in"
        lines = [f"{name}{declared[name].specifier if name in declared else ''}"
                 for name in names if name not in check.BUILT_AGAINST_TORCH]
        (Path(tmp) / "requirements.in").write_text("\n".join(lines) + "\n")
        # the constraints under their repository path too: annotations read "-c requirements/constraints.txt"
        (Path(tmp) / "requirements").mkdir()
        shutil.copy(ROOT / "requirements/constraints.txt", Path(tmp) / "requirements/constraints.txt")
        out = Path(tmp) / "requirements.lock"
        cmd = [check.locks.uv(), "pip", "compile", "--no-config", "--quiet", "--generate-hashes",
               "--index-url", check.INDEX_URL,
               "--python-platform", check.locks.PLATFORM, "--python-version", images.PYTHON_VERSION,
               "--only-binary", ":all:", "--constraint", "requirements/constraints.txt",
               "--custom-compile-command", "make images-lock", "--output-file", str(out), "requirements.in"]
        for name in SOURCE_ONLY:
            cmd += ["--no-binary", name]
        proc = _run(cmd, timeout=600, cwd=tmp, env={**os.environ, "UV_CACHE_DIR": str(ROOT / ".cache/uv")})
        if proc.returncode:
            raise Failure(f"images/{image}: uv pip compile failed: {_tail(proc)}")
        wheels, sources = split_blocks(out.read_text(), SOURCE_ONLY)
        for name in check.BUILT_AGAINST_TORCH:
            if name in names:
                sources.append(sdist_block(image, name, _constraint(name), tmp))
    (check.image_dir(image) / "requirements.lock").write_text(wheels)
    if not sources:  # the torch image: wheels only
        (check.image_dir(image) / "source.lock").unlink(missing_ok=True)
        print(f"locked images/{image}")
        return
    (check.image_dir(image) / "source.lock").write_text(
        "# Packages PyPI has only as source. The Dockerfile installs them after requirements.lock\n"
        "# (which holds their dependencies and setuptools) with\n"
        "#   pip install --require-hashes --no-deps --no-build-isolation -r source.lock\n"
        "# Written by make images-lock.\n" + "".join(sorted(sources)))
    print(f"locked images/{image}")


def split_blocks(text: str, names: tuple[str, ...]) -> tuple[str, list[str]]:
    """Take the entries (pin, hashes, annotations) of ``names`` out of a uv lock."""
    kept, taken, block, into = [], [], [], None
    for line in text.splitlines(keepends=True):
        if line[:1] not in (" ", "") and not line.startswith("#"):
            if block:
                (taken if into else kept).append("".join(block))
            block, into = [], check.canonicalize_name(re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0]) in names
        if block or into is not None:
            block.append(line)
        else:
            kept.append(line)
    if block:
        (taken if into else kept).append("".join(block))
    return "".join(kept), taken


def sdist_block(image: str, name: str, spec: str, tmp: str) -> str:
    """Download ``name`` as an sdist from the registry and pin it by its sha256."""
    dest = Path(tmp) / "sdist"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", name,
           "--no-build-isolation", "--index-url", check.INDEX_URL, "-d", str(dest), f"{name}{spec}"]
    proc = _run(cmd, timeout=600, env={**check.pip_env(), "DS_BUILD_OPS": "0"})
    files = sorted(dest.glob("*")) if dest.exists() else []
    if proc.returncode or len(files) != 1:
        raise Failure(f"images/{image}: downloading the {name} sdist failed: {_tail(proc)}")
    digest = hashlib.sha256(files[0].read_bytes()).hexdigest()
    return (f"{name}{spec} \\\n    --hash=sha256:{digest}\n"
            "    # built against the installed torch (requirements.in lists its dependencies)\n")


# --- command line ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ("build", "push", "lock"):
        sub.add_parser(verb).add_argument("images", nargs="*", choices=[[], *images.IMAGES], metavar="IMAGE",
                                          help=f"some of {', '.join(images.IMAGES)} (default: all)")
    sub.add_parser("pin").add_argument("--digest", default=os.environ.get("DIGEST", ""),
                                       help="write this digest instead of resolving it")
    args = parser.parse_args(argv)
    selected = list(dict.fromkeys(getattr(args, "images", None) or images.IMAGES))
    try:
        if args.verb == "build" and os.environ.get("IMAGES_BASE"):
            # on a local base: named local/..., never pushed; the daemon started (and stopped) when none runs
            import engine

            with engine.docker_daemon():
                build(selected, False, "docker", base=engine.local_base(os.environ["IMAGES_BASE"]),
                      registry=engine.LOCAL_REGISTRY)
        elif args.verb == "build":
            build(selected, os.environ.get("IMAGES_ALLOW_UNPINNED") == "1", os.environ.get("IMAGES_ENGINE", ""))
        elif args.verb == "push":
            push(selected, os.environ.get("IMAGES_ENGINE", ""))
        elif args.verb == "pin":
            pin(args.digest)
        else:
            for image in selected:
                lock(image)
    except Exception as err:  # Failure, and the engine's EngineError
        if not isinstance(err, Failure) and type(err).__name__ != "EngineError":
            raise
        print(f"images {args.verb}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
