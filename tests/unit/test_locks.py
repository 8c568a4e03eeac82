"""The environments install from complete locks: what is installed is the lock, and the lock is whole.

requirements/locks.py writes the locks (`make lock`) and installs them (`make install`,
`make label-studio-install`, `make mlflow-server-install`); these tests check the environments the suite itself runs in,
and that each check catches the bad case it is for.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "requirements"))

import locks  # noqa: E402  (requirements/locks.py)

VENV = Path(sys.prefix)
LS_VENV = ROOT / ".venv-label-studio"
MLFLOW_VENV = ROOT / ".venv-mlflow"


def drop_pin(lock: Path, name: str) -> None:
    """Remove ``name``'s entry (pin, hashes, annotations) from a uv lock."""
    text = lock.read_text()
    new = re.sub(rf"(?ms)^{re.escape(name)}==.*?(?=^[a-z0-9])", "", text, count=1)
    assert new != text, f"{name} is not pinned in {lock}"
    lock.write_text(new)


@pytest.fixture
def req_copy(tmp_path, monkeypatch) -> Path:
    """A copy of requirements/ that the lock functions read instead of the real one."""
    copy = tmp_path / "requirements"
    shutil.copytree(ROOT / "requirements", copy, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    monkeypatch.setattr(locks, "REQ", copy)
    return copy


# --- the suite's own environment is its lock --------------------------------------------------

def test_suite_runs_in_the_project_venv():
    """The checks below read the environment the suite runs in: it must be the locked .venv."""
    assert (VENV / "pyvenv.cfg").exists(), f"the suite runs outside a virtualenv ({VENV}); run it with make test"
    assert sys.version_info[:2] == tuple(map(int, locks.PYTHON_VERSION.split("."))), \
        f"the suite runs on Python {sys.version_info[:2]}, the locks are resolved for {locks.PYTHON_VERSION}"


def test_installed_venv_is_exactly_its_lock():
    assert locks.drift(VENV, "venv") == []


def test_installed_venv_passes_pip_check():
    assert locks.pip_check(VENV) == []


def test_drift_names_a_changed_missing_and_extra_package(req_copy):
    lock = req_copy / "venv.lock"
    text = lock.read_text()
    lock.write_text(text.replace("\npyyaml==6", "\npyyaml==5", 1))
    drop_pin(lock, "tqdm")
    found = "\n".join(locks.drift(VENV, "venv"))
    assert "pyyaml 6" in found and "the lock says 5" in found
    assert "tqdm" in found and "installed but not in the lock" in found


# --- every lock is complete -------------------------------------------------------------------

def test_venv_lock_is_complete():
    assert locks.environment_closure_errors("venv", VENV) == []


def test_label_studio_lock_is_complete_and_installed():
    if not (LS_VENV / "bin" / "python").exists():
        pytest.skip("no .venv-label-studio (make label-studio-install; make test installs it)")
    assert locks.drift(LS_VENV, "label-studio") == []
    assert locks.pip_check(LS_VENV) == []
    assert locks.environment_closure_errors("label-studio", LS_VENV) == []


def test_mlflow_server_lock_is_complete_and_installed():
    if not (MLFLOW_VENV / "bin" / "python").exists():
        pytest.skip("no .venv-mlflow (make mlflow-server-install; make test installs it)")
    assert locks.drift(MLFLOW_VENV, "mlflow-server") == []
    assert locks.pip_check(MLFLOW_VENV) == []
    assert locks.environment_closure_errors("mlflow-server", MLFLOW_VENV) == []


def test_the_stages_mlflow_client_is_the_skinny_one():
    """The training environment logs with mlflow-skinny; the server's full mlflow (Flask, SQLAlchemy, pandas...)
    stays in its own lock."""
    venv, server = locks.environment_lock("venv"), locks.environment_lock("mlflow-server")
    assert "mlflow-skinny" in venv and not {"mlflow", "flask", "sqlalchemy", "alembic"} & set(venv)
    assert {"mlflow", "sqlalchemy"} <= set(server)


def test_a_lock_missing_one_transitive_pin_is_caught(req_copy):
    """aiohappyeyeballs is needed only through aiohttp (datasets, s3fs): a lock without it is not whole."""
    drop_pin(req_copy / "venv.lock", "aiohappyeyeballs")
    errors = locks.environment_closure_errors("venv", VENV)
    assert any("aiohttp==" in e and "requires aiohappyeyeballs" in e and "does not pin" in e for e in errors), errors


def test_a_pin_outside_a_range_and_a_stray_pin_are_caught(req_copy):
    lock = req_copy / "venv.lock"
    lock.write_text(lock.read_text() + "left-pad==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    locked = locks.environment_lock("venv")
    locked["transformers"] = locks.Locked("transformers", "4.0.0")
    errors = locks.closure_errors(locks.pyproject_roots(), locked, locks.site_metadata(VENV), "lock")
    assert any("requires transformers<6,>=5.0, the lock pins transformers==4.0.0" in e for e in errors), errors
    assert any("pins left-pad==1.0, which nothing requires" in e for e in errors), errors


def test_label_studio_lock_keeps_sentry_sdk_below_3():
    """label-studio 1.23.2 dies at start-up with sentry-sdk 3 (send_default_pii was removed)."""
    version = locks.environment_lock("label-studio")["sentry-sdk"].version
    assert int(version.split(".")[0]) < 3, version


def test_constraints_are_the_venv_lock():
    """constraints.txt (what the image locks resolve against) holds exactly the versions of .venv's lock."""
    pins = {}
    for line in (ROOT / "requirements/constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[locks.canonical(name)] = version
    assert pins == {name: entry.version for name, entry in locks.environment_lock("venv").items()}


def test_every_lock_is_hashed():
    for name in ("venv.lock", "venv-nodeps.lock", "label-studio.lock", "mlflow-server.lock"):
        entries, errors = locks.parse_lock(ROOT / "requirements" / name)
        assert entries and errors == [], errors


def test_drift_names_a_locked_package_that_is_not_installed_and_strays_lists_extras(req_copy):
    lock = req_copy / "venv.lock"
    lock.write_text(lock.read_text() + "left-pad==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    drop_pin(lock, "tqdm")
    assert "/.venv: left-pad==1.0 is locked but not installed" in "\n".join(locks.drift(VENV, "venv")).replace(
        str(VENV), "/.venv")
    assert locks.strays(VENV, "venv") == ["tqdm"]


def test_closure_follows_extras_and_markers_for_linux_and_the_locks_python():
    """Made-up metadata: an extra pulls its own requirements (names normalised), a Windows-only or
    Python-3.8-only requirement is not needed, a requirement of an extra nobody asks for is not needed."""
    metadata = {
        "app": ("1.0", ['lib[Fancy_X]>=2', 'winonly; sys_platform == "win32"', 'old; python_version < "3.9"',
                        'unasked; extra == "never"']),
        "lib": ("2.1", ['fancy-dep; extra == "fancy-x"', 'base-dep>=1']),
        "fancy-dep": ("0.3", []),
        "base-dep": ("1.2", []),
    }
    locked = {name: locks.Locked(name, version) for name, (version, _) in metadata.items()}
    assert locks.closure_errors(["app"], locked, metadata, "lock") == []
    without = {k: v for k, v in locked.items() if k != "fancy-dep"}
    assert locks.closure_errors(["app"], without, metadata, "lock") == [
        "lock: lib==2.1[fancy-x] requires fancy-dep; extra == \"fancy-x\", which the lock does not pin"]
    locked["base-dep"] = locks.Locked("base-dep", "0.9")
    assert "lock: lib==2.1 requires base-dep>=1, the lock pins base-dep==0.9" in locks.closure_errors(
        ["app"], locked, metadata, "lock")
