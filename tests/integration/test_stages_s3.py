"""Stages reading and writing s3:// on a real S3 server (SeaweedFS, credentials enforced)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from helpers import cli_command, run, run_cli, sft_args, subprocess_env
from test_distributed import _kill_after_first_checkpoint


def test_sft_writes_a_complete_artifact_to_s3_and_reward_reads_data_from_s3(s3_bucket, tmp_path, monkeypatch):
    from kuberlhf.artifacts import storage

    monkeypatch.setenv("KUBERLHF_CACHE", str(tmp_path / "cache"))
    uri = f"s3://{s3_bucket}/runs/sft"
    assert run_cli(sft_args(uri, "training.max_steps=3", "training.save_steps=2")) == 0
    assert storage.is_complete(uri)
    assert storage.list_subdirs(f"{uri}/checkpoints") == ["checkpoint-2", "checkpoint-3"]
    local = storage.fetch_dir(uri, tmp_path / "fetched")
    metrics = json.loads((local / "metrics.json").read_text())
    assert metrics["global_step"] == 3
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(local)

    # A later stage starts from the s3:// artifact, with its data on s3:// too.
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"question": f"Say hi {i}.", "response": "hi there."}) + "\n" for i in range(16)))
    storage.s3_client().upload_file(str(data), s3_bucket, "data/sft.jsonl")
    out2 = f"s3://{s3_bucket}/runs/sft2"
    argv = sft_args(out2, f"model.name_or_path={uri}", f"data.train=s3://{s3_bucket}/data/sft.jsonl", "data.eval=null")
    assert run_cli([*argv, "training.max_steps=2"]) == 0
    assert storage.is_complete(out2)


@pytest.mark.faults
def test_killed_s3_run_resumes_on_a_fresh_machine(s3_bucket, tmp_path, monkeypatch):
    from kuberlhf.artifacts import storage

    uri = f"s3://{s3_bucket}/runs/resume"
    cache = tmp_path / "cache"
    monkeypatch.setenv("KUBERLHF_CACHE", str(cache))  # inherited by the subprocesses
    cmd = cli_command(*sft_args(uri, "training.max_steps=200", "training.save_steps=5", "training.save_total_limit=2"))
    _kill_after_first_checkpoint(cmd, lambda: storage.is_complete(f"{uri}/checkpoints/checkpoint-5"), timeout=300)
    assert not storage.is_complete(uri)
    shutil.rmtree(cache)  # a new pod: nothing local survives, only what is in object storage
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert storage.is_complete(uri)
    metrics = json.loads(storage.open_uri(f"{uri}/metrics.json").read())
    assert metrics["resumed_from_step"] >= 5 and metrics["global_step"] == 200
    # Rotation keeps save_total_limit checkpoints in the bucket too.
    assert len(storage.list_subdirs(f"{uri}/checkpoints")) == 2


def test_wrong_credentials_are_refused(s3_bucket, s3_server, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    proc = run(cli_command(*sft_args(f"s3://{s3_bucket}/runs/denied", "training.max_steps=1")), timeout=300)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "credentials" in proc.stderr.lower()


def test_read_only_identity_cannot_publish(s3_bucket, s3_server, monkeypatch, tmp_path):
    for var, value in s3_server.env(s3_server.reader).items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("KUBERLHF_CACHE", str(tmp_path / "cache"))
    code, err = run_cli(sft_args(f"s3://{s3_bucket}/runs/ro", "training.max_steps=1"), capture=True)
    assert code == 2 and "denied" in err.lower()


def test_missing_credentials_are_named(s3_bucket, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    code, err = run_cli(sft_args(f"s3://{s3_bucket}/runs/nocreds", "training.max_steps=1"), capture=True)
    assert code == 2 and "AWS_ACCESS_KEY_ID" in err
