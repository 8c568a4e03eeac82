"""The evaluation report of a pipeline run: one self-contained HTML page.

Training curves (SFT loss, reward-model accuracy, PPO reward and KL or the DPO loss) are
read from each artifact's ``train_log.jsonl``; the SFT and final policies are scored by the
built-in task's gold judge on the same held-out prompts with the same sampling seed, and
their responses to the first prompts are shown side by side. Plots are PNGs embedded as
base64, so the page opens anywhere (the Kubeflow UI shows it as the step's HTML output).

$ python -m kuberlhf.workflow.report --sft outputs/demo/sft --policy outputs/demo/ppo \
      --reward outputs/demo/reward --out report.html
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

from kuberlhf.stages.registry import POLICY_STAGES, STAGES, Panel

log = logging.getLogger(__name__)

# the stages whose final policy a report can show, and each stage's plots: the stage registry's
POLICY_CURVES = {name: STAGES[name].report for name in POLICY_STAGES if STAGES[name].report}


def read_log(artifact: str | None) -> list[dict]:
    """The records of an artifact's ``train_log.jsonl`` (empty when there is none)."""
    path = Path(artifact or "") / "train_log.jsonl"
    if not artifact or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_stage_metrics(artifact: str | None) -> dict:
    path = Path(artifact or "") / "metrics.json"
    return json.loads(path.read_text()) if artifact and path.is_file() else {}


def series(records: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the records that logged it."""
    points = [(r.get("step", i), r[key]) for i, r in enumerate(records) if isinstance(r.get(key), int | float)]
    return [float(s) for s, _ in points], [float(v) for _, v in points]


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def plot_curves(title: str, panels: list[Panel], records: list[dict],
                marks: dict[str, float] | None = None) -> str | None:
    """A PNG (base64) with one panel per y label that has data; None when no series has a point.

    ``marks`` draws a dashed horizontal line (a held-out value) on the panel of that series.
    """
    from matplotlib.figure import Figure

    drawn = [(ylabel, [(key, label, *series(records, key)) for key, label in lines]) for ylabel, lines in panels]
    drawn = [(ylabel, [line for line in lines if line[2]]) for ylabel, lines in drawn]
    drawn = [(ylabel, lines) for ylabel, lines in drawn if lines]
    if not drawn:
        return None
    fig = Figure(figsize=(4.6 * len(drawn), 3.2))
    fig.suptitle(title)
    for i, (ylabel, lines) in enumerate(drawn):
        ax = fig.add_subplot(1, len(drawn), i + 1)
        for key, label, steps, values in lines:
            ax.plot(steps, values, marker="o" if len(steps) < 3 else ("." if len(steps) < 30 else None), label=label)
            if marks and key in marks:
                ax.axhline(marks[key], color="tab:orange", linestyle="--", label=f"held-out {marks[key]:.3g}")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(lines) > 1 or marks:
            ax.legend(loc="best", fontsize=8)
    return _png(fig)


def plot_gold(sft: float, final: float, stage: str, judge: str = "gold") -> str:
    """The judge's mean score of the SFT and final policies (the gold judge's is in [0, 1])."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 3.0))
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(["SFT policy", f"{stage.upper()} policy"], [sft, final], color=["tab:gray", "tab:green"])
    ax.bar_label(bars, fmt="%.3f")
    if judge == "gold":
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("mean gold-judge score")
        ax.set_title("Gold judge on held-out prompts")
    else:
        ax.set_ylabel(f"mean {judge} score")
        ax.set_title(f"{judge.capitalize()} judge on held-out prompts")
    return _png(fig)


