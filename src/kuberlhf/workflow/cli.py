"""`kuberlhf pipeline` (being built)."""


def add_parser(verbs) -> None:
    verbs.add_parser("pipeline", help="(not available yet)")


def run(args) -> int:
    raise SystemExit("kuberlhf pipeline: not available yet")
