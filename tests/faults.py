"""Fault trials: runs killed with SIGKILL and rerun, object-store outages, corrupted artifacts.

$ .venv/bin/python tests/faults.py     # make faults: 30 kill trials, 24 SIGTERM trials, 10 outages, 12 corruptions
$ .venv/bin/python tests/faults.py --kills 6 --sigterms 4 --outages 2 --seed 3

The SIGTERM trials are described in tests/sigterm_trials.py.

Each kill trial runs a stage (sft, reward, ppo, dpo, rloo, grpo, on the demo task) in its own process
and kills it (SIGKILL: no cleanup) at one moment: at a random time before its first checkpoint (from
process start: imports, loading, training); between checkpoints, right after the k-th (random k) is
sealed and rotated (the ``sealed`` failpoint, :mod:`kuberlhf.artifacts.failpoints`); inside the k-th
checkpoint write (its files written, not its manifest: ``seal``); or inside the final publish, after
the j-th file (``publish``). A run of 4 tiny steps trains in well under a second, so timed kills land
almost only in start-up and publishing: the failpoints put the others where they are meant to be.
Then every artifact and checkpoint that has a manifest must verify (else it is *corrupt*), and the
same command, rerun, must finish from the newest sealed checkpoint with an artifact that verifies and
the full step count (else the trial is *lost*). For PPO the rerun must also end where an
uninterrupted run ends (its last logged reward, KL and losses; else *diverged*).

Each outage trial runs SFT into ``s3://`` through a TCP fault proxy that goes down, resets or stalls
at a random moment for 1-12 s: the run rides it out within ``storage.retry_budget_s=6`` or exits 200
(retryable); either way nothing that looks complete is incomplete, and a rerun finishes.

Each corruption trial damages a published artifact (local or ``s3://``): a flipped byte, a truncated
shard, a missing file, an extra unlisted file, a manifest naming ``../`` or an absolute path. Loading
it must be refused with a message naming the file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from helpers import REPO, SMALL, cli_command, reward_args, run_cli, sft_args, subprocess_env  # noqa: E402

STAGES = ("sft", "reward", "ppo", "dpo", "rloo", "grpo")
MOMENTS = ("before-first-checkpoint", "between-checkpoints", "during-checkpoint-write", "during-publish")
STEPS = 4  # every trial's run: 4 optimizer steps, a checkpoint after each


def stage_args(stage: str, out: Path, models: Path) -> list[str]:
    """A short run of ``stage`` on the demo task: STEPS steps, a checkpoint every step, 2 kept."""
    common = [f"output_dir={out}", f"training.max_steps={STEPS}", "training.save_steps=1",
              "training.save_total_limit=2", "training.logging_steps=1", "training.disable_tqdm=true"]
    if stage == "sft":
        return sft_args(out, *common[1:])
    if stage == "reward":
        return reward_args(out, *common[1:])
    config = ["--config", str(REPO / f"configs/{stage}/demo.yaml")]
    if stage == "dpo":
        return ["dpo", *config, *common, f"model.name_or_path={models / 'sft'}", "data.train=demo://preference?n=64",
                "data.eval=null", "gold_prompts=demo://prompts?n=8&split=test",
                "training.per_device_train_batch_size=8"]
    policy = [f"policy.name_or_path={models / 'sft'}", f"reward_model.name_or_path={models / 'reward'}"]
    if stage == "ppo":
        return ["ppo", *config, *common, *policy, "data.eval=demo://prompts?n=8&split=test", "rollout.batch_size=8"]
    return [stage, *config, *common, *policy, "data.train=demo://prompts?n=64", "data.eval=demo://prompts?n=8&split=test",
            "training.per_device_train_batch_size=8"]


def build_models(root: Path) -> Path:
    """The SFT policy and reward model the later stages start from (briefly trained demo models)."""
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert run_cli(sft_args(root / "sft", "training.max_steps=20", "data.train=demo://sft?n=160")) == 0
        assert run_cli(reward_args(root / "reward", "training.max_steps=15")) == 0
    return root


# ------------------------------------------------------------------------------------------- checks


def sealed_steps(out: Path) -> list[int]:
    ckpts = out / "checkpoints"
    return sorted(int(p.name.split("-")[1]) for p in ckpts.glob("checkpoint-*") if (p / "manifest.json").is_file())


def corrupt_artifacts(out: Path) -> list[str]:
    """Every directory under ``out`` with a manifest that does not verify: what looks complete and is not."""
    from kuberlhf.artifacts import storage

    bad = []
    for manifest in [out / "manifest.json", *out.glob("checkpoints/*/manifest.json")]:
        if manifest.is_file():
            try:
                storage.verify_local(manifest.parent)
            except storage.StorageError as err:
                bad.append(str(err))
    return bad


def final_steps(out: Path) -> int | None:
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics.get("global_step", metrics.get("steps"))


def last_log(out: Path) -> dict:
    return json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])


def same_end(a: dict, b: dict) -> bool:
    keys = ("reward", "kl", "kl_coef", "policy_loss", "value_loss")
    return all(abs(a[k] - b[k]) <= 1e-4 * max(abs(a[k]), 1.0) + 1e-6 for k in keys)


# ------------------------------------------------------------------------------------------- kill -9


@dataclass
class Tally:
    trials: int = 0
    lost: int = 0
    corrupt: int = 0
    diverged: int = 0
    resumed: int = 0
    clean: int = 0
    finished: int = 0
    notes: list[str] = field(default_factory=list)
    by: dict[str, int] = field(default_factory=dict)

    def line(self, what: str) -> str:
        if what == "corruption":
            return f"{what}: {self.trials} trials, {self.resumed} refused naming the file, {self.lost} not"
        return (f"{what}: {self.trials} trials, {self.lost} lost, {self.corrupt} corrupt"
                + (f", {self.diverged} diverged" if what == "kill -9" else ""))


def _kill_at(proc: subprocess.Popen, moment: str, out: Path, rng: random.Random, deadline: float) -> None:
    """Kill ``proc`` at ``moment`` (the failpoint moments kill themselves: wait for them)."""
    if moment != "before-first-checkpoint":  # a failpoint kills it
        proc.wait(timeout=deadline)
        return
    start, delay = time.monotonic(), rng.uniform(2.0, 12.0)
    while time.monotonic() - start < delay and proc.poll() is None and not sealed_steps(out):
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def kill_trial(stage: str, moment: str, root: Path, models: Path, rng: random.Random, tally: Tally,
               reference: dict[str, dict]) -> None:
    out = root / f"{stage}-{tally.trials}"
    argv = stage_args(stage, out, models)
    env = subprocess_env()
    if moment == "during-checkpoint-write":
        env["KUBERLHF_FAILPOINTS"] = f"seal:{rng.randint(1, STEPS)}"
    elif moment == "between-checkpoints":
        env["KUBERLHF_FAILPOINTS"] = f"sealed:{rng.randint(1, STEPS - 1)}"
    elif moment == "during-publish":
        env["KUBERLHF_FAILPOINTS"] = f"publish:{rng.randint(1, 3)}"
    tally.trials += 1
    tally.by[stage] = tally.by.get(stage, 0) + 1
    proc = subprocess.Popen(cli_command(*argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _kill_at(proc, moment, out, rng, deadline=600)
    killed = proc.returncode == -signal.SIGKILL
    bad = corrupt_artifacts(out)
    newest = max(sealed_steps(out), default=0)
    done = (out / "manifest.json").read_text() if (out / "manifest.json").is_file() else None  # published already
    if bad:
        tally.corrupt += 1
        tally.notes.append(f"{stage} {moment}: corrupt after the kill: {bad[0]}")
    rerun = subprocess.run(cli_command(*argv), env=subprocess_env(), capture_output=True, text=True, timeout=600)
    ok = rerun.returncode == 0 and (out / "manifest.json").is_file() and not corrupt_artifacts(out)
    if ok and final_steps(out) != STEPS:
        ok = False
    if not ok:
        tally.lost += 1
        tally.notes.append(f"{stage} {moment}: rerun exit {rerun.returncode}: {rerun.stderr.strip()[-300:]}")
        return
    resumed_from = json.loads((out / "metrics.json").read_text()).get("resumed_from_step", 0)
    if not killed or done is not None:  # it had published before the kill landed: the rerun has nothing to do
        tally.finished += 1
        if done is not None and (out / "manifest.json").read_text() != done:
            tally.lost += 1
            tally.notes.append(f"{stage} {moment}: the rerun of a finished run replaced its artifact")
        shutil.rmtree(out, ignore_errors=True)
        return
    if resumed_from:
        tally.resumed += 1
    else:
        tally.clean += 1
    if resumed_from != newest:
        tally.lost += 1
        tally.notes.append(f"{stage} {moment}: resumed from step {resumed_from}, newest sealed was {newest}")
    if stage == "ppo" and not same_end(last_log(out), reference["ppo"]):
        tally.diverged += 1
        tally.notes.append(f"ppo {moment}: ended at {last_log(out)} not {reference['ppo']}")
    shutil.rmtree(out, ignore_errors=True)


def kill_plan(count: int, stages=STAGES) -> list[tuple[str, str]]:
    """``count`` trials: every stage in turn, each time at the next moment."""
    return [(stages[i % len(stages)], MOMENTS[(i // len(stages)) % len(MOMENTS)]) for i in range(count)]


def kill_trials(plan: list[tuple[str, str]], root: Path, models: Path, rng: random.Random) -> Tally:
    reference = {}
    if any(stage == "ppo" for stage, _ in plan):  # where an uninterrupted PPO run ends
        reference_out = root / "ppo-reference"
        proc = subprocess.run(cli_command(*stage_args("ppo", reference_out, models)), env=subprocess_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        reference["ppo"] = last_log(reference_out)
    tally = Tally()
    for stage, moment in plan:
        kill_trial(stage, moment, root, models, rng, tally, reference)
        print(f"  kill trial {tally.trials}/{len(plan)}: {stage:6s} {moment:24s} lost={tally.lost} "
              f"corrupt={tally.corrupt} diverged={tally.diverged}", flush=True)
    return tally


# ------------------------------------------------------------------------------------------- outages


@contextlib.contextmanager
def _environment_kept():
    """The trials point this process at their own S3 servers: the caller's environment comes back after."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def outage_trials(count: int, root: Path, rng: random.Random) -> Tally:
    with _environment_kept():
        return _outage_trials(count, root, rng)


