"""``kuberlhf launch``: run a stage on Kubernetes as a PyTorchJob or a TrainJob and wait for it.

$ kuberlhf launch ppo --dry-run                                   # print the PyTorchJob, touch nothing
$ kuberlhf launch ppo --backend trainjob --dry-run                # the Trainer v2 TrainJob instead
$ kuberlhf runtimes --cluster configs/cluster/a100.yaml          # the TrainingRuntimes those settings need
$ kuberlhf launch ppo --help-cluster                              # every cluster key, its default and help
$ kuberlhf launch sft --config configs/sft/opt-1.3b-qlora.yaml --cluster configs/cluster/a100.yaml \\
      output_dir=s3://bucket/runs/sft cluster.nodes=2
$ kuberlhf launch reward --config configs/reward/demo.yaml --name reward-try-1 --manifest-out job.yaml

Overrides starting with ``cluster.`` set cluster keys (``configs/cluster/``); the others go to the
stage config, which is loaded and checked here first, so a bad key fails before anything exists.
Cluster settings: defaults < /etc/kuberlhf/cluster.yaml (when mounted) < --cluster FILE < overrides.
Only the size and shape of the job may be overridden (cluster.nodes, .gpus_per_node, .memory, ...:
kuberlhf.k8s.spec.RUN_KEYS); the image, ServiceAccount, Secrets and namespace come from the files.
The same configs relaunched re-attach to their job (same name) instead of starting another; after a
failure the relaunch starts the next attempt (<name>-a2, ... up to cluster.max_attempts).
"""

from __future__ import annotations

import argparse
import json
import sys


class _IntermixedParser(argparse.ArgumentParser):
    """Flags may come after STAGE and between ``key=value`` words (``launch sft --dry-run a=1``)."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:  # parse_known_intermixed_args calls back here (Python 3.11, 3.12)
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def add_parser(verbs) -> None:
    from kuberlhf.k8s.spec import BACKENDS
    from kuberlhf.stages.registry import STAGES

    doc = (__doc__ or "").strip().splitlines()[0].removeprefix("``kuberlhf launch``: ")
    parser_class, verbs._parser_class = verbs._parser_class, _IntermixedParser  # argparse has no public hook
    try:
        p = verbs.add_parser("launch", help=doc, description=doc)
    finally:
        verbs._parser_class = parser_class
    p.add_argument("stage", choices=list(STAGES), metavar="STAGE", help=f"stage to run: {', '.join(STAGES)}")
    p.add_argument("--config", help="stage config as the pod sees it (default: configs/STAGE/demo.yaml)")
    p.add_argument("--cluster", help="cluster settings YAML (configs/cluster/*.yaml)")
    p.add_argument("--name", help="job name (DNS-1035, <= 44 chars; a retry after a failure appends -a2, -a3, ...); "
                   "default: derived from the run id and stage")
    p.add_argument("--run-id", help="run the job belongs to; default: a hash of the resolved stage and cluster configs")
    p.add_argument("--dry-run", action="store_true", help="print the job's YAML and exit; no cluster needed")
    p.add_argument("--backend", choices=list(BACKENDS),
                   help="job kind: pytorchjob (Training Operator v1) or trainjob (Kubeflow Trainer v2); "
                   "default: cluster.backend (pytorchjob)")
    p.add_argument("--manifest-out", help="also write the rendered job YAML to this file")
    p.add_argument("--help-cluster", action="store_true", help="list every cluster key, its default and help; exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="stage overrides (training.max_steps=10) and cluster.* overrides (cluster.nodes=2)")
    doc = "print the Kubeflow Trainer v2 runtimes (one per stage image) that TrainJobs of these cluster settings use"
    r = verbs.add_parser("runtimes", help=doc, description=doc + "; the chart installs the same ones")
    r.add_argument("--cluster", help="cluster settings YAML (configs/cluster/*.yaml)")
    r.add_argument("overrides", nargs="*", metavar="cluster.key=value", help="cluster.* overrides")


def run(args: argparse.Namespace) -> int:
    if args.verb == "runtimes":
        return _print_runtimes(args)
    from kuberlhf.k8s import launcher
    from kuberlhf.k8s.pytorchjob import to_yaml

    if args.help_cluster:
        from kuberlhf.config import describe
        from kuberlhf.k8s.spec import ClusterConfig

        for key, default, text in describe(ClusterConfig, "cluster."):
            print(f"{key} = {default}\n    {text}")
        return 0
    config = args.config or f"configs/{args.stage}/demo.yaml"
    run_id = args.run_id or ""  # "": a hash of the resolved configs (launcher.content_run_id)
    if args.dry_run:
        _, job = launcher.render(args.stage, config, args.overrides, run_id, args.stage, args.cluster, args.name,
                                 args.backend)
        text = to_yaml(job)
        if args.manifest_out:
            with open(args.manifest_out, "w") as f:
                f.write(text)
        sys.stdout.write(text)
        return 0
    result = launcher.launch_stage(stage=args.stage, config=config, overrides=args.overrides, run_id=run_id,
                                   task=args.stage, cluster=args.cluster, manifest_out=args.manifest_out,
                                   backend=args.backend, name=args.name)
    print(json.dumps(result))
    return 0



def _print_runtimes(args: argparse.Namespace) -> int:
    """The runtimes of every training image for ``--cluster`` and ``cluster.*`` overrides, as YAML documents."""
    from kuberlhf.k8s import trainjob
    from kuberlhf.k8s.pytorchjob import to_yaml
    from kuberlhf.k8s.spec import load_cluster, split_overrides

    stage_overrides, cluster_overrides = split_overrides(args.overrides)
    if stage_overrides:
        print(f"kuberlhf runtimes: only cluster.* overrides apply, got {' '.join(stage_overrides)}", file=sys.stderr)
        return 2
    cluster = load_cluster(args.cluster, cluster_overrides)
    docs = [to_yaml(trainjob.build_runtime(image, cluster, cluster.runtime_kind))
            for image in trainjob.training_images()]
    sys.stdout.write("---\n".join(docs))
    return 0
