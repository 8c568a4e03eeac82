"""One labeling round: candidates out (Label Studio or files), rankings in, preference data published.

Formats, both ways:

* **candidates**: the ``kuberlhf generate`` artifact (a dir or ``s3://`` prefix with
  ``candidates.jsonl``) or such a JSONL file: rows ``{"id", "prompt", "candidates": [K texts]}``.
* **rankings JSONL** (for teams that label elsewhere): one row per task and labeler,
  ``{"id", "prompt", "candidates", "ranking", "unusable", "skipped", "labeler"}``; ``ranking`` lists
  candidate indexes best first, a nested list being a tie (``[2, [0, 3], 1]``).
* **Label Studio task JSON** (its import format) out, and its JSON export in.

The imported artifact holds ``train.jsonl`` (pairs: ``prompt``, ``chosen``, ``rejected``, with the
task, labelers and their agreement: what the reward stage reads) and, with an eval fraction,
``eval.jsonl`` (the pairs of a share of the *prompts*, so no prompt is on both sides), laid out as a
pipeline data step's ``Dataset``; ``rankings/rankings.jsonl`` (every ranking with a normalised score
per candidate) and ``metrics.json`` (counts and agreement). It is checked whole before anything is
written, and published manifest last.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberlhf.data.pairs import TRAIN_FILE, split_by_task, unusable_pair, write_pairs
from kuberlhf.errors import DataError, KuberlhfError
from kuberlhf.feedback import labelstudio as ls
from kuberlhf.feedback.rankings import Merge, Ranking, Ties, Unusable, agreement, check_ranking, scores, to_pairs

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------- candidates


def load_candidates(path: str) -> list[dict]:
    """Candidate rows from a ``generate`` artifact, a JSONL file or any data source, read and checked by the
    data loader (ids unique, K >= 2 each)."""
    from kuberlhf.data import load_examples
    from kuberlhf.data.formats import with_ids

    data, _ = load_examples(path, "candidates")
    return with_ids(data, path)


def _task_rows(lines: list[str], source: str) -> Iterator[tuple[str, dict]]:
    """(where, row) of each JSON line holding a task: an object with ``id``, ``prompt`` and ``candidates``."""
    for n, line in enumerate(lines, 1):
        where = f"{source} row {n}"
        try:
            row = json.loads(line)
        except ValueError:
            raise DataError(f"{where}: not JSON") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key in ("id", "prompt", "candidates"):
            if key not in row:
                raise DataError(f"{where}: missing field {key!r}")
        yield where, row


# ---------------------------------------------------------------------- rankings in


def _tiers(value: Any, where: str) -> tuple[tuple[int, ...], ...]:
    if not isinstance(value, list):
        raise DataError(f"{where}: field 'ranking' must be a list (best first; a nested list is a tie)")
    return tuple(tuple(v) if isinstance(v, list) else (v,) for v in value)


def rankings_from_jsonl(path: str) -> tuple[list[dict], list[Ranking]]:
    """(candidate rows, rankings) of a rankings JSONL file; a task's candidates must agree across its rows."""
    tasks: dict[str, dict] = {}
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise DataError(f"rankings {path}: {err.strerror or err}") from None
    for where, row in _task_rows(lines, path):
        task = str(row["id"])
        known = tasks.setdefault(task, {"id": task, "prompt": row["prompt"], "candidates": row["candidates"]})
        if (known["prompt"], known["candidates"]) != (row["prompt"], row["candidates"]):
            raise DataError(f"{where}: task {task} has other prompt or candidates than in an earlier row")
        if not isinstance(row["candidates"], list):
            raise DataError(f"{where}: field 'candidates' must be a list of texts")
        unusable = row.get("unusable") or []
        if not isinstance(unusable, list):
            raise DataError(f"{where}: field 'unusable' must be a list of candidate indexes")
        skipped = bool(row.get("skipped", False))
        ranking = Ranking(task, str(row.get("labeler", "")), () if skipped else _tiers(row.get("ranking"), where),
                          tuple(unusable), skipped)
        check_ranking(ranking, len(row["candidates"]))
        out.append(ranking)
    return list(tasks.values()), out


