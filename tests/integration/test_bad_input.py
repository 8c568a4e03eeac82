"""Bad input: a one-line error naming the key or row, a non-zero exit, nothing that looks finished."""

from __future__ import annotations

import json
import subprocess

from helpers import REPO, cli_command, run, sft_args, subprocess_env


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_unknown_config_key(tmp_path):
    out = tmp_path / "out"
    line = _one_line_error(run(cli_command(*sft_args(out, "training.learnig_rate=0.1"))))
    assert "unknown config key 'training.learnig_rate'" in line and "training.learning_rate" in line
    assert not out.exists()


def test_unknown_key_in_the_yaml_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text((REPO / "configs/sft/demo.yaml").read_text() + "packng: true\n")
    line = _one_line_error(run(cli_command("sft", "--config", cfg, f"output_dir={tmp_path / 'out'}")))
    assert "unknown config key 'packng'" in line


def test_malformed_row_is_named_and_nothing_is_published(tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [{"question": "Say hi.", "response": "hi."}] * 5
    rows[3] = {"question": "Say hi.", "response": "   "}
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    line = _one_line_error(run(cli_command(*sft_args(out, f"data.train={data}"))))
    assert f"{data} row 3" in line and "'response'" in line
    assert not (out / "manifest.json").exists() and not (out / "metrics.json").exists()


def test_malformed_rows_can_be_skipped_and_counted(tmp_path):
    data = tmp_path / "train.jsonl"
    lines = [json.dumps({"question": f"Say hi {i}.", "response": "hi."}) for i in range(20)]
    lines[2] = json.dumps({"question": "no response"})
    lines[7] = "{not json"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = run(cli_command(*sft_args(out, f"data.train={data}", "data.on_bad_row=skip", "training.max_steps=1")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads((out / "metrics.json").read_text())["data"]
    assert stats["rows_skipped"] == 2 and stats["rows_kept"] == 18


def test_bad_output_uri_and_missing_data(tmp_path):
    line = _one_line_error(run(cli_command(*sft_args("s3://", "training.max_steps=1"))))
    assert "s3://" in line
    line = _one_line_error(run(cli_command(*sft_args("gs://bucket/x", "training.max_steps=1"))))
    assert "gs://bucket/x" in line
    line = _one_line_error(run(cli_command(*sft_args(tmp_path / "o", f"data.train={tmp_path / 'absent.jsonl'}"))))
    assert "absent.jsonl" in line


def test_unloadable_model_is_named(tmp_path):
    line = _one_line_error(run(cli_command(*sft_args(tmp_path / "o", f"model.name_or_path={tmp_path / 'nomodel'}"))))
    assert "nomodel" in line


def test_a_mistyped_s3_uri_is_refused_and_never_becomes_a_local_folder(tmp_path):
    cases = {
        "output_dir=s3:/bucket/runs/sft": ("'output_dir'", "did you mean 's3://bucket/runs/sft'"),
        "output_dir=s3//bucket/runs/sft": ("'output_dir'", "did you mean 's3://bucket/runs/sft'"),
        "output_dir=s3:///runs/sft": ("'output_dir'", "empty bucket name"),
        "data.train=s3:/bucket/train.jsonl": ("'data.train'", "did you mean 's3://bucket/train.jsonl'"),
        "model.name_or_path=s3:bucket/sft": ("'model.name_or_path'", "did you mean 's3://bucket/sft'"),
    }
    for override, (key, hint) in cases.items():
        proc = subprocess.run(cli_command(*sft_args("unused", override)), cwd=tmp_path, capture_output=True, text=True,
                              env=subprocess_env(), timeout=300)
        line = _one_line_error(proc)
        assert key in line and hint in line, (override, line)
    assert list(tmp_path.iterdir()) == [], "nothing may be written (a folder named s3: above all)"


def test_a_missing_local_model_path_says_so(tmp_path):
    missing = tmp_path / "no" / "such" / "sft"
    line = _one_line_error(run(cli_command(*sft_args(tmp_path / "out", f"model.name_or_path={missing}"))))
    assert f"model '{missing}': no such local directory" in line and "repo" not in line.lower()
