"""`kuberlhf launch` (being built)."""


def add_parser(verbs) -> None:
    verbs.add_parser("launch", help="(not available yet)")


def run(args) -> int:
    raise SystemExit("kuberlhf launch: not available yet")
