"""The object store failing under a run: outages ridden out within the retry budget, or exit 200 (retryable);
never an artifact or checkpoint that looks complete and is not. Also: the remote resume falls back past a
damaged checkpoint, and the lease keeps a second job off an output_dir. Real S3 server, a TCP fault proxy."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import run_cli, sft_args

from kuberlhf.artifacts import lease, rundir, storage
from kuberlhf.errors import KuberlhfError, TransientStorageError


@pytest.fixture
def proxy(s3_server: Any, s3_bucket: str, monkeypatch: pytest.MonkeyPatch):
    host, port = s3_server.endpoint_url.removeprefix("http://").split(":")
    with FaultProxy((host, int(port))) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.endpoint)
        yield p
    storage.configure(None)


def _options(budget: float) -> storage.StorageOptions:
    return storage.StorageOptions(max_attempts=2, retry_budget_s=budget, timeout_s=2)


def _artifact(root: Path, files: int = 30, size: int = 200_000) -> Path:
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"shard-{i:02d}.bin").write_bytes(bytes([i]) * size)
    return root


@pytest.mark.parametrize("mode", ["down", "reset", "stall"])
def test_a_publish_rides_out_a_short_outage(proxy: FaultProxy, s3_bucket: str, tmp_path: Path, mode: str) -> None:
    src, uri = _artifact(tmp_path / "a"), f"s3://{s3_bucket}/ride-{mode}"
    storage.configure(_options(budget=60))
    threading.Timer(0.1, proxy.outage, args=(4.0, mode)).start()
    started = time.monotonic()
    manifest = storage.publish_dir(src, uri)
    assert time.monotonic() - started > 3.0, "the outage did not hit the upload"
    local = storage.download_dir(uri, tmp_path / "copy")
    assert storage.verify_local(local)["files"] == manifest["files"]


def test_an_outage_longer_than_the_budget_leaves_nothing_that_looks_complete(proxy: FaultProxy, s3_bucket: str,
                                                                             tmp_path: Path) -> None:
    src, uri = _artifact(tmp_path / "a"), f"s3://{s3_bucket}/gave-up"
    storage.configure(_options(budget=2))
    proxy.cut_after = 1_500_000  # mid-upload: reset, then the store is gone for good
    threading.Timer(0.2, proxy.outage, args=(3600.0, "down")).start()
    with pytest.raises(TransientStorageError, match=r"gave up publishing .* storage.retry_budget_s=2") as err:
        storage.publish_dir(src, uri)
    assert err.value.exit_code == 200
    proxy.mode = "pass"
    storage.configure(None)
    assert not storage.is_complete(uri)
    with pytest.raises(storage.StorageError, match="incomplete artifact"):
        storage.download_dir(uri, tmp_path / "copy")


def test_a_stage_exits_200_when_the_store_stays_away(proxy: FaultProxy, s3_bucket: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERLHF_CACHE", str(tmp_path / "cache"))
    proxy.mode = "down"
    code, err = run_cli(sft_args(f"s3://{s3_bucket}/runs/sft", "training.max_steps=1", "storage.max_attempts=1",
                                 "storage.timeout_s=1", "storage.retry_budget_s=2"), capture=True)
    assert code == 200 and "object store unavailable" in err and "gave up" in err, err[-2000:]


def test_a_download_cut_mid_way_is_refused_then_completed(proxy: FaultProxy, s3_bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/dl"
    storage.upload_dir(_artifact(tmp_path / "a", files=4, size=3_000_000), uri)
    storage.configure(_options(budget=30))
    threading.Timer(0.2, proxy.outage, args=(2.0, "reset")).start()
    local = storage.retrying(lambda: storage.download_dir(uri, tmp_path / "copy"), "downloading")
    storage.verify_local(local)
    assert not [p for p in local.rglob("*") if p.name.endswith(".part")]


def test_remote_resume_falls_back_past_a_checkpoint_with_a_missing_object(s3_server: Any, s3_bucket: str,
                                                                          tmp_path: Path) -> None:
    out = f"s3://{s3_bucket}/runs/fallback"
    run = rundir.RunDir(out, tmp_path / "work")
    for step in (2, 4):
        storage.upload_dir(_artifact(tmp_path / f"c{step}", files=2, size=10), f"{out}/checkpoints/checkpoint-{step}")
    s3_server.client().delete_object(Bucket=s3_bucket, Key="runs/fallback/checkpoints/checkpoint-4/shard-01.bin")
    assert Path(rundir.latest_checkpoint(run)).name == "checkpoint-2"


def test_a_second_job_on_a_leased_output_dir_is_refused(s3_bucket: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = f"s3://{s3_bucket}/runs/leased"
    monkeypatch.setenv("KUBERLHF_CACHE", str(tmp_path / "cache-a"))
    monkeypatch.setenv("KUBERLHF_RUN_ID", "job-a")
    a = rundir.prepare_run(out, "sft", False)
    a.check_lease()  # its own: renewed
    monkeypatch.setenv("KUBERLHF_CACHE", str(tmp_path / "cache-b"))  # another machine
    monkeypatch.setenv("KUBERLHF_RUN_ID", "job-b")
    with pytest.raises(KuberlhfError, match=r"leased by run 'job-a' \(renewed \d+ s ago\)"):
        rundir.prepare_run(out, "sft", False)
    lease.acquire(out, ttl_s=1e-6)  # job-a stopped renewing long enough ago: job-b takes over
    monkeypatch.setenv("KUBERLHF_RUN_ID", "job-a")
    with pytest.raises(KuberlhfError, match=r"lost the lease of .* to run 'job-b'"):
        a.check_lease()
    monkeypatch.setenv("KUBERLHF_RUN_ID", "job-a")  # the same job's restarted pod may take its own lease back
    lease.release(a.work_dir)


def test_the_pods_launcher_keeps_a_workers_retryable_exit_code(s3_bucket: str, tmp_path: Path) -> None:
    """Plain torchrun exits 1 when a worker fails, which restartPolicy ExitCode reads as permanent; the
    pods' launcher (``python -m kuberlhf.torchrun``, the PyTorchJob command) exits with the worker's 200."""
    import subprocess
    import sys

    from helpers import subprocess_env

    argv = sft_args(f"s3://{s3_bucket}/runs/down", "training.max_steps=1", "storage.endpoint_url=http://127.0.0.1:9",
                    "storage.max_attempts=1", "storage.timeout_s=1", "storage.retry_budget_s=1")
    proc = subprocess.run([sys.executable, "-m", "kuberlhf.torchrun", "--nproc_per_node=2", "-m", "kuberlhf.cli",
                           *argv], env=subprocess_env(KUBERLHF_CACHE=str(tmp_path / "cache")), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 200, proc.stderr[-2000:]
