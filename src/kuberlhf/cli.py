"""The ``kuberlhf`` command: one verb per stage.

$ kuberlhf sft --config configs/sft/demo.yaml [key=value ...]
$ kuberlhf reward --config configs/reward/demo.yaml [key=value ...]
$ kuberlhf sft --help-config            # every config key, its default and help
$ torchrun --nproc_per_node 2 -m kuberlhf.cli sft --config configs/sft/demo.yaml
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from kuberlhf import __version__
from kuberlhf.errors import KuberlhfError

# stage verb -> (module, config class); each module has ``run(cfg) -> dict``.
STAGES = {
    "sft": ("kuberlhf.sft", "SftConfig"),
    "reward": ("kuberlhf.reward", "RewardConfig"),
    "ppo": ("kuberlhf.ppo", "PpoConfig"),
    "dpo": ("kuberlhf.dpo", "DpoConfig"),
    "rloo": ("kuberlhf.rloo", "RlooConfig"),
    "grpo": ("kuberlhf.grpo", "GrpoConfig"),
}
# verbs beyond the stages -> module with ``add_parser(verbs)`` and ``run(args) -> int`` (import-light)
TOOLS = {
    "launch": "kuberlhf.k8s.cli",
    "pipeline": "kuberlhf.workflow.cli",
    "merge": "kuberlhf.merge",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kuberlhf", description="Kubernetes-native RLHF stages.")
    parser.add_argument("--version", action="version", version=f"kuberlhf {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="STAGE")
    for name, (module, _) in STAGES.items():
        doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()[0]
        sub = verbs.add_parser(name, help=doc, description=doc)
        sub.add_argument("--config", help=f"YAML config file (configs/{name}/*.yaml)")
        sub.add_argument("--help-config", action="store_true", help="list every config key and exit")
        sub.add_argument(
            "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. training.max_steps=10"
        )
    ev = verbs.add_parser("evaluate", help="score a policy with the demo task's gold judge")
    ev.add_argument("--model", required=True, help="policy: local dir, s3:// artifact or hub name")
    ev.add_argument("--prompts", default="demo://prompts?n=200&split=test", help="held-out prompts (any data source)")
    ev.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    ev.add_argument("--seed", type=int, default=0, help="sampling seed")
    for module in TOOLS.values():
        importlib.import_module(module).add_parser(verbs)
    return parser


def stage_argv(stage: str, config: str | None, overrides: list[str]) -> list[str]:
    """The arguments of ``kuberlhf STAGE`` (after the program): what a step or a pod runs."""
    return [stage, *(["--config", config] if config else []), *overrides]


def run_stage(verb: str, config: str | None, overrides: list[str]) -> dict:
    from kuberlhf.config import load_config

    module_name, class_name = STAGES[verb]
    module = importlib.import_module(module_name)
    cfg = load_config(getattr(module, class_name), config, overrides)
    return module.run(cfg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.verb == "evaluate":
            return _evaluate(args)
        if args.verb in TOOLS:
            return importlib.import_module(TOOLS[args.verb]).run(args)
        if args.help_config:
            from kuberlhf.config import describe

            module_name, class_name = STAGES[args.verb]
            cls = getattr(importlib.import_module(module_name), class_name)
            for key, default, text in describe(cls):
                print(f"{key} = {default}\n    {text}")
            return 0
        metrics = run_stage(args.verb, args.config, args.overrides)
    except KuberlhfError as err:
        print(f"kuberlhf {args.verb}: error: {err}", file=sys.stderr)
        return 2
    from kuberlhf.distributed import is_world_main

    if is_world_main():
        summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        print(f"kuberlhf {args.verb}: done: {summary}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from kuberlhf.evaluate import gold_eval

    result = gold_eval(args.model, args.prompts, greedy=args.greedy, seed=args.seed)
    for sample in result.pop("samples"):
        print(f"  [{sample['gold']:.2f}] {sample['prompt'].splitlines()[0]} ->{sample['response']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
