"""Non-streaming loads on Arrow (kuberlhf.data.tables) give what the row-by-row reader gives.

Streaming loads read one row at a time with the line and file readers of kuberlhf.data.sources (the loader
every non-streaming load used before); each test here loads the same file both ways and compares the
examples, the counts and the messages, row for row.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import kuberlhf.data as data
from kuberlhf.config import from_dict
from kuberlhf.config.sections import DataConfig
from kuberlhf.data import load_data, load_examples
from kuberlhf.errors import ConfigError, DataError

ORCA = [{"id": f"o{i}", "system_prompt": "You help." if i % 3 else "", "question": f"What is {i} + {i}?",
         "response": f" {2 * i} "} for i in range(40)]
MSGS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("KUBERLHF_CACHE", str(root))
    return root / "datasets"


def lines(*items) -> bytes:
    """JSON Lines: dicts are dumped, strings and bytes kept as they are (one line each)."""
    out = b""
    for item in items:
        if isinstance(item, dict | list):
            out += json.dumps(item).encode() + b"\n"
        elif isinstance(item, str):
            out += item.encode() + b"\n"
        else:
            out += item
    return out


def outcome(path, kind, streaming, **kwargs):
    """("ok", examples, stats) or ("error", message) of one load."""
    try:
        ds, stats = load_examples(str(path), kind, streaming=streaming, **kwargs)
        rows = list(ds) if streaming else ds.to_list()
    except DataError as err:
        return ("error", str(err))
    return ("ok", rows, stats.to_dict())


def same_both_ways(path, kind, **kwargs):
    """Both loads' outcomes, in skip and in error mode, and that they agree; returns the arrow skip outcome."""
    for on_bad_row in ("skip", "error"):
        arrow = outcome(path, kind, False, on_bad_row=on_bad_row, **kwargs)
        rows = outcome(path, kind, True, on_bad_row=on_bad_row, **kwargs)
        assert arrow == rows, (on_bad_row, arrow, rows)
        if on_bad_row == "skip":
            first = arrow
    return first


def checked_on_arrow(cache: Path) -> bool:
    """Whether a load checked rows in the batched map (its output lies in the cache's checked/)."""
    return any((cache / "checked").glob("*.arrow"))


# ------------------------------------------------------------------ the same rows, counts and messages


JSONL_CASES = {
    "clean": lines(*ORCA),
    "blank and whitespace lines": lines(ORCA[0], "", "   ", ORCA[1], "\t", ORCA[2], "\x0b\x0c", "\u00a0", "\x1c",
                                        "\u2028", ORCA[3]) + b"\n\n",
    "bom and crlf": b"\xef\xbb\xbf" + lines(*ORCA[:3]).replace(b"\n", b"\r\n"),
    "bom on a later line": lines(ORCA[0]) + b"\xef\xbb\xbf" + lines(ORCA[1]),
    "malformed lines": lines(ORCA[0], '{"question": "q" "response": "r"}', "{oops", ORCA[1], "[1, 2]", "7", ORCA[2]),
    "two objects on a line": lines(ORCA[0], json.dumps(ORCA[1]) + " " + json.dumps(ORCA[2]), ORCA[3]),
    "object across lines": lines(ORCA[0], '{"question": "q",', ' "response": "r"}', ORCA[1]),
    "missing and null fields": lines(ORCA[0], {"question": "q"}, {"question": "q", "response": None},
                                     {"response": "r"}, {"question": None, "prompt": "p", "completion": " c"},
                                     {"system_prompt": None, "question": "q", "response": "r"}, {}),
    "key order in messages": lines({"b": 1, "a": "x"}, {"a": "y", "b": 2}, ORCA[0], {"z": [1], "a": {"k": 1}}),
    "types json infers": lines({"question": "2020-01-01", "response": "2021-02-03 10:00:00"},
                               {"question": "q", "response": 7}, {"question": "q", "response": 1.5},
                               {"question": "q", "response": True}, {"question": "q", "response": ["r"]},
                               {"question": "q" * 3, "response": 12345678901234567890123}),
    "mixed shapes": lines({"messages": MSGS}, ORCA[0], {"messages": MSGS + MSGS}, {"prompt": MSGS[:1],
                                                                                  "completion": MSGS[1:]}),
    "chat rows": lines({"messages": MSGS}, {"messages": [{"role": "user"}, MSGS[1]]},
                       {"messages": [{"role": "system", "content": ""}, *MSGS]}, {"messages": [MSGS[0]]}),
    "escapes and unicode": lines({"question": "caf\u00e9 \u2028 \ud83d\ude00 \\n \"x\"", "response": "\u0000ok"},
                                 '{"question": "tab\there", "response": "r"}'),
    "not utf-8": lines(ORCA[0]) + b'{"question": "caf\xe9", "response": "r"}\n' + lines(ORCA[1]),
    "lone carriage return": lines(ORCA[0]) + json.dumps(ORCA[1]).encode() + b"\r" + lines(ORCA[2]),
    "no trailing newline": lines(*ORCA[:3]).rstrip(b"\n"),
    "only blank lines": b"\n  \n\n",
    "empty": b"",
    "all bad": lines({"question": "q"}, "{", {"response": ""}),
}


