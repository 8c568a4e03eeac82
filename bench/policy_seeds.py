"""Gold-judge improvement of a policy stage over seeds, on the demo task.

Runs `kuberlhf STAGE --config configs/STAGE/demo.yaml training.seed=S` for each seed
(from the demo SFT and reward models in outputs/demo, made by `kuberlhf sft` and `kuberlhf reward`
with configs/{sft,reward}/demo.yaml) and prints
one markdown row per seed plus the mean and standard deviation of the improvement.
$ .venv/bin/python bench/policy_seeds.py ppo --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stage")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print("| stage | seed | gold before | gold after | gain | final KL | wall (s) | samples/s | generation share |")
    print("|---|---|---|---|---|---|---|---|---|")
    gains = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            out = Path(tmp) / f"{args.stage}-{seed}"
            cmd = [sys.executable, "-m", "kuberlhf.cli", args.stage, "--config",
                   str(REPO / f"configs/{args.stage}/demo.yaml"), f"output_dir={out}", f"training.seed={seed}",
                   *args.overrides]
            started = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
            wall = time.perf_counter() - started
            m = json.loads((out / "metrics.json").read_text())
            gain = m["gold_score_after"] - m["gold_score_before"]
            gains.append(gain)
            print(f"| {args.stage} | {seed} | {m['gold_score_before']:.3f} | {m['gold_score_after']:.3f} | "
                  f"{gain:+.3f} | {m['kl']:.2f} | {wall:.0f} | {m.get('samples_per_second', float('nan')):.0f} | "
                  f"{m.get('generation_time_share', float('nan')):.2f} |", flush=True)
    spread = statistics.stdev(gains) if len(gains) > 1 else 0.0
    print(f"\ngain over {len(gains)} seeds: mean {statistics.mean(gains):+.3f}, std {spread:.3f}")


if __name__ == "__main__":
    main()
