"""Shared fixtures: markers, a real S3 server (SeaweedFS) for storage tests, Label Studio, an MLflow server."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE.parent / "src"), str(_HERE)]  # test the working tree; tests/s3server.py

from labelstudio_server import LabelStudio, find_label_studio  # noqa: E402
from mlflow_server import MlflowServer, find_mlflow_server  # noqa: E402
from s3server import S3Server, find_weed  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than ~30 s")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)


_AWS_AMBIENT = ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server on 127.0.0.1 for the whole session (``.admin``, ``.reader``, ``.env()``)."""
    if find_weed() is None:
        pytest.fail("SeaweedFS `weed` binary not found (next to the Python interpreter or on PATH): "
                    "run `make install`", pytrace=False)
    with S3Server(tmp_path_factory.mktemp("s3server")) as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh bucket; AWS_* env vars point at the server as admin, isolated from ~/.aws."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.client(s3_server.admin).create_bucket(Bucket=name)
    for var in _AWS_AMBIENT:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var, value in s3_server.env(s3_server.admin).items():
        monkeypatch.setenv(var, value)
    return name


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    """A real Label Studio on 127.0.0.1 for the whole session (SQLite; its own venv)."""
    if find_label_studio() is None:
        pytest.fail("Label Studio not found in .venv-label-studio: run `make label-studio-install`", pytrace=False)
    with LabelStudio(tmp_path_factory.mktemp("label-studio")) as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server on 127.0.0.1 for the whole session (SQLite; its own venv)."""
    if find_mlflow_server() is None:
        pytest.fail("MLflow not found in .venv-mlflow: run `make mlflow-server-install`", pytrace=False)
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server
