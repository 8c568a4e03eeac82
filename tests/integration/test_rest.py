"""``kuberlhf rest``: Grow and Improve steps, rising thresholds, one row per Improve step, resume after a kill
mid-Grow and mid-Improve (locally and from ``s3://``), and the pipeline's single steps."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, run, run_cli, torchrun_command


def rest_args(out, trained, *extra):
    return ["rest", "--config", str(REPO / "configs/rest/demo.yaml"), f"output_dir={out}",
            f"policy.name_or_path={trained / 'sft'}", f"reward_model.name_or_path={trained / 'reward'}",
            "data.train=demo://prompts?n=24", "sampling.num_candidates=3", "sampling.batch_size=8", "save_every=8",
            "improve.thresholds=[0.3,0.7]", "training.num_train_epochs=1", "training.per_device_train_batch_size=8",
            "training.save_steps=3", "training.logging_steps=2", "gold_prompts=demo://prompts?n=16&split=test",
            "training.disable_tqdm=true", *extra]


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rest_grows_filters_with_rising_thresholds_and_logs_every_improve_step(tmp_path, trained):
    out = tmp_path / "rest"
    assert run_cli(rest_args(out, trained)) == 0
    log = rows(out / "train_log.jsonl")
    assert [(r["iteration"], r["improve_step"], r["step"]) for r in log] == [(1, 1, 1), (1, 2, 2), (2, 1, 3), (2, 2, 4)]
    for first, second in (log[0:2], log[2:4]):  # per Grow: the threshold rises, the kept set shrinks
        assert first["samples"] == second["samples"] == 24 * 3
        assert first["threshold"] < second["threshold"] and first["kept"] > second["kept"] > 0
        assert first["reward_all"] == second["reward_all"] <= first["reward_kept"] <= second["reward_kept"]
    for r in log:
        assert r["kept"] == sum(s["reward"] >= r["threshold"] for s in rows(grow_dir(out, r["iteration"])))
        assert {"kl", "gold_score_before", "gold_score_after", "eval_score", "gold_all", "gold_kept"} <= set(r)
    # each Grow samples from the policy of the Improve step before it, and is an artifact of its own
    grow2 = json.loads((out / "checkpoints/grow-2/metrics.json").read_text())
    assert grow2["settings"]["policy.name_or_path"] == str(out / "checkpoints/improve-1-2")
    assert (out / "checkpoints/grow-2/manifest.json").is_file()
    samples = rows(grow_dir(out, 1))
    assert len({s["id"] for s in samples}) == 72 and len({s["prompt_id"] for s in samples}) == 24
    assert all({"prompt", "response", "reward", "gold", "has_eos"} <= set(s) for s in samples)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rest_log"] == log and metrics["kept"] == log[-1]["kept"]
    assert (out / "sft_log.jsonl").is_file()  # the last step's Trainer losses
    # the finished loop is not redone: the same command has nothing to do
    before = (out / "manifest.json").read_text()
    assert run_cli(rest_args(out, trained)) == 0
    assert (out / "manifest.json").read_text() == before


def dies_in_part_two(real_part, parts):
    """A stand-in for ``generate.generate_part`` that records each part's seed and is killed in the second."""
    def part(*args, **kwargs):
        parts.append(args[-1])
        if len(parts) == 2:
            raise KeyboardInterrupt("killed mid-Grow")
        return real_part(*args, **kwargs)

    return part


def grow_dir(out, i):
    return out / f"checkpoints/grow-{i}/samples.jsonl"


