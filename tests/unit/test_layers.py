"""The layers of docs/architecture.md hold: import-linter's contracts (pyproject.toml) pass, and each fails
when a forbidden import is added to a copy of the package."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root/src`` with ``root/pyproject.toml``'s contracts."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_import_contracts_pass():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, line, contract",
    [
        ("rlhf/value.py", "from kuberlhf.stages import registry", "Layers of docs/architecture.md"),
        ("models/loading.py", "import kfp", "Only the Kubeflow layer imports kfp"),
        ("stages/sft.py", "from kuberlhf.k8s import spec", "Training code never talks to Kubernetes"),
        ("models/loading.py", "from kuberlhf.demo import models", "The demo task plugs in"),
        ("workflow/configs.py", "from kuberlhf.workflow import steps", "No import cycles"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tmp_path, module, line, contract):
    shutil.copytree(REPO / "src" / "kuberlhf", tmp_path / "src" / "kuberlhf",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "src" / "kuberlhf" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(row.startswith(contract) for row in broken), result.stdout


def _module_of(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, src: Path) -> bool:
    path = src.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _imported_from(node: ast.ImportFrom, here: str, package: bool) -> str:
    """The absolute module of ``from <module> import ...`` in module ``here`` (a package's ``__init__`` when
    ``package``), relative imports too."""
    if not node.level:
        return node.module or ""
    parts = here.split(".") if package else here.split(".")[:-1]
    return ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None for anything but names and attributes."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return [node.id, *reversed(names)] if isinstance(node, ast.Name) else None


def private_uses(src: Path) -> list[str]:
    """Where a module under ``src/kuberlhf`` uses another kuberlhf module's ``_private`` name, as ``file:line name``:
    ``from kuberlhf.x import _name``, or ``x._name`` on a kuberlhf module ``x`` it imported."""
    found = []
    for path in sorted((src / "kuberlhf").rglob("*.py")):
        here, tree = _module_of(path, src), ast.parse(path.read_text(), str(path))
        where, package = path.relative_to(src.parent), path.name == "__init__.py"
        modules = {}  # a name this file binds to a kuberlhf module -> that module
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "kuberlhf":
                        modules[alias.asname or "kuberlhf"] = alias.name if alias.asname else "kuberlhf"
            elif isinstance(node, ast.ImportFrom):
                base = _imported_from(node, here, package)
                for alias in node.names if base.split(".")[0] == "kuberlhf" else ():
                    if _is_module(f"{base}.{alias.name}", src):
                        modules[alias.asname or alias.name] = f"{base}.{alias.name}"
                    elif _is_private(alias.name) and base != here:
                        found.append(f"{where}:{node.lineno} {base}.{alias.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                chain = _dotted(node.value)
                if chain and chain[0] in modules:
                    owner = ".".join([modules[chain[0]], *chain[1:]])
                    if owner != here and _is_module(owner, src):
                        found.append(f"{where}:{node.lineno} {owner}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    """A helper one module lends another is public API of its owner (no underscore, a docstring), or it lives
    in the module that uses it: a private name is free to change without looking elsewhere."""
    found = private_uses(REPO / "src")
    assert not found, "private names used outside their module:\n" + "\n".join(found)


def test_the_private_name_check_sees_imports_and_attributes(tmp_path):
    package = tmp_path / "src" / "kuberlhf"
    (package / "x").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "x" / "__init__.py").write_text("_shared = 1\n")
    (package / "x" / "own.py").write_text("_mine = 1\n\n\ndef f():\n    return _mine\n")
    (package / "x" / "near.py").write_text("from . import own\nfrom .own import _mine\n\nprint(own._mine, _mine)\n")
    (package / "user.py").write_text("from kuberlhf.x import _shared, own\nimport kuberlhf.x.own as o\n"
                                     "import kuberlhf.x.own\nfrom kuberlhf import __version__\n\n"
                                     "print(own._mine, o._mine, kuberlhf.x.own._mine, own.__name__, _shared,\n"
                                     "      print._x)\n")
    assert private_uses(tmp_path / "src") == [
        "src/kuberlhf/user.py:1 kuberlhf.x._shared", *["src/kuberlhf/user.py:6 kuberlhf.x.own._mine"] * 3,
        "src/kuberlhf/x/near.py:2 kuberlhf.x.own._mine", "src/kuberlhf/x/near.py:4 kuberlhf.x.own._mine"]
