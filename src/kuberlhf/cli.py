"""The ``kuberlhf`` command: one verb per stage (from :data:`kuberlhf.stages.registry.STAGES`), and tools.

$ kuberlhf sft --config configs/sft/demo.yaml [key=value ...]
$ kuberlhf reward --config configs/reward/demo.yaml [key=value ...]
$ kuberlhf sft --help-config            # every config key, its default and help
$ torchrun --nproc_per_node 2 -m kuberlhf.cli sft --config configs/sft/demo.yaml
"""

from __future__ import annotations

import argparse
import importlib
import sys

from kuberlhf import __version__
from kuberlhf.errors import KuberlhfError
from kuberlhf.stages.registry import STAGES, configure_logging, get_stage, run_and_report

# verbs beyond the stages -> module with ``add_parser(verbs)`` and ``run(args) -> int`` (import-light)
TOOLS = {
    "launch": "kuberlhf.k8s.cli",
    "runtimes": "kuberlhf.k8s.cli",
    "feedback": "kuberlhf.feedback.cli",
    "pipeline": "kuberlhf.workflow.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kuberlhf", description="Kubernetes-native RLHF stages.")
    parser.add_argument("--version", action="version", version=f"kuberlhf {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="STAGE")
    for name, stage in STAGES.items():
        sub = verbs.add_parser(name, help=stage.summary, description=stage.summary)
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
    ev.add_argument("--judge", default="gold", help="judge plug-in (kuberlhf.judges entry point; default gold)")
    merge = verbs.add_parser("merge", help="merge an SFT artifact's LoRA adapter into a standalone model",
                             description="Merge an SFT artifact's LoRA adapter into its base model: one "
                                         "standalone model.")
    merge.add_argument("--model", required=True, help="SFT artifact: local dir or s3:// URI")
    merge.add_argument("--output", required=True, help="where the merged model goes: local dir or s3:// URI")
    merge.add_argument("--base", help="base model to merge into (default: the one in the artifact's card)")
    merge.add_argument("--overwrite", action="store_true", help="replace a finished artifact in --output")
    for module in dict.fromkeys(TOOLS.values()):  # a module may add several verbs
        importlib.import_module(module).add_parser(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        if args.verb == "evaluate":
            return _evaluate(args)
        if args.verb == "merge":
            return _merge(args)
        if args.verb in TOOLS:
            return importlib.import_module(TOOLS[args.verb]).run(args)
        if args.help_config:
            from kuberlhf.config import describe

            for key, default, text in describe(get_stage(args.verb).config_cls):
                print(f"{key} = {default}\n    {text}")
            return 0
    except KuberlhfError as err:
        print(f"kuberlhf {args.verb}: error: {err}", file=sys.stderr)
        return err.exit_code
    return run_and_report(args.verb, args.config, args.overrides)


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from kuberlhf.eval.heldout import judge_eval

    result = judge_eval(args.model, args.prompts, judge=args.judge, greedy=args.greedy, seed=args.seed)
    result.pop("scores")
    for sample in result.pop("samples"):
        print(f"  [{sample[args.judge]:.2f}] {sample['prompt'].splitlines()[0]} ->{sample['response']}")
    print(json.dumps(result))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from kuberlhf.models.publish import merge_artifact

    result = merge_artifact(args.model, args.output, base=args.base, overwrite=args.overwrite)
    print(f"kuberlhf merge: done: {'merged the adapter' if result['merged'] else 'passed through'} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
