"""``kuberlhf feedback``: people rank the policy's candidates; their rankings become preference pairs.

$ kuberlhf generate --config configs/generate/demo.yaml                  # K candidates per prompt
$ export LABEL_STUDIO_URL=http://127.0.0.1:8080 LABEL_STUDIO_API_KEY=...  # make label-studio prints them
$ kuberlhf feedback export --candidates outputs/demo/candidates --project demo-ranking \\
      --instructions configs/feedback/ranking-instructions.html
$ kuberlhf feedback status --project demo-ranking
$ kuberlhf feedback import --candidates outputs/demo/candidates --project demo-ranking \\
      --output outputs/demo/feedback
$ kuberlhf reward --config configs/reward/demo.yaml data.train=outputs/demo/feedback/train.jsonl

Offline, for teams that label elsewhere: ``export --format jsonl|labelstudio --output FILE`` writes
the tasks to a file, and ``import --from FILE`` reads rankings JSONL (``.jsonl``) or a Label Studio
JSON export (``.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(verbs) -> None:
    fb = verbs.add_parser("feedback", help="rank candidates in Label Studio (or files); rankings into pairs",
                          description=__doc__.splitlines()[0])
    sub = fb.add_subparsers(dest="action", required=True, metavar="ACTION")
    ex = sub.add_parser("export", help="candidates -> a Label Studio project (idempotent) or a file")
    ex.add_argument("--candidates", required=True, help="`kuberlhf generate` artifact (dir, s3://) or .jsonl")
    ex.add_argument("--project", help="Label Studio project title (created if absent)")
    ex.add_argument("--instructions", help="labeling instructions and criteria for labelers (HTML or text file)")
    ex.add_argument("--unusable-bucket", action="store_true", help="let labelers set candidates apart as unusable")
    ex.add_argument("--labelers-per-task", type=int, default=1, help="annotations wanted per task (overlap)")
    ex.add_argument("--format", choices=["jsonl", "labelstudio"], help="write a file instead of a project")
    ex.add_argument("--output", help="the file of --format")
    st = sub.add_parser("status", help="annotated / total tasks, per labeler")
    st.add_argument("--project", required=True)
    st.add_argument("--wait-for", type=float, metavar="FRACTION", help="poll until this fraction is annotated")
    st.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait-for waits at most")
    st.add_argument("--poll", type=float, default=30.0, help="seconds between polls of --wait-for")
    im = sub.add_parser("import", help="rankings -> preference pairs (a dataset the reward stage reads)")
    im.add_argument("--candidates", help="the exported candidates (with --project, or a .json export file)")
    src = im.add_mutually_exclusive_group(required=True)
    src.add_argument("--project", help="Label Studio project title")
    src.add_argument("--from", dest="from_file", help="rankings .jsonl, or a Label Studio JSON export (.json)")
    im.add_argument("--output", required=True, help="where the dataset goes: local dir or s3:// URI")
    im.add_argument("--ties", choices=["skip", "drop"], default="skip",
                    help="tied candidates: no pair between them (skip), or drop rankings with ties")
    im.add_argument("--unusable", choices=["last", "drop"], default="last",
                    help="unusable candidates: below every ranked one (last), or in no pair (drop)")
    im.add_argument("--merge", choices=["majority", "separate"], default="majority",
                    help="several labelers of a task: majority vote per pair, or every labeler's pairs")
    im.add_argument("--eval-fraction", type=float, default=0.0,
                    help="share of the ranked prompts whose pairs are held out (eval.jsonl), no prompt on both sides")
    im.add_argument("--seed", type=int, default=0, help="seed of the held-out prompts")
    im.add_argument("--overwrite", action="store_true", help="replace a finished dataset in --output")


def run(args: argparse.Namespace) -> int:
    from kuberlhf.errors import ConfigError
    from kuberlhf.feedback import rounds
    from kuberlhf.feedback.labelstudio import Client

    if args.action == "export":
        rows = rounds.load_candidates(args.candidates)
        if args.format:
            if not args.output or args.project:
                raise ConfigError("--format: needs --output FILE (and no --project)")
            n = rounds.write_offline(rows, args.format, args.output, args.unusable_bucket)
            print(f"kuberlhf feedback export: {n} tasks -> {args.output}")
            return 0
        if not args.project:
            raise ConfigError("--project: the Label Studio project to export to (or --format and --output)")
        if args.labelers_per_task < 1:
            raise ConfigError("--labelers-per-task: must be at least 1")
        instructions = rounds.read_instructions(args.instructions)
        out = rounds.export_to_label_studio(Client.from_env(), rows, args.project, instructions,
                                            args.unusable_bucket, args.labelers_per_task)
        print(f"kuberlhf feedback export: project {args.project!r} (id {out['project']}): {out['added']} tasks added, "
              f"{out['present']} already there")
        return 0
    if args.action == "status":
        client = Client.from_env()
        now = (rounds.wait_for(client, args.project, args.wait_for, args.timeout, args.poll)
               if args.wait_for is not None else rounds.status(client, args.project))
        print(json.dumps(now, sort_keys=True))
        return 0
    settings = rounds.ImportSettings(ties=args.ties, unusable=args.unusable, merge=args.merge,
                                     eval_fraction=args.eval_fraction, seed=args.seed)
    if args.project:
        if not args.candidates:
            raise ConfigError("--candidates: needed with --project (the candidates that were exported)")
        rows = rounds.load_candidates(args.candidates)
        rankings = rounds.import_from_label_studio(Client.from_env(), rows, args.project)
    elif args.from_file.endswith(".jsonl"):
        rows, rankings = rounds.rankings_from_jsonl(args.from_file)
    else:
        if not args.candidates:
            raise ConfigError("--candidates: needed with a Label Studio export file (the candidates exported)")
        rows = rounds.load_candidates(args.candidates)
        try:
            tasks = json.loads(Path(args.from_file).read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"--from: cannot read {args.from_file} as a Label Studio JSON export: {err}") from None
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise ConfigError(f"--from: {args.from_file} is not a Label Studio JSON export (a list of tasks)")
        rankings = rounds.rankings_from_export(tasks, {r["id"] for r in rows}, {})
    pairs, ranked, metrics = rounds.build_dataset(rows, rankings, settings)
    rounds.publish(args.output, pairs, ranked, metrics, args.overwrite)
    print(f"kuberlhf feedback import: {metrics['pairs']} pairs from {metrics['rankings']} rankings "
          f"({metrics['skipped']} skipped) -> {args.output}", file=sys.stdout)
    return 0

