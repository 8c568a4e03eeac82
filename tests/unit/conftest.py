"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def hermetic_cluster(monkeypatch, tmp_path):
    """Run from the repo (configs/ paths as in the image), fixed image names, no mounted cluster.yaml."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("KUBERLHF_CLUSTER_CONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.delenv("KUBERLHF_IMAGE_REGISTRY", raising=False)
    monkeypatch.setenv("KUBERLHF_IMAGE_TAG", "0.0.0-test")