def _outage_trials(count: int, root: Path, rng: random.Random) -> Tally:
    from faultproxy import FaultProxy
    from s3server import S3Server

    from kuberlhf.artifacts import storage

    tally = Tally()
    with S3Server(root / "s3") as server:
        server.client(server.admin).create_bucket(Bucket="faults")
        host, port = server.endpoint_url.removeprefix("http://").split(":")
        for i in range(count):
            with FaultProxy((host, int(port))) as proxy:
                env = subprocess_env(**{**server.env(server.admin), "AWS_ENDPOINT_URL": proxy.endpoint,
                                        "KUBERLHF_CACHE": str(root / f"cache-{i}")})
                uri = f"s3://faults/run-{i}"
                argv = [*sft_args(uri, f"training.max_steps={STEPS}", "training.save_steps=1"), *SMALL,
                        "storage.retry_budget_s=6", "storage.max_attempts=2", "storage.timeout_s=2"]
                mode, start, length = rng.choice(["down", "reset", "stall"]), rng.uniform(4, 14), rng.uniform(1, 12)
                proc = subprocess.Popen(cli_command(*argv), env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
                time.sleep(start)
                proxy.outage(length, mode)
                _, err = proc.communicate(timeout=600)
                tally.trials += 1
                if proc.returncode == 0:
                    tally.resumed += 1  # rode it out
                elif proc.returncode == 200:
                    tally.clean += 1  # gave up, retryable
                else:
                    tally.lost += 1
                    tally.notes.append(f"outage {mode} at {start:.1f}s for {length:.1f}s: exit {proc.returncode}: "
                                       f"{err.strip()[-300:]}")
                proxy.mode = "pass"
                os.environ.update(server.env(server.admin))
                storage.configure(None)
                for prefix in [uri, *(f"{uri}/checkpoints/{n}" for n in storage.list_subdirs(f"{uri}/checkpoints"))]:
                    if storage.is_complete(prefix):
                        try:
                            storage.download_dir(prefix, Path(tempfile.mkdtemp(dir=root)))
                        except storage.StorageError as exc:
                            tally.corrupt += 1
                            tally.notes.append(f"outage: {prefix} looks complete but is not: {exc}")
                rerun = subprocess.run(cli_command(*argv), env=env, capture_output=True, text=True, timeout=600)
                if rerun.returncode != 0 or not storage.is_complete(uri):
                    tally.lost += 1
                    tally.notes.append(f"outage rerun exit {rerun.returncode}: {rerun.stderr.strip()[-300:]}")
            print(f"  outage trial {tally.trials}/{count}: {mode} at {start:.1f}s for {length:.1f}s -> exit "
                  f"{proc.returncode}; lost={tally.lost} corrupt={tally.corrupt}", flush=True)
    return tally


# ------------------------------------------------------------------------------------------- corruption

DAMAGE = ("flipped-byte", "truncated-shard", "missing-file", "unlisted-file", "manifest-dotdot", "manifest-absolute")


def damage(root: Path, how: str) -> str:
    """Damage the local artifact ``root``; returns the file name the refusal must name."""
    manifest = json.loads((root / "manifest.json").read_text())
    shard = max(manifest["files"], key=lambda f: f["size"])["path"]
    path = root / shard
    if how == "flipped-byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "truncated-shard":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "missing-file":
        path.unlink()
    elif how == "unlisted-file":
        shard = "generation_config.json" if not (root / "generation_config.json").exists() else "extra.bin"
        (root / shard).write_text("{}")
    else:
        shard = "../outside.bin" if how == "manifest-dotdot" else "/etc/passwd"
        manifest["files"].append({"path": shard, "size": 1, "sha256": "0" * 64})
        (root / "manifest.json").write_text(json.dumps(manifest))
    return shard


def corruption_trials(root: Path, models: Path, s3: bool = True) -> Tally:
    with _environment_kept():
        return _corruption_trials(root, models, s3)


def _corruption_trials(root: Path, models: Path, s3: bool) -> Tally:
    from kuberlhf.artifacts import storage

    tally = Tally()
    base = models / "sft"
    targets = ["local"] + (["s3"] if s3 else [])
    server = None
    if s3:
        from s3server import S3Server

        server = S3Server(root / "s3-corrupt").start()
        server.client(server.admin).create_bucket(Bucket="corrupt")
        os.environ.update(server.env(server.admin))
        storage.configure(None)
    try:
        for where in targets:
            for how in DAMAGE:
                tally.trials += 1
                art = root / f"art-{where}-{how}"
                shutil.copytree(base, art)
                named = damage(art, how)
                try:
                    if where == "local":
                        storage.verify_local(art)
                    else:
                        uri = f"s3://corrupt/{how}"
                        _upload_as_is(server, art, f"{how}")
                        storage.download_dir(uri, root / f"dl-{how}")
                    tally.lost += 1
                    tally.notes.append(f"{where} {how}: accepted")
                except storage.StorageError as err:
                    if Path(named).name not in str(err) and named not in str(err):
                        tally.lost += 1
                        tally.notes.append(f"{where} {how}: refused without naming {named}: {err}")
                    else:
                        tally.resumed += 1
                shutil.rmtree(art, ignore_errors=True)
    finally:
        if server:
            server.stop()
    return tally


def _upload_as_is(server, art: Path, prefix: str) -> None:
    """Put every file of ``art`` (its damaged manifest included) under ``prefix``, bypassing kuberlhf."""
    client = server.client(server.admin)
    for path in art.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "corrupt", f"{prefix}/{path.relative_to(art).as_posix()}")


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--outages", type=int, default=10)
    parser.add_argument("--sigterms", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the tallies here")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="kuberlhf-faults-"))
    os.environ["KUBERLHF_CACHE"] = str(root / "cache")
    started = time.monotonic()
    models = build_models(root / "models")
    results = {}
    if args.kills:
        results["kill -9"] = kill_trials(kill_plan(args.kills), root / "kills", models, rng)
    if args.sigterms:
        from sigterm_trials import sigterm_trials

        results["sigterm"] = sigterm_trials(args.sigterms, root / "sigterms", models, rng)
    if args.outages:
        results["outages"] = outage_trials(args.outages, root / "outages", rng)
    results["corruption"] = corruption_trials(root / "corruption", models)
    print(f"\nfault trials (seed {args.seed}, {time.monotonic() - started:.0f} s):")
    for what, tally in results.items():
        print(tally.line() if what == "sigterm" else tally.line(what))
        for note in tally.notes:
            print(f"    {note}")
    k = results.get("kill -9")
    if k:
        print(f"  kill -9 by stage: {k.by}; resumed from a checkpoint {k.resumed}, started clean {k.clean}, "
              f"already finished {k.finished}")
    if "sigterm" in results:
        for trial in results["sigterm"].saved_steps:
            print(f"    {trial}")
    if "outages" in results:
        o = results["outages"]
        print(f"  outages: rode out {o.resumed}, exited 200 (retryable) {o.clean}")
    if args.json:
        Path(args.json).write_text(json.dumps({w: t.__dict__ for w, t in results.items()}, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    return 0 if all(t.lost == 0 and t.corrupt == 0 and getattr(t, "diverged", 0) == 0 for t in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
