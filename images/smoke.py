"""Build every image and run each stage's demo inside its own image, as a pod would (`make images-smoke`).

$ .venv/bin/python images/smoke.py                 # build (cached) and run every image
$ .venv/bin/python images/smoke.py --no-build      # run the images already built

On a machine without a registry: a Docker daemon (started, and afterwards stopped, when none
runs: images/engine.py), the local Debian base (``make images-base``), every image built on it
as ``local/kuberlhf-<image>:<version>`` (the tags the test cluster loads with
``docker save | ctr -n k8s.io images import -`` and runs with ``imagePullPolicy: IfNotPresent``),
then each image run the way a pod runs it: a read-only root, a tmpfs ``/tmp``, a ``/data``
volume, uid 10001, no capabilities, inputs from and outputs to ``s3://`` on the project's test
S3 server (SeaweedFS on 127.0.0.1, reached with ``--network host``):

* sft trains the demo SFT policy, reward the demo reward model (a few steps each);
* ppo runs a few PPO steps against those two, read back from s3://, and the pipelines'
  evaluation (``kuberlhf evaluate``: gold-judge score, in the same image) on the result;
* dpo a few DPO steps from the SFT policy;
* the launcher renders a PyTorchJob and a TrainJob (``launch --dry-run``) and compiles every
  pipeline (the chart's upload job), without torch.

Every artifact is verified by its manifest (downloaded and hash-checked). A failing step names
the image and prints the tail of its log; the exit status is non-zero. Containers are removed,
the S3 server and any daemon this started are stopped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "images"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import build  # noqa: E402  (images/build.py)
import engine  # noqa: E402  (images/engine.py)
from s3server import S3Server  # noqa: E402  (tests/s3server.py: the project's test S3 server)

from kuberlhf import images  # noqa: E402

REGISTRY = engine.LOCAL_REGISTRY
BUCKET = "smoke"


@dataclass
class Step:
    """One container run: an image, its arguments, and the s3:// artifact it must leave."""

    image: str
    args: list[str]
    artifact: str = ""  # s3://... verified by its manifest afterwards
    expect: list[str] = field(default_factory=list)  # text the output must contain


def steps(run: str) -> list[Step]:
    s3 = f"s3://{BUCKET}/{run}"
    few = ["training.max_steps=8", "training.logging_steps=4", "training.save_steps=100"]
    return [
        Step("sft", ["sft", "--config", "configs/sft/demo.yaml", f"output_dir={s3}/sft", *few,
                     "data.train=demo://sft?n=400", "data.eval=demo://sft?n=32&split=test"], f"{s3}/sft",
             ["kuberlhf sft: done"]),
        Step("reward", ["reward", "--config", "configs/reward/demo.yaml", f"output_dir={s3}/reward", *few,
                        "data.train=demo://preference?n=400", "data.eval=demo://preference?n=32&split=test"],
             f"{s3}/reward", ["kuberlhf reward: done"]),
        Step("ppo", ["ppo", "--config", "configs/ppo/demo.yaml", f"output_dir={s3}/ppo",
                     f"policy.name_or_path={s3}/sft", f"reward_model.name_or_path={s3}/reward",
                     "training.max_steps=2", "training.save_steps=100", "training.logging_steps=1",
                     "rollout.batch_size=16", "data.train=demo://prompts?n=64", "data.eval=demo://prompts?n=16&split=test"],
             f"{s3}/ppo", ["kuberlhf ppo: done"]),
        Step("ppo", ["evaluate", "--model", f"{s3}/ppo", "--prompts", "demo://prompts?n=16&split=test"],
             expect=["gold_score"]),
        Step("dpo", ["dpo", "--config", "configs/dpo/demo.yaml", f"output_dir={s3}/dpo", f"model.name_or_path={s3}/sft",
                     *few, "data.train=demo://preference?n=256", "data.eval=demo://preference?n=32&split=test",
                     "gold_prompts=demo://prompts?n=16&split=test"], f"{s3}/dpo", ["kuberlhf dpo: done"]),
        Step("launcher", ["launch", "ppo", "--dry-run", f"output_dir={s3}/launched", "--run-id", "smoke"],
             expect=["kind: PyTorchJob", f"image: {images.image_ref('ppo')}"]),
        Step("launcher", ["launch", "ppo", "--dry-run", "--backend", "trainjob", f"output_dir={s3}/launched",
                          "--run-id", "smoke"], expect=["kind: TrainJob"]),
        Step("launcher", ["pipeline", "compile", "--pipeline", "all", "--out", "/tmp/pipelines"],
             expect=["rlhf-ppo -> /tmp/pipelines/rlhf-ppo.yaml", "rlhf-human -> /tmp/pipelines/rlhf-human.yaml"]),
    ]


class SmokeFailure(Exception):
    """A step failed; the message names the image and carries its log's tail."""