def test_a_rest_run_killed_mid_grow_and_mid_improve_resumes_where_it_was(tmp_path, trained, monkeypatch):
    from kuberlhf.stages import generate

    whole = tmp_path / "whole"
    assert run_cli(rest_args(whole, trained, "iterations=1")) == 0
    out = tmp_path / "killed"
    real_part = generate.generate_part
    with monkeypatch.context() as patch:
        patch.setattr(generate, "generate_part", dies_in_part_two(real_part, []))
        with pytest.raises(KeyboardInterrupt):
            run_cli(rest_args(out, trained, "iterations=1"))
    assert len(list((out / "checkpoints/grow-1/checkpoints").glob("checkpoint-*/manifest.json"))) == 1

    from transformers import TrainerCallback

    class DiesAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if "improve-1-1" in args.output_dir and state.global_step == 6:
                raise KeyboardInterrupt("killed mid-Improve")

    real_callback = rest_trainer_callbacks(monkeypatch, DiesAfterFirstCheckpoint())
    with pytest.raises(KeyboardInterrupt):
        run_cli(rest_args(out, trained, "iterations=1"))
    real_callback()
    # a finished step made with other settings is not reused silently
    assert run_cli(rest_args(out, trained, "iterations=1", "sampling.temperature=0.7")) == 2
    generated = []
    with monkeypatch.context() as patch:
        patch.setattr(generate, "generate_part", lambda *a, **k: generated.append(1) or real_part(*a, **k))
        assert run_cli(rest_args(out, trained, "iterations=1")) == 0
    assert not generated  # the Grow was finished: nothing sampled again
    first = json.loads((out / "checkpoints/improve-1-1/metrics.json").read_text())
    assert first["resumed_from_step"] >= 3
    assert rows(grow_dir(out, 1)) == rows(grow_dir(whole, 1))  # the resumed Grow wrote what a whole one writes
    got, want = rows(out / "train_log.jsonl"), rows(whole / "train_log.jsonl")
    assert [(r["kept"], r["threshold"]) for r in got] == [(r["kept"], r["threshold"]) for r in want]


def rest_trainer_callbacks(monkeypatch, extra):
    """Add ``extra`` to the callbacks of the Improve steps' Trainer; returns the undo."""
    from kuberlhf.stages import trainer

    real = trainer.checkpoint_callback

    def with_extra(run, keep):
        callback = real(run, keep)

        class Both(type(callback)):
            def on_save(self, args, state, control, **kwargs):
                super().on_save(args, state, control, **kwargs)
                extra.on_save(args, state, control, **kwargs)

        return Both()

    monkeypatch.setattr(trainer, "checkpoint_callback", with_extra)
    return lambda: monkeypatch.setattr(trainer, "checkpoint_callback", real)


def test_the_pipeline_steps_grow_and_improve_one_at_a_time(tmp_path, trained):
    """phase=grow then phase=improve, as the rest pipeline's steps run them: the history rides along."""
    grow = tmp_path / "grow"
    assert run_cli(rest_args(grow, trained, "phase=grow", f"reference={trained / 'sft'}")) == 0
    first = tmp_path / "improve-1"
    assert run_cli(rest_args(first, trained, "phase=improve", f"samples={grow}", "step=1",
                             f"reference={trained / 'sft'}")) == 0
    second = tmp_path / "improve-2"
    assert run_cli(rest_args(second, trained, "phase=improve", f"samples={grow}", "step=2",
                             f"policy.name_or_path={first}", f"reference={trained / 'sft'}")) == 0
    log = rows(second / "train_log.jsonl")
    assert [(r["improve_step"], r["step"]) for r in log] == [(1, 1), (2, 2)]
    assert log[0]["started_from"] == str(trained / "sft") and log[1]["started_from"] == str(first)
    # ReST-EM: an iteration's first Improve step starts from the base (the SFT policy), not the given policy
    em = tmp_path / "em"
    assert run_cli(rest_args(em, trained, "phase=improve", f"samples={grow}", "step=1", "improve.start_from=base",
                             f"policy.name_or_path={second}", f"reference={trained / 'sft'}")) == 0
    assert rows(em / "train_log.jsonl")[-1]["started_from"] == str(trained / "sft")


