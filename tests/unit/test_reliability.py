"""Checkpoint rotation, resume settings, the local lock, exit codes and the storage retry budget."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kuberlhf.artifacts import checkpoints, lease, rundir, s3, storage
from kuberlhf.errors import EXIT_TRANSIENT, AlreadyFinished, ConfigError, KuberlhfError, TransientStorageError


def _checkpoint(run: rundir.RunDir, step: int, sealed: bool = True, settings: dict | None = None) -> Path:
    path = run.checkpoints / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "state.json").write_text(str(step))
    if sealed:
        storage.write_manifest(path, extra={"run": {"stage": "sft", "settings": settings}} if settings else None)
    return path


def test_rotation_counts_only_sealed_checkpoints(tmp_path: Path) -> None:
    """keep=1: a newer checkpoint cut off mid-save (no manifest) must not push out the one just sealed."""
    run = rundir.RunDir(str(tmp_path / "out"), tmp_path / "out")
    _checkpoint(run, 1)
    _checkpoint(run, 2)
    _checkpoint(run, 5, sealed=False)  # a killed run's partial save
    new = _checkpoint(run, 3, sealed=False)
    checkpoints.seal_checkpoint(run, new.name, keep=1)
    left = sorted(p.name for p in run.checkpoints.iterdir())
    assert "checkpoint-3" in left and storage.is_complete(str(new)), left
    assert "checkpoint-1" not in left and "checkpoint-2" not in left
    assert rundir.latest_checkpoint(run) == str(new)


def test_rotation_keeps_older_ones_until_enough_are_sealed(tmp_path: Path) -> None:
    run = rundir.RunDir(str(tmp_path / "out"), tmp_path / "out")
    _checkpoint(run, 1)
    _checkpoint(run, 2, sealed=False)
    checkpoints.seal_checkpoint(run, _checkpoint(run, 3, sealed=False).name, keep=2)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


def test_the_trainer_does_not_rotate_before_the_seal() -> None:
    """HF's own rotation runs before on_save seals the new checkpoint: it is off, the seal rotates."""
    from kuberlhf.stages.registry import load_stage_config
    from kuberlhf.stages.trainer import trainer_kwargs

    cfg = load_stage_config("sft", "configs/sft/demo.yaml", ["output_dir=x", "training.save_total_limit=1"])
    assert trainer_kwargs(cfg.training, "x")["save_total_limit"] is None


def test_resume_refuses_a_checkpoint_of_other_settings_naming_the_keys(tmp_path: Path) -> None:
    made = {"training.learning_rate": 1e-4, "training.max_steps": 500, "data.train": "a.jsonl"}
    run = rundir.RunDir(str(tmp_path / "out"), tmp_path / "out", "sft",
                        {"training.learning_rate": 3e-4, "training.max_steps": 6, "data.train": "a.jsonl"})
    _checkpoint(run, 4, settings=made)
    with pytest.raises(ConfigError, match=r"config key 'training.learning_rate': checkpoint checkpoint-4 .* "
                                          r"\(training.learning_rate changed\); pass resume=force"):
        rundir.latest_checkpoint(run)
    run.force_resume = True
    assert rundir.latest_checkpoint(run).endswith("checkpoint-4")
    run = rundir.RunDir(run.output_dir, run.work_dir, "sft", {**made, "training.max_steps": 6})  # may change
    assert rundir.latest_checkpoint(run).endswith("checkpoint-4")


def test_run_settings_leave_out_what_does_not_change_the_result() -> None:
    from kuberlhf.stages.registry import load_stage_config

    a = load_stage_config("sft", "configs/sft/demo.yaml", ["output_dir=x", "training.logging_steps=1"])
    b = load_stage_config("sft", "configs/sft/demo.yaml", ["output_dir=x", "training.logging_steps=7",
                                                           "storage.max_attempts=2", "overwrite=true"])
    c = load_stage_config("sft", "configs/sft/demo.yaml", ["output_dir=x", "training.learning_rate=0.5"])
    assert rundir.changed_keys(rundir.run_settings(a), rundir.run_settings(b)) == []
    assert rundir.changed_keys(rundir.run_settings(a), rundir.run_settings(c)) == ["training.learning_rate"]


def test_a_finished_artifact_of_the_same_settings_is_already_finished(tmp_path: Path) -> None:
    from kuberlhf.stages.registry import load_stage_config

    cfg = load_stage_config("sft", "configs/sft/demo.yaml", [f"output_dir={tmp_path / 'out'}"])
    run = rundir.prepare_run(cfg.output_dir, "sft", False, cfg=cfg)
    (run.staging).mkdir(parents=True)
    (run.staging / "metrics.json").write_text('{"train_loss": 1.5}')
    storage.publish_dir(run.staging, cfg.output_dir, extra=run.record())
    run.finish()
    with pytest.raises(AlreadyFinished) as done:
        rundir.prepare_run(cfg.output_dir, "sft", False, cfg=cfg)
    assert done.value.exit_code == 0 and done.value.metrics == {"train_loss": 1.5}