def docker_run(ref: str, args: list[str], data: Path, env: dict[str, str], timeout: int) -> tuple[int, str]:
    """Run ``ref`` as a restricted pod would; returns (exit status, output)."""
    name = f"kuberlhf-smoke-{os.getpid()}-{time.monotonic_ns()}"
    cmd = ["docker", "run", "--rm", "--name", name, "--read-only", "--tmpfs", "/tmp:rw,exec,size=2g",
           "--user", f"{images.USER_ID}:{images.USER_ID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "-v", f"{data}:{images.DATA_DIR}", "--network", "host", "--shm-size", "1g"]
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    cmd += ["--entrypoint", "kuberlhf", ref, *args]  # a pod's command: the CLI, then the stage's arguments
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        out = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        return 124, out + f"\n(timed out after {timeout} s)"
    return proc.returncode, proc.stdout + proc.stderr


def verify(uri: str, env: dict[str, str]) -> str:
    """Download the artifact at ``uri``; the download is refused unless every file matches its manifest."""
    code = ("import sys, tempfile; from kuberlhf.artifacts import storage, manifest; "
            "d = storage.download_dir(sys.argv[1], tempfile.mkdtemp()); m = manifest.verify_local(d); "
            "print(len(m['files']))")
    proc = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    if proc.returncode:
        raise SmokeFailure(f"{uri}: not a complete artifact: {engine._last(proc.stderr)}")
    return proc.stdout.strip()


def tail(text: str, lines: int = 25) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def _inspect(ref: str) -> dict:
    proc = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, text=True, check=True)
    return __import__("json").loads(proc.stdout)[0]


def _history(ref: str) -> list[tuple[str, int]]:
    """(created-by, bytes) of each layer, newest first."""
    proc = subprocess.run(["docker", "history", "--no-trunc", "--human=false", "--format", "{{.CreatedBy}}\t{{.Size}}",
                           ref], capture_output=True, text=True, check=True)
    return [(line.rsplit("\t", 1)[0], int(line.rsplit("\t", 1)[1])) for line in proc.stdout.splitlines()]


def layer_report(registry: str = REGISTRY) -> bool:
    """Each image's size, the size of its own layers (above the torch image or the base), and whether every
    training image holds the torch image's layers (the same diff IDs) and adds less than half their size
    on top (more means its install replaced torch's packages, so the shared layer is not what it runs);
    False when one does not."""
    torch_ref = images.image_ref(images.TORCH_IMAGE, registry)
    torch_layers = _inspect(torch_ref)["RootFS"]["Layers"]
    torch_size = sum(size for _, size in _history(torch_ref))
    biggest = max(_history(torch_ref), key=lambda item: item[1])
    shared = True
    print(f"{'image':<28} {'size':>9} {'own layers':>11}  torch layers")
    for image in images.IMAGES:
        ref = images.image_ref(image, registry)
        total = sum(size for _, size in _history(ref))
        layers = _inspect(ref)["RootFS"]["Layers"]
        if image in images.TRAINING_IMAGES:
            own = total - torch_size
            same = layers[:len(torch_layers)] == torch_layers and own < biggest[1] / 2
            shared &= same
            note = "shared" if same else "NOT SHARED (different layers, or torch's packages installed again)"
        else:
            base = sum(size for created, size in _history(ref)[-1:])  # the imported base: its one layer
            own, note = total - base, ("its own" if image == images.TORCH_IMAGE else "none")
        print(f"{ref:<28} {total / 1e9:>7.2f}GB {own / 1e9:>9.2f}GB  {note}")
    print(f"torch layer (the torch image's last, its pip install): {biggest[1] / 1e9:.2f} GB, "
          f"diff ID {torch_layers[-1]}")
    return shared


def smoke(do_build: bool, timeout: int) -> int:
    failures = 0
    started = time.monotonic()
    with engine.docker_daemon():
        if do_build:
            base = engine.local_base()
            t0 = time.monotonic()
            build.build(list(images.IMAGES), allow_unpinned=False, engine="docker", base=base, registry=REGISTRY)
            print(f"images built in {time.monotonic() - t0:.0f} s", flush=True)
        if not layer_report():
            failures += 1
            print("FAIL  a training image does not run on the torch image's layer", flush=True)
        with tempfile.TemporaryDirectory(prefix="kuberlhf-smoke-") as tmp, S3Server(Path(tmp) / "s3") as server:
            server.client().create_bucket(Bucket=BUCKET)
            env = {**server.env(server.admin), "AWS_ENDPOINT_URL_S3": server.endpoint_url,
                   "KUBERLHF_IMAGE_REGISTRY": images.image_registry()}
            run = time.strftime("%Y%m%d-%H%M%S")
            for n, step in enumerate(steps(run)):
                ref = images.image_ref(step.image, REGISTRY)
                data = Path(tmp) / f"data-{n}"
                data.mkdir()
                try:
                    os.chown(data, images.USER_ID, images.USER_ID)
                except PermissionError:  # not root: let the image's user write there
                    data.chmod(0o1777)
                t0 = time.monotonic()
                rc, out = docker_run(ref, step.args, data, env, timeout)
                took = time.monotonic() - t0
                what = f"{ref} {' '.join(step.args[:2])}"
                try:
                    if rc:
                        raise SmokeFailure(f"exit {rc}")
                    missing = [text for text in step.expect if text not in out]
                    if missing:
                        raise SmokeFailure(f"its output lacks {missing}")
                    detail = f", artifact {step.artifact} ({verify(step.artifact, env)} files, manifest verified)" \
                        if step.artifact else ""
                    print(f"ok    {what}: {took:.0f} s{detail}", flush=True)
                except SmokeFailure as err:
                    failures += 1
                    print(f"FAIL  {what}: {err} after {took:.0f} s; the log's tail:\n{tail(out)}", flush=True)
                finally:
                    subprocess.run(["rm", "-rf", str(data)])
    print(f"images-smoke: {len(steps(''))} steps, {failures} failed, {time.monotonic() - started:.0f} s in all")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-build", action="store_true", help="run the images already built")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one container may run")
    args = parser.parse_args(argv)
    os.environ.setdefault("KUBERLHF_IMAGE_REGISTRY", REGISTRY)
    try:
        return smoke(not args.no_build, args.timeout)
    except (engine.EngineError, build.Failure, subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        print(f"images-smoke: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
