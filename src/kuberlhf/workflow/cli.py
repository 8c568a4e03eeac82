"""``kuberlhf pipeline``: compile, run locally, submit to or upload to Kubeflow Pipelines.

$ kuberlhf pipeline compile [--pipeline rlhf-ppo|rlhf-dpo|...|all] [--out FILE|DIR] [--param setting=N ...]
$ kuberlhf pipeline run --local [--pipeline rlhf-ppo] [--param key=value ...]
$ kuberlhf pipeline submit --host URL [--pipeline rlhf-ppo] [--param key=value ...] [--experiment NAME]
$ kuberlhf pipeline upload --host URL
$ kuberlhf pipeline params [--pipeline rlhf-ppo]

Import-light: kfp loads only when a command runs.
"""

from __future__ import annotations

import argparse

# kuberlhf.workflow.pipelines.PIPELINES, without importing kfp here
PIPELINE_NAMES = ("rlhf-ppo", "rlhf-dpo", "rlhf-human", "rlhf-rlaif", "rest")


def add_parser(verbs) -> None:
    parser = verbs.add_parser("pipeline", help="Kubeflow pipelines: compile, run locally, submit, upload",
                              description=f"Kubeflow pipelines ({', '.join(PIPELINE_NAMES)}): compile, run, submit, "
                                          "upload.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    comp = commands.add_parser("compile", help="write the pipeline YAML to upload in the Kubeflow UI")
    comp.add_argument("--pipeline", default="all", choices=[*PIPELINE_NAMES, "all"],
                      help="which pipeline (default all)")
    comp.add_argument("--out", help="a .yaml file (one pipeline) or a folder (default outputs/pipelines)")
    comp.add_argument("--param", action="append", default=[], metavar="setting=N",
                      help="a compile setting of the pipeline, e.g. iterations=3 (rest); repeatable")
    _image_args(comp)

    run = commands.add_parser("run", help="run a pipeline end to end (--local: on this machine with kfp.local)")
    run.add_argument("--local", action="store_true", required=True, help="run on this machine (no cluster)")
    _pipeline_arg(run)
    _param_arg(run)
    run.add_argument("--root", default="outputs/pipeline", help="folder of the local run's artifacts")
    run.add_argument("--cache", action="store_true", help="reuse the outputs of identical earlier local steps")

    sub = commands.add_parser("submit", help="start a run on a Kubeflow Pipelines server")
    sub.add_argument("--host", required=True, help="Kubeflow Pipelines API URL, e.g. http://ml-pipeline.kubeflow:8888")
    _pipeline_arg(sub)
    _param_arg(sub)
    sub.add_argument("--experiment", default="kuberlhf", help="experiment the run belongs to")
    sub.add_argument("--run-name", help="run name (default: the server's)")
    sub.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")
    sub.add_argument("--service-account", default="kuberlhf-launcher",
                     help="ServiceAccount of the run's pods (it may create PyTorchJobs)")
    sub.add_argument("--pipeline-root", help="artifact root of the run, e.g. s3://bucket/pipelines (default: server's)")

    up = commands.add_parser("upload", help="upload the compiled pipelines (a new version where one exists)")
    up.add_argument("--host", required=True, help="Kubeflow Pipelines API URL")
    up.add_argument("--pipeline", default="all", choices=[*PIPELINE_NAMES, "all"], help="which pipeline (default all)")
    up.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs)")

    params = commands.add_parser("params", help="list a pipeline's parameters, defaults and descriptions")
    _pipeline_arg(params)


def _pipeline_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default="rlhf-ppo", choices=PIPELINE_NAMES,
                        help="which pipeline (default rlhf-ppo)")


def _param_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--param", action="append", default=[], metavar="key=value",
                        help="pipeline parameter (YAML value), e.g. mode=pytorchjob or "
                             "ppo_overrides='[\"training.max_steps=50\"]'; repeatable")


def _image_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", help="image registry (default KUBERLHF_IMAGE_REGISTRY or ghcr.io/kuberlhf)")
    parser.add_argument("--tag", help="image tag (default KUBERLHF_IMAGE_TAG or the kuberlhf version)")


def run(args: argparse.Namespace) -> int:
    commands = {"compile": _compile, "run": _run, "submit": _submit, "upload": _upload, "params": _params}
    return commands[args.command](args)


def _compile(args: argparse.Namespace) -> int:
    from kuberlhf.errors import ConfigError
    from kuberlhf.workflow.compiling import compile_pipeline, compile_targets, load_spec, split_settings

    for name, path in compile_targets(args.pipeline, args.out):
        settings, rest = split_settings(name, args.param)
        if rest and args.pipeline != "all":
            raise ConfigError(f"--param {rest[0]!r}: not a compile setting of {name}; run parameters are given to "
                              "`kuberlhf pipeline run|submit`")
        compile_pipeline(name, path, args.registry, args.tag, settings)
        load_spec(path)  # what the Kubeflow UI will load
        print(f"kuberlhf pipeline compile: {name} -> {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from kuberlhf.workflow.compiling import parse_params, split_settings
    from kuberlhf.workflow.local import run_local, summary

    settings, items = split_settings(args.pipeline, args.param)
    params = parse_params(args.pipeline, items, settings)
    result = run_local(args.pipeline, params, root=args.root, cache=args.cache, settings=settings)
    print(summary(args.pipeline, result))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from kuberlhf.workflow.compiling import parse_params, split_settings
    from kuberlhf.workflow.remote import submit

    settings, items = split_settings(args.pipeline, args.param)
    params = parse_params(args.pipeline, items, settings)
    result = submit(args.host, args.pipeline, params, experiment=args.experiment, run_name=args.run_name,
                    namespace=args.namespace, service_account=args.service_account, pipeline_root=args.pipeline_root,
                    settings=settings)
    print(f"kuberlhf pipeline submit: {args.pipeline} run {result['run_id']}: {result['url']}")
    return 0


def _upload(args: argparse.Namespace) -> int:
    from kuberlhf.workflow.remote import upload

    names = list(PIPELINE_NAMES) if args.pipeline == "all" else [args.pipeline]
    for item in upload(args.host, names, namespace=args.namespace):
        print(f"kuberlhf pipeline upload: {item['pipeline']}: {item['action']} ({item['version']})")
    return 0


def _params(args: argparse.Namespace) -> int:
    from kuberlhf.workflow.compiling import parameters

    for key, p in parameters(args.pipeline).items():
        print(f"{key} ({p['type'].lower()}) = {p['default']!r}\n    {' '.join((p['description'] or '').split())}")
    return 0