def plot_labels(metrics: dict) -> str | None:
    """The AI labels' confidence histogram (``kuberlhf rlaif``'s metrics), with what was kept and agreed."""
    from matplotlib.figure import Figure

    counts = metrics.get("confidence_histogram")
    if not counts:
        return None
    fig = Figure(figsize=(5.0, 3.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar([f"{i / 10:.1f}" for i in range(len(counts))], counts, color="tab:blue")
    ax.set_xlabel("judge confidence |2 P(first better) - 1| (bin start)")
    ax.set_ylabel("pairs")
    agree = metrics.get("gold_agreement")
    ax.set_title(f"AI labels: {metrics.get('pairs_kept', 0)} of {metrics.get('pairs_judged', 0)} pairs kept, "
                 f"flip share {metrics.get('flip_share', 0):.2f}"
                 + (f", gold agreement {agree:.2f}" if isinstance(agree, int | float) else ""), fontsize=9)
    return _png(fig)


LABEL_METRICS = ("pairs_judged", "pairs_kept", "flip_share", "mean_confidence", "gold_agreement")


def score_policies(sft_dir: str, policy_dir: str, prompts: str, *, gold: bool, samples: int, seed: int,
                   reward_dir: str | None = None) -> dict:
    """Judge scores and side-by-side samples of the SFT and final policies on the same ``prompts``.

    The judge (:func:`kuberlhf.eval.judges.pick_judge`: gold where it applies, else the reward model)
    scores each policy's response to every prompt: the means
    (``<judge>_score_sft``, ``<judge>_score_final``), the final policy's win rate over SFT (share of
    prompts where its response scores higher; ties count half) and ``judge``, its description.
    """
    from kuberlhf.eval.heldout import judge_eval
    from kuberlhf.eval.judges import RewardModelJudge, pick_judge

    texts = _first_prompts(prompts, None)
    judge = pick_judge(texts, gold=gold, fallback=(lambda: RewardModelJudge.load(reward_dir)) if reward_dir else None)
    if judge is None:
        texts = texts[:samples]
        sft, final = _generate(sft_dir, texts, seed), _generate(policy_dir, texts, seed)
        return {"judge": "none", "samples": [{"prompt": p, "sft": s, "final": f}
                                             for p, s, f in zip(texts, sft, final, strict=True)]}
    before = judge_eval(sft_dir, prompts, judge=judge, seed=seed, samples=samples)
    after = judge_eval(policy_dir, prompts, judge=judge, seed=seed, samples=samples)
    name = judge.name
    pairs = [{"prompt": b["prompt"], "sft": b["response"], "sft_score": b[name], "final": a["response"],
              "final_score": a[name]} for b, a in zip(before["samples"], after["samples"], strict=True)]
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for b, a in zip(before["scores"], after["scores"], strict=True)]
    return {f"{name}_score_sft": before[f"{name}_score"], f"{name}_score_final": after[f"{name}_score"],
            "well_formed_sft": before["well_formed"], "well_formed_final": after["well_formed"],
            "win_rate": sum(wins) / len(wins), "eval_prompts": float(before["prompts"]), "samples": pairs,
            "judge": judge.description, "judge_name": name}


def _first_prompts(uri: str, n: int | None) -> list[str]:
    from kuberlhf.data import load_examples

    dataset, _ = load_examples(uri, "prompt")
    return list(dataset["prompt"])[:n]


def _generate(model_dir: str, prompts: list[str], seed: int) -> list[str]:
    from kuberlhf.config.sections import ModelConfig
    from kuberlhf.eval.heldout import generate
    from kuberlhf.models import loading as modeling

    cfg = ModelConfig(name_or_path=model_dir)
    path = modeling.resolve_model_path(model_dir, "causal-lm", seed)
    return generate(modeling.load_causal_lm(cfg, path), modeling.load_tokenizer(cfg, path), prompts, seed=seed)


def summary_metrics(scores: dict, sft: dict, reward: dict, policy: dict,
                    labels: dict | None = None) -> dict[str, float]:
    """The numbers the report and KFP ``Metrics`` show (``labels``: an AI-labelling step's metrics)."""
    out: dict[str, float] = {k: float(v) for k, v in scores.items() if isinstance(v, int | float)}
    for key in LABEL_METRICS:
        value = (labels or {}).get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f"ai_labels_{key}"] = float(value)
    name = scores.get("judge_name")
    if name:
        out[f"{name}_gain"] = out[f"{name}_score_final"] - out[f"{name}_score_sft"]
    picks = [(sft, "train_loss", "sft_train_loss"), (sft, "eval_loss", "sft_eval_loss"),
             (reward, "eval_accuracy", "reward_accuracy"), (reward, "eval_margin", "reward_margin"),
             (policy, "kl", "kl"), (policy, "reward", "policy_reward"), (policy, "train_loss", "policy_train_loss")]
    for source, key, name in picks:
        if isinstance(source.get(key), int | float) and not isinstance(source.get(key), bool):
            out[name] = float(source[key])
    return out