@pytest.mark.parametrize("extra, message", [
    (["improve.thresholds=[0.7,0.3]"], "config key 'improve.thresholds': must rise from step to step"),
    (["improve.thresholds=[0.5,1.5]"], "config key 'improve.thresholds': quantiles must be in [0, 1)"),
    (["improve.thresholds=[]"], "config key 'improve.thresholds': needs at least one threshold"),
    (["improve.threshold_kind=absolute", "improve.thresholds=[1000.0]"],
     "config key 'improve.thresholds': step 1's threshold 1000 keeps none of the 72 samples"),
    (["sampling.num_candidates=1"], "config key 'sampling.num_candidates': must be at least 2"),
    (["phase=improve"], "config key 'samples': phase=improve needs the Grow artifact"),
])
def test_bad_rest_settings_are_one_line_errors(tmp_path, trained, capsys, extra, message):
    out = tmp_path / "rest"
    assert run_cli(rest_args(out, trained, "iterations=1", *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1], err[-3:]
    assert not (out / "manifest.json").exists()


def test_a_grow_artifact_without_samples_is_refused(tmp_path, trained, capsys):
    (tmp_path / "not-grow").mkdir()
    assert run_cli(rest_args(tmp_path / "out", trained, "phase=improve", f"samples={tmp_path / 'not-grow'}")) == 2
    err = capsys.readouterr().err
    assert "config key 'samples'" in err and "holds no samples.jsonl" in err


def test_rest_into_s3_resumes_a_killed_grow_from_the_bucket(tmp_path, trained, s3_bucket, monkeypatch):
    """The loop's steps live under the s3:// output; a run killed mid-Grow on one machine resumes on another
    (an empty local cache) after the sealed part, and the final policy and every step are in the bucket."""
    from kuberlhf.artifacts import storage
    from kuberlhf.stages import generate

    uri = f"s3://{s3_bucket}/runs/rest"
    real_part, parts = generate.generate_part, []
    monkeypatch.setenv("KUBERLHF_CACHE", str(tmp_path / "cache-1"))
    with monkeypatch.context() as patch:
        patch.setattr(generate, "generate_part", dies_in_part_two(real_part, parts))
        with pytest.raises(KeyboardInterrupt):
            run_cli(rest_args(uri, trained, "iterations=1", "improve.thresholds=[0.5]"))
    monkeypatch.setenv("KUBERLHF_CACHE", str(tmp_path / "cache-2"))
    parts.clear()
    monkeypatch.setattr(generate, "generate_part", lambda *a, **k: parts.append(a[-1]) or real_part(*a, **k))
    assert run_cli(rest_args(uri, trained, "iterations=1", "improve.thresholds=[0.5]")) == 0
    assert len(parts) == 2  # parts 2 and 3; part 1 came from the bucket
    assert storage.is_complete(uri) and storage.is_complete(f"{uri}/checkpoints/grow-1")
    local = storage.fetch_dir(uri)
    assert [r["kept"] for r in rows(local / "train_log.jsonl")] == [36]


def test_rest_under_torchrun_shares_the_grow_and_trains_the_improve_with_ddp(tmp_path, trained):
    """Two processes: each samples its share of the Grow's parts (each part from its own seed, so the Grow set
    is the one a single process writes), then the Improve step trains on both."""
    args = rest_args(tmp_path / "ddp", trained, "iterations=1", "improve.thresholds=[0.5]")[1:]
    proc = run(torchrun_command(2, "rest", *args), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert run_cli(rest_args(tmp_path / "one", trained, "iterations=1", "improve.thresholds=[0.5]")) == 0
    assert rows(grow_dir(tmp_path / "ddp", 1)) == rows(grow_dir(tmp_path / "one", 1))
    log = rows(tmp_path / "ddp" / "train_log.jsonl")
    assert [r["kept"] for r in log] == [36] and log[0]["kept"] == rows(tmp_path / "one" / "train_log.jsonl")[0]["kept"]
    assert "part 2/3" in proc.stdout + proc.stderr and "part 1/3" in proc.stdout + proc.stderr