def _ranker_value(result: Any, where: str) -> tuple[list[str], list[str]]:
    """(ranked item ids best first, unusable ids) of an annotation's ranker result.

    Without buckets the list is under the ranker's name (``rank``); with them under the bucket
    ``ranked``, the unusable ones under ``unusable``, and items left where they were under ``_``
    (unranked: in no pair)."""
    for item in result if isinstance(result, list) else []:
        if isinstance(item, dict) and item.get("type") == "ranker":
            value = item.get("value") if isinstance(item.get("value"), dict) else {}
            ranker = value.get("ranker")
            if not isinstance(ranker, dict):
                break
            ranked, unusable = ranker.get("ranked", ranker.get("rank")), ranker.get("unusable", [])
            if isinstance(ranked, list) and isinstance(unusable, list):
                return ranked, unusable
            break
    raise DataError(f"{where}: the annotation holds no ranking (a 'ranker' result)")


def rankings_from_export(tasks: list[dict], exported_ids: set[str] | None, users: dict[int, str]) -> list[Ranking]:
    """Rankings of a Label Studio JSON export; an annotation of a task not exported by us is refused."""
    out = []
    for task in tasks:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        task_id = data.get(ls.TASK_ID)
        if task_id is None or (exported_ids is not None and task_id not in exported_ids):
            if task.get("annotations"):
                raise DataError(f"Label Studio task {task.get('id')}: annotated, but not a task of these candidates "
                                f"(its {ls.TASK_ID} is {task_id!r})")
            continue
        k = len(data.get("items", []))
        for ann in task.get("annotations", []):
            labeler = _labeler(ann, users)
            where = f"task {task_id} (labeler {labeler})"
            if ann.get("was_cancelled"):
                out.append(Ranking(task_id, labeler, skipped=True))
                continue
            ranked, unusable = _ranker_value(ann.get("result", []), where)
            ranking = Ranking(task_id, labeler, tuple((_index(c, k, where),) for c in ranked),
                              tuple(_index(c, k, where) for c in unusable))
            check_ranking(ranking, k)
            out.append(ranking)
    return out


def _labeler(annotation: dict, users: dict[int, str]) -> str:
    """Who made an annotation: the user's e-mail where known, else the id as exported."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return users.get(who, str(who)) if isinstance(who, int) else str(who)


def _index(item_id: Any, k: int, where: str) -> int:
    if isinstance(item_id, str) and item_id.startswith("c") and item_id[1:].isdigit():
        return int(item_id[1:])
    raise DataError(f"{where}: unknown candidate {item_id!r}; the task has candidates c0..c{k - 1}")


def read_instructions(path: str | None, what: str = "--instructions") -> str:
    """The labelers' instructions file (empty without one); an unreadable file is a one-line error."""
    from kuberlhf.errors import ConfigError

    if not path:
        return ""
    try:
        return Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{what} {path}: {err.strerror or err}") from None


# ---------------------------------------------------------------------- publishing


@dataclass
class ImportSettings:
    ties: Ties = "skip"
    unusable: Unusable = "last"
    merge: Merge = "majority"
    eval_fraction: float = 0.0  # share of the ranked prompts whose pairs go to eval.jsonl
    seed: int = 0

    def __post_init__(self) -> None:
        from kuberlhf.errors import ConfigError

        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"--eval-fraction: must be in [0, 1), got {self.eval_fraction}")