def write_report(
    out: str,
    *,
    sft_dir: str,
    policy_dir: str,
    policy_stage: str = "ppo",
    reward_dir: str | None = None,
    prompts: str = "demo://prompts?n=200&split=test",
    gold: bool = True,
    samples: int = 8,
    seed: int = 0,
    labels_dir: str | None = None,
) -> dict[str, float]:
    """Evaluate, write the HTML report to ``out``, and return its metrics (``labels_dir``: the AI labels of
    an RLAIF run, whose labelling figures the report shows too)."""
    if policy_stage not in POLICY_CURVES:
        from kuberlhf.errors import ConfigError

        raise ConfigError(f"policy_stage: must be one of {', '.join(POLICY_CURVES)}, got {policy_stage!r}")
    scores = score_policies(sft_dir, policy_dir, prompts, gold=gold, samples=samples, seed=seed, reward_dir=reward_dir)
    sft_m, reward_m, policy_m = map(read_stage_metrics, (sft_dir, reward_dir, policy_dir))
    labels_m = read_stage_metrics(labels_dir)
    metrics = summary_metrics(scores, sft_m, reward_m, policy_m, labels_m)
    name = scores.get("judge_name")
    plots = [
        plot_gold(metrics[f"{name}_score_sft"], metrics[f"{name}_score_final"], policy_stage, name) if name else None,
        plot_curves(*STAGES["sft"].report, records=read_log(sft_dir)),
        plot_curves(*STAGES["reward"].report, records=read_log(reward_dir),
                    marks={"accuracy": reward_m["eval_accuracy"]} if "eval_accuracy" in reward_m else None),
        plot_labels(labels_m),
        plot_curves(*POLICY_CURVES[policy_stage], records=read_log(policy_dir)),
    ]
    page = render_html(policy_stage, metrics, [p for p in plots if p], scores["samples"], prompts,
                       judge=scores["judge"], judge_name=name)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(page)
    log.info("report written to %s", out)
    return metrics


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}img{max-width:100%;margin:0.5em 0}.num{text-align:right}
pre{white-space:pre-wrap;margin:0;font-size:0.9em}"""


def render_html(stage: str, metrics: dict[str, float], plots: list[str], samples: list[dict], prompts: str,
                judge: str = "none", judge_name: str | None = None) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(k)}</td><td class=num>{v:.4g}</td></tr>" for k, v in metrics.items())
    images = "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots)
    scored = "sft_score" in (samples[0] if samples else {})

    def cell(text: str, score: float | None) -> str:
        badge = f" <b>[{score:.2f}]</b>" if score is not None else ""
        return f"<td><pre>{esc(text)}</pre>{badge}</td>"

    sample_rows = "".join(
        f"<tr><td><pre>{esc(s['prompt'])}</pre></td>{cell(s['sft'], s.get('sft_score'))}"
        f"{cell(s['final'], s.get('final_score'))}</tr>" for s in samples
    )
    label = "Gold-judge" if judge_name == "gold" else f"{(judge_name or '').capitalize()}-judge"
    headline = (f"<p>{label} score on held-out prompts: SFT <b>{metrics[f'{judge_name}_score_sft']:.3f}</b> "
                f"&rarr; {esc(stage.upper())} <b>{metrics[f'{judge_name}_score_final']:.3f}</b>; win rate "
                f"{metrics['win_rate']:.2f}. Judge: {esc(judge)}.</p>" if judge_name
                else "<p>No judge: the gold judge does not apply to these prompts and no reward model was given."
                     "</p>")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>kuberlhf report: rlhf-{esc(stage)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>kuberlhf report: SFT &rarr; {esc(stage.upper())}</h1>{headline}"
        f"<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>{rows}</table>"
        f"<h2>Plots</h2>{images}"
        f"<h2>Sample generations</h2><p>Held-out prompts from <code>{esc(prompts)}</code>, same sampling seed"
        f"{f'; {label.lower()} score in brackets' if scored else ''}.</p>"
        f"<table><tr><th>prompt</th><th>SFT policy</th><th>{esc(stage.upper())} policy</th></tr>{sample_rows}</table>"
        "</body></html>\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the evaluation report of SFT and final policies.")
    parser.add_argument("--sft", required=True, help="SFT artifact (local dir)")
    parser.add_argument("--policy", required=True, help="final policy artifact (local dir)")
    parser.add_argument("--stage", default="ppo", choices=sorted(POLICY_CURVES), help="stage of the final policy")
    parser.add_argument("--reward", help="reward-model artifact (local dir)")
    parser.add_argument("--prompts", default="demo://prompts?n=200&split=test", help="held-out prompts")
    parser.add_argument("--no-gold", action="store_true", help="skip the gold judge (not the built-in task)")
    parser.add_argument("--out", default="report.html", help="HTML file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    metrics = write_report(args.out, sft_dir=args.sft, policy_dir=args.policy, policy_stage=args.stage,
                           reward_dir=args.reward, prompts=args.prompts, gold=not args.no_gold)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
