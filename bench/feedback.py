"""Human-feedback round on the built-in task: rankings through a real Label Studio against gold-labelled pairs.

$ .venv/bin/python bench/feedback.py                      # about 20 minutes on 2 cores
$ .venv/bin/python bench/feedback.py --prompts 500 --seeds 0 1 2 --out outputs/feedback-bench

1. SFT of the demo policy (configs/sft/demo.yaml);
2. ``kuberlhf generate``: K = 4 candidates for each of ``--prompts`` demo prompts;
3. ``kuberlhf feedback export`` into a Label Studio started here (its own venv, 127.0.0.1); a labeler
   ranks every task through Label Studio's API as the demo's gold judge orders the candidates (the
   ranker has no ties: equal gold scores keep the candidates' order, as a hurried person would);
4. ``kuberlhf feedback import``: all ordered pairs of each ranking;
5. two reward models with configs/reward/demo.yaml, one on those pairs, one on the same number of
   gold-labelled pairs (demo://preference), both scored on the same held-out gold pairs;
6. PPO (configs/ppo/demo.yaml) against the rankings' reward model for each seed.

Prints the table for docs/benchmarks.md: pairs, held-out pairwise accuracy of both reward models,
and per seed the gold score before and after PPO, with the mean gain and the spread over seeds.
"""

from __future__ import annotations

import argparse
import html
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]


def kuberlhf(*argv: str, env: dict | None = None) -> float:
    """Run ``kuberlhf ARGV`` in its own process; its wall time."""
    import os

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kuberlhf.cli", *argv], check=True, cwd=REPO,
                   env={**os.environ, **(env or {})})
    return time.perf_counter() - started


def metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def rank_everything(client, title: str) -> int:
    """The gold judge as a labeler: every task of ``title`` ranked through Label Studio's API."""
    from kuberlhf.demo.task import gold_score

    project = client.find_project(title)
    done = 0
    for task in client.tasks(project["id"]):
        prompt, items = task["data"]["prompt"], task["data"]["items"]
        order = sorted(range(len(items)), key=lambda i: (-gold_score(prompt, html.unescape(items[i]["body"])), i))
        client.annotate(task["id"], [{"type": "ranker", "from_name": "rank", "to_name": "candidates",
                                      "value": {"ranker": {"rank": [f"c{i}" for i in order]}}}])
        done += 1
    return done


def main(argv: list[str] | None = None) -> int:
    from labelstudio_server import LabelStudio

    from kuberlhf.feedback.labelstudio import Client

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/feedback-bench")
    parser.add_argument("--prompts", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    out = (REPO / args.out).resolve()
    held_out = "demo://preference?n=500&split=test"
    wall = {"sft": kuberlhf("sft", "--config", "configs/sft/demo.yaml", f"output_dir={out / 'sft'}", "overwrite=true")}
    wall["generate"] = kuberlhf("generate", "--config", "configs/generate/demo.yaml",
                                f"output_dir={out / 'candidates'}", f"policy.name_or_path={out / 'sft'}",
                                f"data.train=demo://prompts?n={args.prompts}", "overwrite=true")
    with LabelStudio(out / "label-studio") as server:
        title = f"bench-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        kuberlhf("feedback", "export", "--candidates", str(out / "candidates"), "--project", title,
                 "--instructions", str(REPO / "configs/feedback/ranking-instructions.html"), env=server.env())
        ranked = rank_everything(Client(server.url, server.token), title)
        kuberlhf("feedback", "import", "--candidates", str(out / "candidates"), "--project", title,
                 "--output", str(out / "feedback"), "--overwrite", env=server.env())
        wall["label-studio round"] = time.perf_counter() - started
    imported = metrics(out / "feedback")
    pairs = imported["pairs"]
    wall["reward (rankings)"] = kuberlhf(
        "reward", "--config", "configs/reward/demo.yaml", f"output_dir={out / 'reward-rankings'}",
        f"data.train={out / 'feedback' / 'train.jsonl'}", f"data.eval={held_out}", "overwrite=true")
    wall["reward (gold pairs)"] = kuberlhf(
        "reward", "--config", "configs/reward/demo.yaml", f"output_dir={out / 'reward-gold'}",
        f"data.train=demo://preference?n={pairs}", f"data.eval={held_out}", "overwrite=true")
    acc = {name: metrics(out / name)["eval_accuracy"] for name in ("reward-rankings", "reward-gold")}
    runs = []
    for seed in args.seeds:
        target = out / f"ppo-{seed}"
        wall[f"ppo seed {seed}"] = kuberlhf(
            "ppo", "--config", "configs/ppo/demo.yaml", f"output_dir={target}", f"policy.name_or_path={out / 'sft'}",
            f"reward_model.name_or_path={out / 'reward-rankings'}", f"training.seed={seed}", "overwrite=true")
        m = metrics(target)
        runs.append((seed, m["gold_score_before"], m["gold_score_after"], m["kl"]))

    print(f"\n{ranked} prompts ranked (K = 4) -> {pairs} pairs "
          f"({imported['identical_pairs_dropped']} of identical candidates dropped)")
    print("| reward model trained on | pairs | held-out pairwise accuracy (500 gold pairs) |")
    print("|---|---|---|")
    print(f"| rankings through Label Studio | {pairs} | {acc['reward-rankings']:.3f} |")
    print(f"| gold-labelled pairs (demo://preference) | {pairs} | {acc['reward-gold']:.3f} |")
    print("\n| PPO seed | gold before | gold after | gain | KL |")
    print("|---|---|---|---|---|")
    for seed, before, after, kl in runs:
        print(f"| {seed} | {before:.3f} | {after:.3f} | {after - before:+.3f} | {kl:.2f} |")
    gains = [after - before for _, before, after, _ in runs]
    afters = [after for _, _, after, _ in runs]
    print(f"\nmean gain {statistics.mean(gains):+.3f}; spread of the final gold score over seeds "
          f"{max(afters) - min(afters):.3f} (max - min)")
    print("\n| step | wall (s) |\n|---|---|")
    for name, seconds in wall.items():
        print(f"| {name} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
