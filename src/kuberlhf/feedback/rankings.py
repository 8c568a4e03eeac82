"""Rankings of candidates into preference pairs, scores and agreement figures.

A ranking orders one task's candidates best to worst in *tiers* (a tier of several candidates is a
tie); candidates marked unusable are set apart; a skipped task has no ranking. InstructGPT trains
its reward model on all K-choose-2 pairs of each ranking; here:

* ``ties="skip"`` makes no pair inside a tier, ``ties="drop"`` drops a ranking with any tie;
* ``unusable="last"`` ranks unusable candidates below every ranked one (no pair among them),
  ``unusable="drop"`` leaves them out of every pair;
* several labelers of one task are merged by ``merge="majority"`` (a pair whose votes agree more one
  way than the other, with its vote share as ``agreement``) or kept as ``merge="separate"`` pairs.

Agreement between labelers of the same task: *pairwise agreement* (of the candidate pairs both
ordered, the share they order alike) and *Kendall's tau-b* of their rank positions, each averaged
over every two labelers of a task. Kendall's tau-b is written out here (a dozen lines) rather than
taken from SciPy, which nothing else in the project needs.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from kuberlhf.errors import DataError

Ties = Literal["skip", "drop"]
Unusable = Literal["last", "drop"]
Merge = Literal["majority", "separate"]


@dataclass(frozen=True)
class Ranking:
    """One labeler's ranking of one task: ``tiers`` of candidate indexes, best first."""

    task: str
    labeler: str
    tiers: tuple[tuple[int, ...], ...] = ()
    unusable: tuple[int, ...] = ()
    skipped: bool = False

    @property
    def has_ties(self) -> bool:
        return any(len(t) > 1 for t in self.tiers)

    def positions(self, unusable: Unusable = "last") -> dict[int, int]:
        """Candidate -> tier number (0 = best); unusable candidates one tier below the last, or absent."""
        pos = {c: i for i, tier in enumerate(self.tiers) for c in tier}
        if unusable == "last":
            pos.update({c: len(self.tiers) for c in self.unusable})
        return pos


def check_ranking(ranking: Ranking, k: int) -> None:
    """Refuse a ranking that names a candidate outside ``0..k-1`` or names one twice (one line, naming the task)."""
    if k < 2:
        raise DataError(f"task {ranking.task}: {k} candidate(s); a ranking needs at least 2")
    if ranking.skipped:
        return
    if any(not tier for tier in ranking.tiers):
        raise DataError(f"task {ranking.task} (labeler {ranking.labeler}): an empty tie (a tier names no candidate)")
    seen: set[int] = set()
    for c in [c for tier in ranking.tiers for c in tier] + list(ranking.unusable):
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < k:
            raise DataError(f"task {ranking.task} (labeler {ranking.labeler}): unknown candidate {c!r}; "
                            f"the task has candidates 0..{k - 1}")
        if c in seen:
            raise DataError(f"task {ranking.task} (labeler {ranking.labeler}): candidate {c} is ranked twice")
        seen.add(c)
    if len(seen) < 2:
        raise DataError(f"task {ranking.task} (labeler {ranking.labeler}): ranks {len(seen)} candidate(s); "
                        "a ranking orders at least 2 (or mark the task skipped)")


def ordered_pairs(ranking: Ranking, ties: Ties = "skip", unusable: Unusable = "last") -> list[tuple[int, int]]:
    """Every (better, worse) pair of candidates the ranking orders."""
    if ranking.skipped or (ties == "drop" and ranking.has_ties):
        return []
    pos = ranking.positions(unusable)
    return [(a, b) for a, b in itertools.permutations(sorted(pos), 2) if pos[a] < pos[b]]


def scores(ranking: Ranking, k: int, unusable: Unusable = "last") -> list[float | None]:
    """A normalised score per candidate: 1 for the best tier, 0 for the worst, evenly between; unusable
    candidates 0 (``last``) or None (``drop``), unranked ones None."""
    pos = ranking.positions(unusable)
    if ranking.skipped or not pos:
        return [None] * k
    worst = max(pos.values())

    def score(c: int) -> float | None:
        if c not in pos:
            return None
        if c in ranking.unusable:
            return 0.0
        return 1.0 if worst == 0 else 1.0 - pos[c] / worst

    return [score(c) for c in range(k)]


@dataclass
class Pair:
    task: str
    chosen: int
    rejected: int
    labelers: list[str] = field(default_factory=list)
    agreement: float | None = None  # majority merge: the share of the votes on the two that ordered them so


def check_labelers(rankings: Iterable[Ranking]) -> None:
    """Refuse a labeler who ranks one task twice (their vote would count double)."""
    seen: set[tuple[str, str]] = set()
    for r in rankings:
        if (r.task, r.labeler) in seen:
            raise DataError(f"task {r.task}: labeler {r.labeler or '(unnamed)'} ranks it twice; keep one ranking")
        seen.add((r.task, r.labeler))


def to_pairs(rankings: Iterable[Ranking], *, ties: Ties = "skip", unusable: Unusable = "last",
             merge: Merge = "majority") -> list[Pair]:
    """Preference pairs from every labeler's rankings, per task in first-seen order."""
    rankings = list(rankings)
    check_labelers(rankings)
    by_task: dict[str, list[Ranking]] = defaultdict(list)
    for r in rankings:
        by_task[r.task].append(r)
    out: list[Pair] = []
    for task, group in by_task.items():
        if merge == "separate":
            out += [Pair(task, a, b, [r.labeler]) for r in group for a, b in ordered_pairs(r, ties, unusable)]
            continue
        votes: dict[tuple[int, int], list[str]] = defaultdict(list)
        for r in group:
            for a, b in ordered_pairs(r, ties, unusable):
                votes[(a, b)].append(r.labeler)
        for (a, b), voters in sorted(votes.items()):
            against = len(votes.get((b, a), []))
            if len(voters) > against:
                out.append(Pair(task, a, b, voters, len(voters) / (len(voters) + against)))
    return out


def kendall_tau_b(x: list[int], y: list[int]) -> float | None:
    """Kendall's tau-b of two equally long rank lists (ties allowed); None when either is constant."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif (dx > 0) == (dy > 0):
            concordant += 1
        else:
            discordant += 1
    denominator = ((concordant + discordant + ties_x) * (concordant + discordant + ties_y)) ** 0.5
    return (concordant - discordant) / denominator if denominator else None


def agreement(rankings: Iterable[Ranking], unusable: Unusable = "last") -> dict:
    """Inter-labeler agreement over the tasks ranked by two or more labelers (skipped rankings aside)."""
    by_task: dict[str, list[Ranking]] = defaultdict(list)
    for r in rankings:
        if not r.skipped:
            by_task[r.task].append(r)
    agree = compared = 0
    taus: list[float] = []
    shared = 0
    for group in by_task.values():
        if len(group) < 2:
            continue
        shared += 1
        for r1, r2 in itertools.combinations(group, 2):
            p1, p2 = r1.positions(unusable), r2.positions(unusable)
            both = sorted(set(p1) & set(p2))
            for a, b in itertools.combinations(both, 2):
                d1, d2 = p1[a] - p1[b], p2[a] - p2[b]
                if d1 and d2:
                    compared += 1
                    agree += (d1 > 0) == (d2 > 0)
            tau = kendall_tau_b([p1[c] for c in both], [p2[c] for c in both])
            if tau is not None:
                taus.append(tau)
    return {
        "tasks_with_several_labelers": shared,
        "pairwise_agreement": agree / compared if compared else None,
        "kendall_tau": sum(taus) / len(taus) if taus else None,
        "compared_pairs": compared,
    }
