"""The images' locks resolve on the package registry for linux x86_64 and the images' Python.

`pip install --dry-run --report` (images/check.py:resolve_errors) with every manylinux tag,
and the file pip picks must carry a locked hash. Skipped, with the reason, when the
registry cannot be reached.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "images"))

import check  # noqa: E402  (images/check.py)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry() -> None:
    reason = check.registry_unreachable()
    if reason:
        pytest.skip(f"skipped: {reason}")


def test_every_lock_resolves(registry):
    assert check.resolve_errors() == []


def test_resolution_catches_a_wrong_hash_and_a_missing_version(registry, tmp_path, monkeypatch):
    """A lock whose hash is not the registry's file, or whose version does not exist, is reported."""
    lock = check.parse_lock(ROOT / "images/launcher/requirements.lock")[0]
    six, idna = lock["six"], lock["idna"]
    (tmp_path / "launcher").mkdir()
    (tmp_path / "launcher/source.lock").write_text("# nothing\n")
    monkeypatch.setattr(check, "IMAGES_DIR", tmp_path)

    def write(*lines: str) -> None:
        (tmp_path / "launcher/requirements.lock").write_text("\n".join(lines) + "\n")

    hashes = " ".join(f"--hash={h}" for h in sorted(idna.hashes))
    write(f"six=={six.version} --hash=sha256:{'0' * 64}", f"idna=={idna.version} {hashes}")
    errors = check.resolve_errors(["launcher"])
    assert len(errors) == 1 and "is not among the locked hashes of six" in errors[0], errors

    write(f"six==999.0 --hash=sha256:{'0' * 64}", f"idna=={idna.version} {hashes}")
    errors = check.resolve_errors(["launcher"])
    assert errors and "do not resolve" in errors[0], errors


def test_source_lock_hash_is_checked(registry, tmp_path, monkeypatch):
    shutil.copytree(ROOT / "images/ppo", tmp_path / "ppo")
    source = tmp_path / "ppo/source.lock"
    text = source.read_text()
    digest = next(iter(check.parse_lock(source)[0]["kfp-server-api"].hashes))
    source.write_text(text.replace(digest, "sha256:" + "f" * 64))
    (tmp_path / "ppo/requirements.lock").write_text("")
    monkeypatch.setattr(check, "IMAGES_DIR", tmp_path)
    errors = check.resolve_errors(["ppo"])
    assert errors and "source.lock does not resolve" in errors[0] and "HASH" in errors[0].upper(), errors
