"""A labeling round against a real Label Studio: export, two labelers rank, status, import into pairs; offline
files both ways; bad input."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from helpers import REPO, run_cli

from kuberlhf.data.formats import prompt_id
from kuberlhf.demo.task import Demonstrator, format_prompt, gold_score

K = 4


@pytest.fixture
def candidates(tmp_path):
    """12 demo prompts with 4 candidates of mixed quality, as `kuberlhf generate` writes them."""
    demo, rows = Demonstrator(3), []
    for i in range(12):
        question, topic = demo.question()
        prompt = format_prompt(question)
        rows.append({"id": prompt_id(i, prompt), "prompt": prompt,
                     "candidates": [" " + demo.response(topic) for _ in range(K)]})
    out = tmp_path / "candidates"
    out.mkdir()
    (out / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, rows


def gold_order(row):
    return sorted(range(K), key=lambda c: (-gold_score(row["prompt"], row["candidates"][c]), c))


def ranker(order):
    return [{"type": "ranker", "from_name": "rank", "to_name": "candidates",
             "value": {"ranker": {"rank": [f"c{c}" for c in order]}}}]


@pytest.fixture
def ls_env(label_studio, monkeypatch):
    for key, value in label_studio.env().items():
        monkeypatch.setenv(key, value)
    return label_studio


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_labeling_round_through_label_studio(tmp_path, candidates, ls_env, capsys):
    from kuberlhf.feedback.labelstudio import TASK_ID, Client

    source, rows = candidates
    project = f"ranking-{uuid.uuid4().hex[:8]}"
    export = ["feedback", "export", "--candidates", str(source), "--project", project, "--labelers-per-task", "2",
              "--instructions", str(REPO / "configs/feedback/ranking-instructions.html")]
    assert run_cli(export) == 0
    assert "12 tasks added, 0 already there" in capsys.readouterr().out
    assert run_cli(export) == 0  # idempotent
    assert "0 tasks added, 12 already there" in capsys.readouterr().out

    admin = Client(ls_env.url, ls_env.token)
    proj = admin.find_project(project)
    assert "Rank the responses" in proj["expert_instruction"] and proj["maximum_annotations"] == 2
    tasks = {t["data"][TASK_ID]: t["id"] for t in admin.tasks(proj["id"])}
    assert len(tasks) == 12
    bob = admin._call("POST", "/api/users/", json={"email": f"bob-{project}@example.com", "username": f"bob-{project}"})
    # the admin ranks tasks 0-9 as the gold judge does and skips task 10; bob ranks tasks 0-3 with the top two
    # swapped (the planted disagreement); task 11 stays unannotated
    for row in rows[:10]:
        admin.annotate(tasks[row["id"]], ranker(gold_order(row)))
    admin.annotate(tasks[rows[10]["id"]], [], cancelled=True)
    for row in rows[:4]:
        order = gold_order(row)
        admin._call("POST", f"/api/tasks/{tasks[row['id']]}/annotations",
                    json={"result": ranker([order[1], order[0], *order[2:]]), "completed_by": bob["id"]})

    assert run_cli(["feedback", "status", "--project", project]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["total"], status["annotated"], status["skipped"]) == (12, 10, 1)
    # finished: ranked by both labelers asked for (tasks 0-3) or skipped (task 10)
    assert status["finished"] == 5 and status["fraction"] == pytest.approx(5 / 12)
    assert sorted(status["per_labeler"].values()) == [4, 11]

    out = tmp_path / "feedback"
    imp = ["feedback", "import", "--candidates", str(source), "--project", project, "--output", str(out)]
    assert run_cli(imp) == 0
    pairs, metrics = read_jsonl(out / "train.jsonl"), json.loads((out / "metrics.json").read_text())
    by_id = {r["id"]: r for r in rows}
    for p in pairs:  # every pair is ordered as the admin ranked it (bob only ever disagrees on the top two)
        order = gold_order(by_id[p["task"]])
        assert order.index(p["chosen_index"]) < order.index(p["rejected_index"])
        assert p["chosen"] == by_id[p["task"]]["candidates"][p["chosen_index"]]
    per_task = {t: sum(p["task"] == t for p in pairs) for t in by_id}
    for i, row in enumerate(rows):
        expected = 5 if i < 4 else 6 if i < 10 else 0  # the split top pair teaches nothing; skipped: nothing
        assert per_task[row["id"]] == expected - _identical(row, expected), (i, per_task[row["id"]])
    assert metrics["tasks_with_several_labelers"] == 4 and metrics["agreement_compared_pairs"] == 24
    assert metrics["agreement_pairwise_agreement"] == pytest.approx(20 / 24)
    assert metrics["agreement_kendall_tau"] == pytest.approx(4 / 6)
    assert (metrics["rankings"], metrics["skipped"], metrics["tasks_ranked"]) == (14, 1, 10)
    ranked = read_jsonl(out / "rankings/rankings.jsonl")
    first = next(r for r in ranked if r["id"] == rows[5]["id"])
    assert first["scores"][gold_order(rows[5])[0]] == 1.0 and first["scores"][gold_order(rows[5])[-1]] == 0.0

    # the reward stage reads it as preference data (a folder's manifest.json and metrics.json are not rows)
    assert len(load_examples_dir(out)) == len(pairs)
    from kuberlhf.data import load_examples

    data, _ = load_examples(str(out / "train.jsonl"), "preference")
    assert len(data) == len(pairs) and set(data.column_names) >= {"prompt", "chosen", "rejected"}

    # re-import: refused without --overwrite, the same dataset with it
    code, err = run_cli(imp, capture=True)
    assert code == 2 and "already holds a finished feedback dataset" in err
    before = (out / "train.jsonl").read_text()
    assert run_cli([*imp, "--overwrite"]) == 0 and (out / "train.jsonl").read_text() == before

    # the same rankings from a Label Studio JSON export file (labelers as ids: their e-mails are not in the file)
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(admin.export(proj["id"])))
    from_file = tmp_path / "from-file"
    assert run_cli(["feedback", "import", "--candidates", str(source), "--from", str(exported),
                    "--output", str(from_file)]) == 0
    assert [(p["chosen"], p["rejected"]) for p in read_jsonl(from_file / "train.jsonl")] == [
        (p["chosen"], p["rejected"]) for p in pairs]

    # every labeler's pairs kept
    separate = tmp_path / "separate"
    assert run_cli([*imp[:-1], str(separate), "--merge", "separate"]) == 0
    assert len(read_jsonl(separate / "train.jsonl")) > len(pairs)

    # held-out pairs: a share of the prompts, none on both sides
    held = tmp_path / "held"
    assert run_cli([*imp[:-1], str(held), "--eval-fraction", "0.3"]) == 0
    train, evals = read_jsonl(held / "train.jsonl"), read_jsonl(held / "eval.jsonl")
    assert len(train) + len(evals) == len(pairs) and {p["task"] for p in evals} == {p["task"] for p in evals}
    assert not {p["task"] for p in train} & {p["task"] for p in evals} and len({p["task"] for p in evals}) == 3

    # an annotation of a task these candidates do not hold: refused, nothing written
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    (fewer / "candidates.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
    code, err = run_cli(["feedback", "import", "--candidates", str(fewer), "--project", project,
                         "--output", str(tmp_path / "never")], capture=True)
    assert code == 2 and rows[0]["id"] in err and not (tmp_path / "never").exists()


def load_examples_dir(path):
    from kuberlhf.data import load_examples

    return load_examples(str(path), "preference")[0]


def _identical(row, expected):
    """Pairs of two candidates with the same text are dropped (no preference to learn)."""
    texts = row["candidates"]
    return sum(texts[a] == texts[b] for a in range(K) for b in range(a + 1, K)) if expected else 0


def test_unreachable_or_unauthorised_label_studio_is_a_clear_error(tmp_path, candidates, ls_env, monkeypatch):
    source, _ = candidates
    args = ["feedback", "export", "--candidates", str(source), "--project", "p"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)
    code, err = run_cli(args, capture=True)
    assert code == 2 and "refused the credentials" in err and "LABEL_STUDIO_API_KEY" in err
    assert "0" * 40 not in err  # the key is never printed
    from localserver import free_port

    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    code, err = run_cli(args, capture=True)
    assert code == 2 and "unreachable" in err
    monkeypatch.delenv("LABEL_STUDIO_API_KEY")
    code, err = run_cli(args, capture=True)
    assert code == 2 and "LABEL_STUDIO_API_KEY is not set" in err


def test_offline_rankings_jsonl_both_ways_with_ties_and_skips(tmp_path, candidates):
    source, rows = candidates
    blank = tmp_path / "to-rank.jsonl"
    assert run_cli(["feedback", "export", "--candidates", str(source), "--format", "jsonl",
                    "--output", str(blank)]) == 0
    filled = []
    for i, row in enumerate(read_jsonl(blank)[:3]):
        row["labeler"] = "carol"
        if i == 0:
            row["ranking"] = [2, [0, 3], 1]  # a tie
        elif i == 1:
            row["skipped"] = True
        else:
            row["ranking"], row["unusable"] = [1, 0], [2, 3]
        filled.append(row)
    ranked = tmp_path / "ranked.jsonl"
    ranked.write_text("".join(json.dumps(r) + "\n" for r in filled))
    for ties, expected_first in (("skip", 5), ("drop", 0)):
        out = tmp_path / f"out-{ties}"
        assert run_cli(["feedback", "import", "--from", str(ranked), "--output", str(out), "--ties", ties]) == 0
        pairs = read_jsonl(out / "train.jsonl")
        assert sum(p["task"] == rows[0]["id"] for p in pairs) == expected_first - _identical(rows[0], 0)
        assert not any(p["task"] == rows[1]["id"] for p in pairs)  # skipped
        assert sum(p["task"] == rows[2]["id"] for p in pairs) == 5  # 1 > 0 > {2, 3}
    tasks = tmp_path / "tasks.json"
    assert run_cli(["feedback", "export", "--candidates", str(source), "--format", "labelstudio",
                    "--output", str(tasks), "--unusable-bucket"]) == 0
    assert len(json.loads(tasks.read_text())) == 12
    assert '<Bucket name="unusable"' in (tmp_path / "tasks.json.label_config.xml").read_text()


@pytest.mark.parametrize(("row", "message"), [
    ({"ranking": [0, 7]}, "unknown candidate 7"),
    ({"ranking": [0, 1, 1]}, "candidate 1 is ranked twice"),
    ({"ranking": "0>1"}, "field 'ranking' must be a list"),
    ({"candidates": ["only one"], "ranking": [0]}, "at least 2"),
    ({"ranking": [0, 1], "unusable": 2}, "field 'unusable' must be a list"),
    ({"candidates": 3, "ranking": [0, 1]}, "field 'candidates' must be a list"),
])
def test_bad_rankings_in_a_file_stop_the_import_naming_the_task(tmp_path, row, message):
    base = {"id": "task-7", "prompt": "Q", "candidates": ["a", "b", "c"], "labeler": "dan"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({**base, **row}) + "\n")
    code, err = run_cli(["feedback", "import", "--from", str(path), "--output", str(tmp_path / "o")], capture=True)
    assert code == 2 and message in err, err
    assert not (tmp_path / "o").exists()


def test_a_missing_or_non_object_rankings_file_is_a_clear_error(tmp_path):
    args = ["feedback", "import", "--from", str(tmp_path / "nowhere.jsonl"), "--output", str(tmp_path / "o")]
    code, err = run_cli(args, capture=True)
    assert code == 2 and "nowhere.jsonl" in err and "No such file" in err, err
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    code, err = run_cli([*args[:3], str(tmp_path / "list.jsonl"), *args[4:]], capture=True)
    assert code == 2 and "row 1: expected a JSON object, got list" in err, err
    (tmp_path / "object.json").write_text('{"tasks": []}')
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "t", "prompt": "Q", "candidates": ["a", "b"]}) + "\n")
    code, err = run_cli(["feedback", "import", "--from", str(tmp_path / "object.json"), "--candidates",
                         str(tmp_path / "c.jsonl"), "--output", str(tmp_path / "o")], capture=True)
    assert code == 2 and "is not a Label Studio JSON export" in err, err


def test_the_reward_stage_batches_all_pairs_of_a_prompt_together(tmp_path, monkeypatch):
    """data.group_by_prompt=true: every training batch holds whole prompts (all their pairs), 2 prompts a batch."""
    from helpers import reward_args

    from kuberlhf.stages import reward

    demo, rows = Demonstrator(5), []
    for _ in range(24):
        question, topic = demo.question()
        prompt = format_prompt(question)
        texts = sorted({" " + demo.response(topic) for _ in range(K)}, key=lambda t: -gold_score(prompt, t))
        rows += [{"prompt": prompt, "chosen": a, "rejected": b} for i, a in enumerate(texts) for b in texts[i + 1:]]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    batches: list[list[int]] = []
    real_iter = reward.PromptBatchSampler.__iter__

    def recording(self):
        for batch in real_iter(self):
            batches.append(list(batch))
            yield batch

    monkeypatch.setattr(reward.PromptBatchSampler, "__iter__", recording)
    seen = {}
    real_init = reward.PromptBatchSampler.__init__

    def keep(self, prompts, *args):
        seen["prompts"] = prompts
        real_init(self, prompts, *args)

    monkeypatch.setattr(reward.PromptBatchSampler, "__init__", keep)
    out = tmp_path / "rm"
    assert run_cli(reward_args(out, f"data.train={data}", "data.group_by_prompt=true",
                               "training.per_device_train_batch_size=2", "training.max_steps=3")) == 0
    prompts = seen["prompts"]
    assert len(batches) >= 3
    for batch in batches[:3]:
        in_batch = {prompts[i] for i in batch}
        assert len(in_batch) == 2  # two prompts ...
        assert sorted(batch) == sorted(i for i, p in enumerate(prompts) if p in in_batch)  # ... with all their pairs


class _Metrics:
    def __init__(self):
        self.logged = {}

    def log_metric(self, key, value):
        self.logged[key] = value


def test_the_pipeline_steps_of_a_labeling_round_wait_for_the_labelers(tmp_path, candidates, ls_env):
    """rlhf-human's export -> wait -> import steps: the wait step polls while a labeler ranks in another thread,
    times out with the progress when the labelers fall short, and the import step's Dataset is a data step's."""
    import threading
    from types import SimpleNamespace

    from kuberlhf.errors import KuberlhfError
    from kuberlhf.feedback.labelstudio import TASK_ID, Client
    from kuberlhf.workflow import steps
    from kuberlhf.workflow.data import dataset_has_eval

    source, rows = candidates
    exported = SimpleNamespace(path=str(tmp_path / "exported"), metadata={})
    run_id = uuid.uuid4().hex
    steps.feedback_export_step(str(source), exported, "", "configs/feedback/ranking-instructions.html", False, 1,
                               run_id)
    assert exported.metadata["project"] == f"kuberlhf-{run_id[:8]}" and exported.metadata["added"] == 12
    admin = Client(ls_env.url, ls_env.token)
    project = admin.find_project(exported.metadata["project"])
    with pytest.raises(KuberlhfError, match=r"0/12 tasks finished after 1 s, short of the 50%"):
        steps.feedback_wait_step(exported, _Metrics(), 0.5, 1.0, 0.5)

    def labeler():
        by_id = {r["id"]: r for r in rows}
        for task in admin.tasks(project["id"])[:9]:
            admin.annotate(task["id"], ranker(gold_order(by_id[task["data"][TASK_ID]])))
            time.sleep(0.2)

    thread = threading.Thread(target=labeler)
    thread.start()
    progress = _Metrics()
    steps.feedback_wait_step(exported, progress, 0.75, 120.0, 0.5)
    thread.join()
    assert progress.logged["annotated"] >= 9 and progress.logged["total"] == 12
    from kuberlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="feedback fraction: must be in"):
        steps.feedback_wait_step(exported, _Metrics(), 50, 1.0, 0.5)

    pairs = SimpleNamespace(path=str(tmp_path / "pairs"), metadata={})
    metrics = _Metrics()
    result = steps.feedback_import_step(str(source), exported, pairs, metrics, "skip", "last", "majority", 0.25, 0)
    assert result["tasks_ranked"] == 9 and metrics.logged["pairs"] == result["pairs"]
    assert pairs.metadata["eval_rows"] > 0 and dataset_has_eval(pairs, "local")
    assert len(read_jsonl(tmp_path / "pairs/train.jsonl")) == pairs.metadata["train_rows"]