def build_dataset(rows: list[dict], rankings: list[Ranking], settings: ImportSettings) -> tuple[list, list, dict]:
    """(pairs rows, rankings rows, metrics) of the rankings of ``rows``' tasks."""
    by_id = {r["id"]: r for r in rows}
    for r in rankings:
        if r.task not in by_id:
            raise DataError(f"task {r.task} (labeler {r.labeler}): not a task of these candidates")
        check_ranking(r, len(by_id[r.task]["candidates"]))
    pairs, dropped = [], Counter()
    for p in to_pairs(rankings, ties=settings.ties, unusable=settings.unusable, merge=settings.merge):
        row = by_id[p.task]
        chosen, rejected = row["candidates"][p.chosen], row["candidates"][p.rejected]
        if why := unusable_pair(chosen, rejected):
            dropped[why] += 1
            continue
        pairs.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, "task": p.task,
                      "chosen_index": p.chosen, "rejected_index": p.rejected, "labelers": p.labelers,
                      "agreement": p.agreement})
    ranked = [{"id": r.task, "prompt": by_id[r.task]["prompt"], "candidates": by_id[r.task]["candidates"],
               "labeler": r.labeler, "skipped": r.skipped,
               "ranking": [list(t) if len(t) > 1 else t[0] for t in r.tiers], "unusable": list(r.unusable),
               "scores": scores(r, len(by_id[r.task]["candidates"]), settings.unusable)} for r in rankings]
    per_labeler = Counter(r.labeler for r in rankings if not r.skipped)
    metrics = {
        "tasks": len(rows),
        "tasks_ranked": len({r.task for r in rankings if not r.skipped}),
        "rankings": sum(not r.skipped for r in rankings),
        "skipped": sum(r.skipped for r in rankings),
        "rankings_with_ties": sum(r.has_ties for r in rankings),
        "pairs": len(pairs),
        "identical_pairs_dropped": dropped["identical"],
        "empty_pairs_dropped": dropped["empty"],
        "per_labeler": dict(sorted(per_labeler.items())),
        **{f"agreement_{k}" if not k.startswith("tasks") else k: v
           for k, v in agreement(rankings, settings.unusable).items()},
        "ties": settings.ties, "unusable": settings.unusable, "merge": settings.merge,
    }
    if not pairs:
        raise DataError("the rankings give no preference pairs (nothing ranked yet, or every ranking skipped/tied)")
    train, held = split_by_task(pairs, settings.eval_fraction, settings.seed)
    if not train:
        raise DataError("--eval-fraction leaves no training pairs; lower it")
    metrics.update(train_pairs=len(train), eval_pairs=len(held), eval_fraction=settings.eval_fraction)
    return (train, held), ranked, metrics


