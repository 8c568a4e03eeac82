"""SFT throughput of the demo model: `kuberlhf sft` beside a plain TRL SFTTrainer script.

Both train the demo tiny Llama on demo://sft?n=3000 with configs/sft/demo.yaml's
hyperparameters, one after the other, each in its own process; tokens/s = tokens
trained on / train_runtime (TRL's num_tokens count, the same in both).
$ make bench            # or: .venv/bin/python bench/sft_throughput.py [--epochs 8] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kuberlhf_run(out: Path, epochs: float) -> dict:
    cmd = [sys.executable, "-m", "kuberlhf.cli", "sft", "--config", str(REPO / "configs/sft/demo.yaml"),
           f"output_dir={out}", f"training.num_train_epochs={epochs}", "data.eval=null", "training.disable_tqdm=true"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads((out / "metrics.json").read_text())


def plain_run(out: Path, epochs: float) -> dict:
    cmd = [sys.executable, str(REPO / "bench/plain_trl_sft.py"), "--out", str(out), "--epochs", str(epochs)]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    import torch

    cpu = platform.processor() or platform.machine()
    print(f"# {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| run | repeat | train tokens | train runtime (s) | tokens/s | train loss |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, fn in (("kuberlhf sft", kuberlhf_run), ("plain TRL SFTTrainer", plain_run)):
                m = fn(Path(tmp) / f"{name.split()[0]}-{i}", args.epochs)
                print(f"| {name} | {i} | {m['train_tokens']:.0f} | {m['train_runtime']:.1f} | "
                      f"{m['tokens_per_second']:.0f} | {m['train_loss']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
