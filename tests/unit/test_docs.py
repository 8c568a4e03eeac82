"""The README and docs/*.md: every relative link reaches a file and, with ``#anchor``, a heading of it;
every ``docs/<page>.md`` the text names exists; the README's first screen has the two commands.

Anchors follow GitHub's slugs: the heading's text (inline code and link targets dropped, their text
kept) lowercased, every character that is not a letter, digit, space, ``-`` or ``_`` removed, each
space a ``-``; a repeated slug gets ``-1``, ``-2``, ... in order.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "charts/kuberlhf/README.md"]

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
DOCS_PATH = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)")
FIRST_SCREEN = 40


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a fenced line becomes empty, so line numbers hold)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return lines


def slug(heading: str) -> str:
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text()):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """One line per relative link of ``path`` whose file or heading does not exist."""
    problems = []
    for number, line in enumerate(prose(path.read_text()), 1):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    return problems


def missing_docs(path: Path) -> list[str]:
    """One line per ``docs/<page>.md`` named in ``path``'s text (links included) that does not exist."""
    return [f"{path.relative_to(ROOT)}:{number}: docs/{name} does not exist"
            for number, line in enumerate(path.read_text().splitlines(), 1)
            for name in DOCS_PATH.findall(line) if not (ROOT / "docs" / name).exists()]


def test_slugs_follow_github():
    assert slug("Human feedback: `kuberlhf feedback`") == "human-feedback-kuberlhf-feedback"
    assert slug("Kubeflow Trainer v2 (TrainJob backend)") == "kubeflow-trainer-v2-trainjob-backend"
    assert slug("0. What you need") == "0-what-you-need"
    assert slug("One S3 stack: boto3; s3fs only for `save_to_disk` folders, as an extra") == (
        "one-s3-stack-boto3-s3fs-only-for-save_to_disk-folders-as-an-extra")
    assert slug("AI feedback and ReST: `kuberlhf rlaif`, `kuberlhf rest`") == (
        "ai-feedback-and-rest-kuberlhf-rlaif-kuberlhf-rest")


def test_the_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/a.md").write_text("# A page\n\n## Same\n\n## Same\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n[ok](docs/a.md#same-1) [self](#top) [web](https://example.com/x.md#nope)\n"
        "`[code](docs/none.md)`\n```\n[fenced](docs/none.md)\n```\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#same-2) [bad self](#bottom) see docs/c.md\n")
    assert broken_links(page) == [
        "README.md:8: docs/b.md: no file docs/b.md",
        "README.md:8: docs/a.md#same-2: no heading #same-2 in docs/a.md",
        "README.md:8: #bottom: no heading #bottom in README.md",
    ]
    assert missing_docs(page) == [
        "README.md:4: docs/none.md does not exist",
        "README.md:6: docs/none.md does not exist",
        "README.md:8: docs/b.md does not exist",
        "README.md:8: docs/c.md does not exist",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_reaches_its_file_and_heading(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_named_docs_page_exists(page):
    assert missing_docs(page) == []


def test_the_readme_starts_with_the_two_commands():
    first = "\n".join((ROOT / "README.md").read_text().splitlines()[:FIRST_SCREEN])
    assert "make demo" in first and "make test" in first


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{p.name}" not in readme]
    assert unlinked == []