def publish(output: str, pairs: tuple[list[dict], list[dict]], ranked: list[dict], metrics: dict,
            overwrite: bool) -> None:
    """Write the preference dataset to ``output`` (local or ``s3://``), manifest last."""
    from kuberlhf.artifacts import storage

    complete = storage.is_complete(output)
    if complete and not overwrite:
        raise KuberlhfError(f"{output} already holds a finished feedback dataset; pass --overwrite to replace it")
    local = None if storage.is_remote(output) else Path(output)
    if local is not None and local.exists() and any(local.iterdir()) and not complete:
        raise KuberlhfError(f"{output} exists and is not a finished kuberlhf dataset; choose another --output")
    staging = Path(tempfile.mkdtemp(prefix="kuberlhf-feedback-"))
    try:
        write_pairs(staging, *pairs)
        (staging / "rankings").mkdir()
        (staging / "rankings/rankings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ranked))
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        (staging / "README.md").write_text(
            f"# Preference pairs from rankings\n\n{metrics['pairs']} pairs from {metrics['rankings']} rankings of "
            f"{metrics['tasks_ranked']} prompts (`kuberlhf feedback import`); train a reward model on it with "
            f"`kuberlhf reward data.train={output}/{TRAIN_FILE}`.\n")
        if complete:  # --overwrite: the old dataset goes whole, so none of its files outlives it
            storage.remove_dir(output) if local is None else shutil.rmtree(local)
        storage.publish_dir(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------- Label Studio round


def export_to_label_studio(client: ls.Client, rows: list[dict], project: str, instructions: str,
                           unusable_bucket: bool = False, labelers_per_task: int = 1) -> dict:
    """Create or reuse ``project`` and import the tasks it lacks; idempotent."""
    k = {len(r["candidates"]) for r in rows}
    if len(k) != 1:
        raise DataError(f"candidates: every prompt needs the same number of candidates, found {sorted(k)}")
    proj, created = client.ensure_project(project, k.pop(), instructions, unusable_bucket)
    if labelers_per_task != proj.get("maximum_annotations", 1):
        client.set_overlap(proj["id"], labelers_per_task)
    present = {t["data"].get(ls.TASK_ID) for t in client.tasks(proj["id"])}
    new = [ls.task_of(r) for r in rows if r["id"] not in present]
    client.import_tasks(proj["id"], new)
    log.info("project %r (id %d): %d tasks added, %d already there", project, proj["id"], len(new),
             len(rows) - len(new))
    return {"project": proj["id"], "created": created, "added": len(new), "present": len(rows) - len(new)}


def status(client: ls.Client, project: str) -> dict:
    """Tasks annotated, skipped and finished (annotated by as many labelers as the project asks, or skipped),
    the finished fraction of all tasks, and annotations per labeler."""
    proj = client.find_project(project)
    if proj is None:
        raise KuberlhfError(f"Label Studio has no project titled {project!r}; run `kuberlhf feedback export` first")
    tasks = client.export(proj["id"])
    users = client.users()
    wanted = max(int(proj.get("maximum_annotations") or 1), 1)
    per: Counter = Counter()
    annotated = skipped = finished = 0
    for t in tasks:
        done = sum(not a.get("was_cancelled") for a in t.get("annotations", []))
        cancelled = len(t.get("annotations", [])) - done
        annotated += done > 0
        skipped += done == 0 and cancelled > 0
        finished += done >= wanted or (done == 0 and cancelled > 0)  # skipped tasks are finished too
        for a in t.get("annotations", []):
            per[_labeler(a, users)] += 1
    return {"project": proj["id"], "total": len(tasks), "annotated": annotated, "skipped": skipped,
            "finished": finished, "labelers_per_task": wanted,
            "fraction": finished / len(tasks) if tasks else 0.0, "per_labeler": dict(sorted(per.items()))}


def wait_for(client: ls.Client, project: str, fraction: float, timeout: float, poll: float) -> dict:
    """Poll until ``fraction`` of the tasks is finished (progress in the log); a timeout is an error."""
    from kuberlhf.errors import ConfigError

    if not 0 < fraction <= 1:
        raise ConfigError(f"feedback fraction: must be in (0, 1], got {fraction}")
    deadline = time.monotonic() + timeout
    while True:
        now = status(client, project)
        log.info("project %r: %d/%d tasks finished (%d annotated, %d skipped; %.0f%%, goal %.0f%%)", project,
                 now["finished"], now["total"], now["annotated"], now["skipped"], 100 * now["fraction"],
                 100 * fraction)
        if now["total"] and now["fraction"] >= fraction:
            return now
        if time.monotonic() + poll > deadline:
            raise KuberlhfError(f"project {project!r}: {now['finished']}/{now['total']} tasks finished after "
                                f"{timeout:.0f} s, short of the {fraction:.0%} asked for")
        time.sleep(poll)


def import_from_label_studio(client: ls.Client, rows: list[dict], project: str) -> list[Ranking]:
    proj = client.find_project(project)
    if proj is None:
        raise KuberlhfError(f"Label Studio has no project titled {project!r}")
    return rankings_from_export(client.export(proj["id"]), {r["id"] for r in rows}, client.users())


# ---------------------------------------------------------------------- offline files


def write_offline(rows: list[dict], fmt: str, output: str, unusable_bucket: bool = False) -> int:
    """Candidates as rankings JSONL to fill in (``jsonl``) or as Label Studio tasks (``labelstudio``,
    with the interface beside it in ``<output>.label_config.xml``)."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"], "candidates": r["candidates"],
                                            "ranking": [], "unusable": [], "skipped": False, "labeler": ""}) + "\n"
                                for r in rows))
    else:
        path.write_text(json.dumps([ls.task_of(r) for r in rows], indent=1) + "\n")
        k = len(rows[0]["candidates"])
        Path(f"{output}.label_config.xml").write_text(ls.label_config(k, unusable_bucket) + "\n")
    return len(rows)