@pytest.mark.parametrize("case", list(JSONL_CASES))
def test_jsonl_same_both_ways(tmp_path, case):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(JSONL_CASES[case])
    same_both_ways(path, "sft")
    same_both_ways(path, "prompt")


def test_jsonl_rows_are_checked_on_arrow_also_with_malformed_lines(tmp_path, cache):
    path = tmp_path / "train.jsonl"
    path.write_bytes(JSONL_CASES["malformed lines"])
    status, rows, stats = same_both_ways(path, "sft")
    assert checked_on_arrow(cache), "a malformed line must not send the file to the row-by-row reader"
    assert len(rows) == 3 and stats["rows_read"] == 7 and stats["rows_skipped"] == 4
    assert stats["skipped_examples"] == [
        f"{path} line 2: invalid JSON (Expecting ',' delimiter)",
        f"{path} line 3: invalid JSON (Expecting property name enclosed in double quotes)",
        f"{path} row 4: row must be a JSON object, got list",
        f"{path} row 5: row must be a JSON object, got int",
    ]
    ds, _ = load_examples(str(path), "sft", on_bad_row="skip")
    assert all(f["filename"].startswith(str(cache)) for f in ds.cache_files)  # memory-mapped from the cache


def test_missing_and_null_fields_keep_their_messages(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(lines(ORCA[0], {"question": "q"}, {"question": "q", "response": None},
                           {"question": None, "prompt": "p", "completion": " c"}))
    _, rows, stats = same_both_ways(path, "sft")
    assert stats["skipped_examples"] == [
        f"{path} row 1: missing field 'response'",
        f"{path} row 2: field 'response' must be a string, got None",
        f"{path} row 3: field 'question' must be a string, got None",
    ]
    assert rows == [{"prompt": "Question: What is 0 + 0?\n\nAnswer:", "completion": " 0"}]


@pytest.mark.parametrize("form", ["array", "data", "rows", "single", "lines", "lines, bad one", "not utf-8",
                                  "broken", "one line array"])
def test_json_file_same_both_ways(tmp_path, form):
    path = tmp_path / "rows.json"
    bodies = {
        "array": json.dumps(ORCA, indent=1).encode(),
        "data": json.dumps({"version": 1, "data": ORCA}).encode(),
        "rows": json.dumps({"rows": ORCA[:3]}, indent=2).encode(),
        "single": json.dumps(ORCA[0], indent=2).encode() + b"\n\n",
        "lines": lines(*ORCA),
        "lines, bad one": lines(ORCA[0], "{bad", "", ORCA[1], [3]),
        "not utf-8": lines(ORCA[0]) + b'{"question": "\xff"}\n',
        "broken": b'[{"question": "q", ',
        "one line array": json.dumps(ORCA[:4]).encode() + b"\n",
    }
    path.write_bytes(bodies[form])
    same_both_ways(path, "sft")


def test_parquet_and_directories_same_both_ways(tmp_path, cache):
    rows = ORCA + [{"id": "x", "system_prompt": None, "question": "q", "response": None},
                   {"id": "y", "system_prompt": "s", "question": "", "response": "r"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet", row_group_size=7)
    (tmp_path / "b.jsonl").write_bytes(JSONL_CASES["malformed lines"])
    (tmp_path / "c.json").write_text(json.dumps(ORCA[:5]))
    _, kept, stats = same_both_ways(tmp_path / "a.parquet", "sft")
    assert len(kept) == 40 and stats["rows_skipped"] == 2
    _, kept, stats = same_both_ways(tmp_path, "sft")
    assert (len(kept), stats["rows_read"], stats["rows_skipped"]) == (48, 54, 6)
    assert checked_on_arrow(cache)
    for max_rows in (1, 3, 41, 43, 45, 49, 1000):
        same_both_ways(tmp_path, "sft", max_rows=max_rows)


def test_preference_and_candidates_same_both_ways(tmp_path):
    pairs = [{"prompt": f"p{i}", "chosen": " yes", "rejected": " no" if i % 4 else " yes"} for i in range(20)]
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: What."}
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(lines(*pairs, hh, {"chosen": "no turn", "rejected": "x"}, "{"))
    _, kept, stats = same_both_ways(path, "preference")
    assert len(kept) == 16 and stats["rows_skipped"] == 7
    cands = [{"id": 1, "prompt": "p", "candidates": ["a", "b"]}, {"prompt": "q", "candidates": ["a"]},
             {"id": None, "prompt": "r", "candidates": ["a", "b", "c"]}, {"id": 2.5, "prompt": "s", "candidates": ["x", "y"]}]
    path = tmp_path / "cands.jsonl"
    path.write_bytes(lines(*cands))
    _, kept, _ = same_both_ways(path, "candidates")
    assert [row["id"] for row in kept] == ["1", "None", "2.5"]


def test_hugging_face_disk_dataset_same_both_ways(tmp_path):
    datasets.Dataset.from_list(ORCA + [{"id": "x", "system_prompt": "", "question": "q", "response": ""}]).save_to_disk(
        str(tmp_path / "ds"))
    _, kept, stats = same_both_ways(tmp_path / "ds", "sft")
    assert len(kept) == 40 and stats["rows_skipped"] == 1


# ------------------------------------------------------------------ cache and processes


def test_second_load_reuses_the_cache(tmp_path, cache, monkeypatch):
    path = tmp_path / "train.jsonl"
    path.write_bytes(lines(*ORCA, "{bad"))
    first, stats = load_examples(str(path), "sft", on_bad_row="skip")
    files = sorted(p.name for p in cache.rglob("*.arrow"))
    calls = []

    def counting(row, **kwargs):
        calls.append(row)
        return data.formats.sft_example(row, **kwargs)

    monkeypatch.setitem(data.CONVERTERS, "sft", counting)
    again, stats_again = load_examples(str(path), "sft", on_bad_row="skip")
    assert again.to_list() == first.to_list() and stats_again.to_dict() == stats.to_dict()
    assert again.cache_files == first.cache_files
    assert sorted(p.name for p in cache.rglob("*.arrow")) == files
    assert len(calls) == 1, "only the bad row is looked at again, to word its message"
    path.write_bytes(lines(*ORCA[:5]))  # a changed file is read again
    changed, _ = load_examples(str(path), "sft")
    assert changed.num_rows == 5 and len(calls) > 1


def test_other_templates_are_not_served_from_the_cache(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(lines(*ORCA[:3]))
    plain, _ = load_examples(str(path), "sft")
    other, _ = load_examples(str(path), "sft", template_kwargs={"prompt_template": "Q: {question}\nA:"})
    assert plain[1]["prompt"] == "You help.\n\nQuestion: What is 1 + 1?\n\nAnswer:"
    assert other[1]["prompt"] == "Q: What is 1 + 1?\nA:"


def test_two_processes_give_the_same_rows(tmp_path):
    path = tmp_path / "train.jsonl"
    big = [dict(ORCA[i % 40], id=str(i)) for i in range(2500)]
    path.write_bytes(lines(*big[:1200], "{bad", "", *big[1200:], {"question": "q"}))
    one, stats_one = load_examples(str(path), "sft", on_bad_row="skip")
    two, stats_two = load_examples(str(path), "sft", on_bad_row="skip", num_proc=2)
    assert two.to_list() == one.to_list() and stats_two.to_dict() == stats_one.to_dict()
    assert stats_one.rows_skipped == 2 and one.num_rows == 2500
    assert len(two.cache_files) == 2  # one Arrow file per process
    with pytest.raises(DataError, match=rf"^{path} line 1201: invalid JSON"):
        load_examples(str(path), "sft", num_proc=2)


# ------------------------------------------------------------------ config


def test_data_config_keys(monkeypatch, tmp_path):
    cfg = from_dict(DataConfig, {"train": "org/name", "name": "main", "data_dir": "en", "split": "validation",
                                 "num_proc": 2}, prefix="data.")
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.Dataset.from_list(ORCA)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    train, held_out, stats = load_data(cfg, "sft", seed=0)
    assert calls == [("org/name", {"split": "validation", "streaming": False, "name": "main", "data_dir": "en"})]
    assert train.num_rows == 40 and held_out is None and stats.rows_read == 40
    with pytest.raises(ConfigError, match="data.num_proc"):
        from_dict(DataConfig, {"train": "x.jsonl", "num_proc": 0}, prefix="data.")
    with pytest.raises(ConfigError, match="unknown config key 'data.subset'"):
        from_dict(DataConfig, {"train": "x.jsonl", "subset": "main"}, prefix="data.")
    with pytest.raises(ConfigError, match="num_proc"):
        load_examples(str(tmp_path / "x.jsonl"), "sft", num_proc=0)


@pytest.mark.parametrize(("case", "paths"), [
    ("clean", []),
    ("missing and null fields", []),  # nulls are read from their lines, the rest stays the json builder's
    ("bom and crlf", []),
    ("malformed lines", ["as lines of text"]),
    ("two objects on a line", ["as lines of text"]),
    ("types json infers", ["as lines of text"]),
    ("not utf-8", ["as lines of text", "row by row"]),
    ("lone carriage return", ["as lines of text", "row by row"]),
])
def test_which_reader_a_jsonl_file_takes(tmp_path, caplog, case, paths):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(JSONL_CASES[case])
    with caplog.at_level("INFO", logger="kuberlhf.data.tables"):
        load_examples(str(path), "sft", on_bad_row="skip")
    taken = [m for m in ("as lines of text", "row by row") if any(m in r.getMessage() for r in caplog.records)]
    assert taken == paths


@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_line_scans_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    """The byte scans that let the json builder's rows stand read their file in chunks; tiny chunks put every
    line feed, carriage return and brace on a boundary."""
    import kuberlhf.data.files as files

    monkeypatch.setattr(files, "_CHUNK", chunk)
    for case in ("clean", "blank and whitespace lines", "bom and crlf", "lone carriage return", "missing and null fields",
                 "no trailing newline"):
        path = tmp_path / f"{case}.jsonl"
        path.write_bytes(JSONL_CASES[case] if case != "clean" else lines(*ORCA[:6]))
        same_both_ways(path, "sft")


EDGES = [{"system_prompt": s, "question": q, "response": r}
         for s in (None, "", "  ", " Be brief. ", "\u3000", 7)
         for q in ("q", " q ", "", "   ", "\u3000", "\xa0x\xa0", "\u2028", None, 3)
         for r in ("r", "\n r \n", "", " ", "\u0085", None, ["r"])]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_openorca_rows_decided_a_column_at_a_time_are_the_row_checks_examples(tmp_path, suffix):
    """Blank, whitespace-only (Unicode spaces too), null, absent and non-string fields: the batched map's
    column-at-a-time path gives the row reader's examples, counts and messages, with custom templates."""
    rows = [row for row in EDGES if not any(isinstance(v, int | list) for v in row.values())]  # the builders' types
    rows += [{k: v for k, v in ORCA[1].items() if k != "system_prompt"}, ORCA[2]]
    path = tmp_path / f"edges{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(lines(*rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
    templates = {"prompt_template": "<{system}|{question}>", "system_template": "[{system_prompt}]"}
    first = same_both_ways(path, "sft", template_kwargs=templates)
    assert first[0] == "ok" and 10 < len(first[1]) < len(rows) and first[2]["rows_skipped"] > 10
    assert {"prompt": "<[Be brief.]|q>", "completion": " r"} in first[1]


def test_openorca_column_path_declines_what_it_cannot_decide():
    from functools import partial

    from kuberlhf.data.batches import openorca_fast
    from kuberlhf.data.formats import preference_example, sft_example

    columns = {"question": ["q", "", None], "response": ["r", "r", "r"]}
    prompts, completions = openorca_fast(columns.get, 3, partial(sft_example), None)
    assert prompts == ["Question: q\n\nAnswer:", None, None] and completions == [" r", None, None]
    assert openorca_fast({**columns, "messages": [None] * 3}.get, 3, partial(sft_example), None) is None
    assert openorca_fast(columns.get, 3, preference_example, None) is None
    assert openorca_fast(columns.get, 3, partial(sft_example), (("prompt", "messages"),)) is None