def test_a_second_process_on_the_same_output_dir_is_refused(tmp_path: Path) -> None:
    """The lock lives as long as the process holding it: a killed run's lock is gone with it."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from kuberlhf.artifacts import rundir
        rundir.prepare_run({str(out)!r}, "sft", False)
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(KuberlhfError, match=r"is being written by pid \d+ on this machine"):
            rundir.prepare_run(str(out), "sft", False)
    finally:
        holder.kill()
        holder.wait()
    run = rundir.prepare_run(str(out), "sft", False)  # the killed holder's lock went with it
    run.finish()


def test_a_folder_of_someone_elses_files_is_refused(tmp_path: Path) -> None:
    """A publish removes what the manifest does not list: a folder that is no kuberlhf run's (a git
    checkout, a home directory: dot-files are no marker) is refused before anything is written."""
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".git").mkdir()
    with pytest.raises(KuberlhfError, match=r"holds files \('.git', ...\) but no kuberlhf run"):
        rundir.prepare_run(str(tmp_path), "sft", False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_overwrite_discards_checkpoints_also_without_a_finished_artifact(tmp_path: Path) -> None:
    """The refusal of a checkpoint of other settings says overwrite=true starts again: it must."""
    run = rundir.RunDir(str(tmp_path / "out"), tmp_path / "out")
    _checkpoint(run, 3, settings={"training.learning_rate": 1.0})
    run = rundir.prepare_run(run.output_dir, "sft", True)
    assert not run.checkpoints.exists() and rundir.latest_checkpoint(run) is None
    run.finish()


def test_a_resume_past_damaged_checkpoints_removes_them_so_rotation_keeps_the_good_ones(tmp_path: Path) -> None:
    run = rundir.RunDir(str(tmp_path / "out"), tmp_path / "out")
    _checkpoint(run, 1000)
    damaged = _checkpoint(run, 1500)
    (damaged / "state.json").write_text("changed")  # no longer what its manifest says
    assert rundir.resume_point(run).endswith("checkpoint-1000")
    assert not damaged.exists()
    checkpoints.seal_checkpoint(run, _checkpoint(run, 1001, sealed=False).name, keep=1)
    assert rundir.latest_checkpoint(run).endswith("checkpoint-1001")


def test_network_failures_are_transient_and_exit_200() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

    from kuberlhf.artifacts.s3 import _translate

    for exc in (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), ReadTimeoutError(endpoint_url="x"),
                ClientError({"Error": {"Code": "SlowDown"}}, "PutObject"),
                ClientError({"Error": {"Code": "SlowDownWrite"}}, "PutObject"),
                ClientError({"Error": {"Code": "Whatever"}, "ResponseMetadata": {"HTTPStatusCode": 429}}, "GetObject"),
                ClientError({"Error": {"Code": "503"}}, "GetObject")):
        err = _translate(exc, "s3://b/x", "uploading to")
        assert isinstance(err, TransientStorageError) and err.exit_code == EXIT_TRANSIENT == 200, exc
    for exc in (ClientError({"Error": {"Code": "AccessDenied"}}, "PutObject"),
                ClientError({"Error": {"Code": "NoSuchBucket"}}, "PutObject")):
        err = _translate(exc, "s3://b/x", "uploading to")
        assert not isinstance(err, TransientStorageError) and err.exit_code == 2, exc


def test_retrying_rides_out_an_outage_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from kuberlhf.artifacts import s3

    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientStorageError("object store unavailable")
        return "sealed"

    assert s3.retrying(flaky, "sealing", s3.StorageOptions(retry_budget_s=60)) == "sealed" and len(calls) == 3
    with pytest.raises(TransientStorageError, match=r"gave up sealing after storage.retry_budget_s=0"):
        s3.retrying(lambda: (_ for _ in ()).throw(TransientStorageError("down")), "sealing",
                    s3.StorageOptions(retry_budget_s=0))
    with pytest.raises(storage.StorageError, match="denied"):  # not transient: no retry
        s3.retrying(lambda: (_ for _ in ()).throw(storage.StorageError("denied")), "sealing")


def test_the_lease_names_its_holder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERLHF_RUN_ID", "job-a")
    assert lease.run_id() == "job-a"
    monkeypatch.delenv("KUBERLHF_RUN_ID")
    import socket

    assert lease.run_id() == socket.gethostname()


def test_an_object_store_that_does_not_answer_is_named_at_the_first_failure(monkeypatch, caplog):
    """Seen: an unreachable endpoint kept a stage silent for its whole retry budget (botocore's retries,
    then retrying()'s). The first failed request names the address, the reason and how long retries go on."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(s3, "_unanswered", set())
    opts = s3.StorageOptions(endpoint_url=f"http://127.0.0.1:{port}", access_key_id="k", secret_access_key="s",
                             max_attempts=3, timeout_s=2, retry_budget_s=120)
    from botocore.exceptions import EndpointConnectionError

    with caplog.at_level("WARNING", logger="kuberlhf.artifacts.s3"), pytest.raises(EndpointConnectionError):
        s3.s3_client(opts).list_buckets()
    said = [r.getMessage() for r in caplog.records if "does not answer" in r.getMessage()]
    assert len(said) == 1, said  # once, though the request was tried three times
    assert said[0].startswith(f"object store http://127.0.0.1:{port} does not answer (EndpointConnectionError: ")
    assert "tried 3 times (2 s timeout)" in said[0] and "storage.retry_budget_s=120 s" in said[0]
