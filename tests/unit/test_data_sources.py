"""Reading every local source and loading examples: kuberlhf.data (sources + load_examples)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kuberlhf.data import DataStats, iter_rows, load_examples
from kuberlhf.errors import ConfigError, DataError

ORCA = [
    {"system_prompt": "", "question": f"What is {i} + {i}?", "response": f"{2 * i}", "id": i}
    for i in range(5)
]


def write_jsonl(path: Path, rows: list, *, raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    for index, text in (raw_lines or {}).items():
        lines.insert(index, text)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict], row_group_size: int | None = None) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


# ------------------------------------------------------------------ files


def test_jsonl_rows_in_order_blank_lines_ignored(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ORCA, raw_lines={2: "", 4: "   "})
    assert list(iter_rows(str(path))) == ORCA


@pytest.mark.parametrize("wrapper", ["array", "data", "rows", "lines"])
def test_json_file_forms(tmp_path, wrapper):
    path = tmp_path / "train.json"
    if wrapper == "array":
        path.write_text(json.dumps(ORCA))
    elif wrapper == "lines":  # JSON Lines in a .json file, as many hub datasets ship them
        write_jsonl(path, ORCA)
    else:
        path.write_text(json.dumps({"version": 2, wrapper: ORCA}))
    assert list(iter_rows(str(path))) == ORCA


def test_json_file_bad_shape(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("42")
    with pytest.raises(DataError, match=r"x\.json: a \.json file must hold an array"):
        list(iter_rows(str(path)))
    path.write_text('[{"a": 1}, ')
    with pytest.raises(DataError, match=r"x\.json line 1: invalid JSON"):
        list(iter_rows(str(path)))


def test_parquet_streams_across_batches(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f" c{i}", "n": i} for i in range(2500)]
    path = write_parquet(tmp_path / "big.parquet", rows, row_group_size=700)
    assert list(iter_rows(str(path))) == rows


def test_directory_of_files_sorted_and_others_ignored(tmp_path):
    write_jsonl(tmp_path / "b.jsonl", [{"k": "b0"}, {"k": "b1"}])
    write_parquet(tmp_path / "a.parquet", [{"k": "a0"}])
    (tmp_path / "c.json").write_text(json.dumps([{"k": "c0"}]))
    (tmp_path / "README.md").write_text("# not data")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".hidden.jsonl").write_text("{not json")
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "z.jsonl", [{"k": "nested"}])
    assert [r["k"] for r in iter_rows(str(tmp_path))] == ["a0", "b0", "b1", "c0"]
    assert [r["k"] for r in iter_rows(str(tmp_path), format="jsonl")] == ["b0", "b1"]


def test_directory_without_data_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"directory holds no \.jsonl/\.json/\.parquet files"):
        list(iter_rows(str(tmp_path)))


def test_explicit_format_overrides_extension(tmp_path):
    path = write_jsonl(tmp_path / "rows.txt", ORCA[:2])
    assert list(iter_rows(str(path), format="jsonl")) == ORCA[:2]


def test_unknown_extension_names_path_and_formats(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError) as info:
        list(iter_rows(str(path)))
    message = str(info.value)
    assert str(path) in message and "'.csv'" in message
    assert "jsonl" in message and "parquet" in message and "deeplake" in message


def test_unknown_format_value(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ORCA)
    with pytest.raises(
        DataError, match=r"unknown format 'csv'; supported formats: auto, jsonl, json, parquet"
    ):
        list(iter_rows(str(path), format="csv"))


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(DataError, match=rf"^{missing}: no such file or directory$"):
        load_examples(str(missing), "sft")


def test_unsupported_scheme():
    with pytest.raises(DataError, match=r"gs://bucket/x\.jsonl: unsupported URL scheme"):
        list(iter_rows("gs://bucket/x.jsonl"))


# ------------------------------------------------------------------ Hugging Face


def test_hf_save_to_disk_dataset(tmp_path):
    datasets.Dataset.from_list(ORCA).save_to_disk(str(tmp_path / "ds"))
    assert list(iter_rows(str(tmp_path / "ds"))) == ORCA
    ds, stats = load_examples(str(tmp_path / "ds"), "sft")
    assert ds.num_rows == 5 and stats.rows_read == 5
    assert ds[3] == {"prompt": "Question: What is 3 + 3?\n\nAnswer:", "completion": " 6"}


def test_hf_save_to_disk_dataset_dict_split(tmp_path):
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ORCA), "test": datasets.Dataset.from_list(ORCA[:2])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert list(iter_rows(str(tmp_path / "dd"), split="test")) == ORCA[:2]
    assert list(iter_rows(str(tmp_path / "dd"))) == ORCA
    with pytest.raises(DataError, match=r"no split 'validation'; available splits: test, train"):
        list(iter_rows(str(tmp_path / "dd"), split="validation"))


def test_hf_hub_failure_becomes_data_error(monkeypatch):
    calls = []

    def fake_load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError) as info:
        load_examples("Anthropic/hh-rlhf", "preference", split="test", streaming=True)
    message = str(info.value)
    assert "cannot load Hugging Face dataset 'Anthropic/hh-rlhf' (split 'test')" in message
    assert "ConnectionError" in message and "\n" not in message
    assert calls == [("Anthropic/hh-rlhf", {"split": "test", "streaming": True})]
    with pytest.raises(DataError, match=r"^hf://org/name: cannot load Hugging Face dataset 'org/name'"):
        list(iter_rows("hf://org/name"))


def test_hf_hub_rows(monkeypatch):
    def fake_load_dataset(name, split, streaming):
        assert (name, split, streaming) == ("Open-Orca/OpenOrca", "train", False)
        return datasets.Dataset.from_list(ORCA)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(iter_rows("hf://datasets/Open-Orca/OpenOrca")) == ORCA
    assert list(iter_rows("Open-Orca/OpenOrca", format="hf")) == ORCA


# ------------------------------------------------------------------ Deep Lake 4


def make_deeplake(path: Path, n: int) -> None:
    import deeplake

    ds = deeplake.create(str(path))
    ds.add_column("question", deeplake.types.Text())
    ds.add_column("response", deeplake.types.Text())
    ds.add_column("score", deeplake.types.Int64())
    ds.add_column("meta", deeplake.types.Dict())
    ds.append(
        {
            "question": [f"q{i}" for i in range(n)],
            "response": [f"r{i}" for i in range(n)],
            "score": list(range(n)),
            "meta": [{"source": "unit", "tags": ["a", "b"]} for _ in range(n)],
        }
    )
    ds.commit()


def test_deeplake_local_dataset(tmp_path):
    make_deeplake(tmp_path / "dl", 1100)
    assert (tmp_path / "dl" / "_deeplake_log").is_dir()  # what auto-detection looks for
    rows = list(iter_rows(str(tmp_path / "dl")))
    assert len(rows) == 1100
    assert rows[1099] == {
        "question": "q1099",
        "response": "r1099",
        "score": 1099,
        "meta": {"source": "unit", "tags": ["a", "b"]},
    }
    assert type(rows[0]["score"]) is int and type(rows[0]["question"]) is str
    assert list(iter_rows(f"file://{tmp_path / 'dl'}"))[:2] == rows[:2]
    assert list(iter_rows(str(tmp_path / "dl"), format="deeplake"))[-1] == rows[-1]
    ds, stats = load_examples(str(tmp_path / "dl"), "sft", max_rows=3)
    assert ds["completion"] == [" r0", " r1", " r2"] and stats.rows_read == 3


def test_deeplake_not_a_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"cannot open Deep Lake dataset"):
        list(iter_rows(str(tmp_path / "empty"), format="deeplake"))


# ------------------------------------------------------------------ load_examples


def test_not_streaming_returns_dataset_and_stats(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ORCA)
    ds, stats = load_examples(str(path), "sft")
    assert isinstance(ds, datasets.Dataset)
    assert ds.column_names == ["prompt", "completion"]
    assert ds[2] == {"prompt": "Question: What is 2 + 2?\n\nAnswer:", "completion": " 4"}
    assert stats.to_dict() == {"rows_read": 5, "rows_kept": 5, "rows_skipped": 0, "skipped_examples": []}


def test_streaming_matches_and_fills_stats_as_it_goes(tmp_path):
    rows = ORCA + [{"question": "bad", "response": ""}]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    eager, _ = load_examples(str(path), "sft", on_bad_row="skip")
    ds, stats = load_examples(str(path), "sft", streaming=True, on_bad_row="skip")
    assert isinstance(ds, datasets.IterableDataset)
    assert ds.column_names == ["prompt", "completion"]
    assert stats.rows_read == 0  # nothing counted until iterated
    assert list(ds) == eager.to_list()
    assert (stats.rows_read, stats.rows_skipped) == (6, 1)
    assert list(ds) == eager.to_list()  # a second pass counts afresh
    assert (stats.rows_read, stats.rows_skipped) == (6, 1)


def test_streaming_bad_row_raises_while_iterating(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ORCA + [{"question": "q", "response": 7}])
    ds, _ = load_examples(str(path), "sft", streaming=True)  # first rows are fine
    with pytest.raises(DataError, match=r"t\.jsonl row 5: field 'response' must be a string, got int"):
        list(ds)


def test_streaming_fails_fast_on_bad_source(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_examples(str(tmp_path / "missing.jsonl"), "sft", streaming=True)


def test_bad_json_line_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ORCA, raw_lines={3: '{"question": "q" "response": "r"}'})
    with pytest.raises(DataError) as info:
        load_examples(str(path), "sft")
    assert str(info.value) == f"{path} line 4: invalid JSON (Expecting ',' delimiter)"
    with pytest.raises(DataError, match=r"line 4: invalid JSON"):
        list(iter_rows(str(path)))
    path.write_text('{"question": "q", "response": "r"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"t\.jsonl row 1: row must be a JSON object, got list"):
        load_examples(str(path), "sft")


def test_bad_row_error_names_source_row_and_field(tmp_path):
    rows = list(ORCA)
    rows[3] = {"question": "Why?", "response": "   "}
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_examples(str(path), "sft")
    assert str(info.value) == f"{path} row 3: field 'response' is empty"


def test_bad_row_in_directory_names_the_file(tmp_path):
    pair = {"prompt": "p", "chosen": " yes", "rejected": " no"}
    write_jsonl(tmp_path / "a.jsonl", [pair] * 3)
    write_jsonl(tmp_path / "b.jsonl", [pair, {"prompt": "p", "chosen": "x"}, {"prompt": "p"}])
    with pytest.raises(DataError, match=rf"^{tmp_path / 'b.jsonl'} row 1: missing field 'rejected'$"):
        load_examples(str(tmp_path), "preference")


def test_skip_mode_counts_rows(tmp_path):
    good = [{"prompt": f"p{i}", "chosen": " yes", "rejected": " no"} for i in range(3)]
    bad = [{"prompt": f"p{i}", "chosen": " same", "rejected": " same"} for i in range(12)]
    path = write_jsonl(tmp_path / "pairs.jsonl", good + bad, raw_lines={1: "{oops"})
    ds, stats = load_examples(str(path), "preference", on_bad_row="skip")
    assert ds.num_rows == 3
    assert (stats.rows_read, stats.rows_skipped, stats.rows_kept) == (16, 13, 3)
    assert len(stats.skipped_examples) == 10
    assert (
        stats.skipped_examples[0]
        == f"{path} line 2: invalid JSON (Expecting property name enclosed in double quotes)"
    )
    # the unparseable line 2 is row 1, so the first identical pair (line 5) is row 4
    assert stats.skipped_examples[1] == f"{path} row 4: fields 'chosen' and 'rejected' are identical"
    assert json.loads(json.dumps(stats.to_dict()))["rows_skipped"] == 13


def test_zero_valid_rows_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "q"}, {"question": "q2"}])
    with pytest.raises(
        DataError, match=r"no valid rows \(read 2, skipped 2\); first problem: .* row 0: missing field"
    ):
        load_examples(str(path), "sft", on_bad_row="skip")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no valid rows \(read 0, skipped 0\)$"):
        load_examples(str(empty), "sft")


def test_max_rows_caps_rows_read(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ORCA, raw_lines={3: "{broken"})
    ds, stats = load_examples(str(path), "sft", max_rows=3)  # the broken 4th line is never read
    assert ds.num_rows == 3 and stats.rows_read == 3
    ds, stats = load_examples(str(path), "sft", max_rows=5, on_bad_row="skip")
    assert ds.num_rows == 4 and (stats.rows_read, stats.rows_skipped) == (5, 1)
    ds, _ = load_examples(str(path), "sft", max_rows=2, streaming=True)
    assert len(list(ds)) == 2


def test_kinds_from_the_same_file(tmp_path):
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello, how can I help?"
    rejected = "\n\nHuman: Hi\n\nAssistant: What."
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": rejected}])
    ds, _ = load_examples(str(path), "preference")
    assert ds[0] == {
        "prompt": "\n\nHuman: Hi\n\nAssistant:",
        "chosen": " Hello, how can I help?",
        "rejected": " What.",
    }
    ds, _ = load_examples(str(path), "prompt")
    assert ds[0] == {"prompt": "\n\nHuman: Hi\n\nAssistant:"}


def test_chat_dataset_features(tmp_path):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": msgs}] * 2)
    ds, _ = load_examples(str(path), "sft")
    assert ds[0] == {"prompt": msgs[:1], "completion": msgs[1:]}
    assert ds.features["prompt"] == datasets.List(
        {"role": datasets.Value("string"), "content": datasets.Value("string")}
    )


def test_mixed_shapes_are_bad_rows(tmp_path):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"messages": msgs}, {"question": "q", "response": "r"}])
    with pytest.raises(DataError, match=r"mixed\.jsonl row 1: row has fields prompt \(text\).*cannot mix"):
        load_examples(str(path), "sft")
    ds, stats = load_examples(str(path), "sft", on_bad_row="skip")
    assert ds.num_rows == 1 and stats.rows_skipped == 1


def test_template_kwargs(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "Q1", "response": "A1", "system_prompt": "S"}])
    kwargs = {"prompt_template": "### {system}{question}\n###", "system_template": "<{system_prompt}> "}
    ds, _ = load_examples(str(path), "sft", template_kwargs=kwargs)
    assert ds[0]["prompt"] == "### <S> Q1\n###"
    ds, _ = load_examples(str(path), "prompt", template_kwargs=kwargs)
    assert ds[0]["prompt"] == "### <S> Q1\n###"
    with pytest.raises(ConfigError, match=r"prompt_template .* cannot be rendered"):
        load_examples(str(path), "sft", template_kwargs={"prompt_template": "{instruction}"})
    with pytest.raises(ConfigError, match="unknown template option"):
        load_examples(str(path), "sft", template_kwargs={"template": "x"})


def test_bad_arguments(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ORCA)
    with pytest.raises(ConfigError, match="unknown data kind 'ppo'"):
        load_examples(str(path), "ppo")
    with pytest.raises(ConfigError, match="on_bad_row"):
        load_examples(str(path), "sft", on_bad_row="ignore")
    with pytest.raises(ConfigError, match="max_rows"):
        load_examples(str(path), "sft", max_rows=0)


def test_demo_uri_delegates(monkeypatch):
    import kuberlhf.demo.data as demo_data

    seen = []

    def fake_rows(uri):
        seen.append(uri)
        yield {"question": "demo q", "response": "demo a"}

    monkeypatch.setattr(demo_data, "iter_rows", fake_rows)
    ds, stats = load_examples("demo://sft?n=1", "sft")
    assert seen == ["demo://sft?n=1"]
    assert (
        ds[0] == {"prompt": "Question: demo q\n\nAnswer:", "completion": " demo a"} and stats.rows_read == 1
    )


def test_datastats_caps_examples():
    stats = DataStats()
    for i in range(15):
        stats.rows_read += 1
        stats.skip(f"row {i}")
    assert stats.to_dict()["skipped_examples"] == [f"row {i}" for i in range(10)]
    assert stats.rows_skipped == 15 and stats.rows_kept == 0


def test_jsonl_encoding(tmp_path):
    path = tmp_path / "t.jsonl"
    good = json.dumps(ORCA[0]).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n" + b'{"question": "caf\xe9"}\n' + good + b"\n")
    with pytest.raises(DataError, match=rf"^{path} line 2: not UTF-8 text \(invalid continuation byte\)$"):
        load_examples(str(path), "sft")
    ds, stats = load_examples(str(path), "sft", on_bad_row="skip")  # BOM and CRLF are fine
    assert ds.num_rows == 2 and stats.rows_skipped == 1


AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)


def test_deeplake_creds_from_env(monkeypatch):
    from kuberlhf.data.hub import deeplake_creds

    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    assert deeplake_creds() is None
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert deeplake_creds() == {
        "aws_access_key_id": "AK",
        "aws_secret_access_key": "SK",
        "endpoint_url": "http://minio:9000",
        "aws_region": "eu-west-1",
    }
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:9000")
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "TOK")
    monkeypatch.setenv("AWS_PROFILE", "team")
    creds = deeplake_creds()
    assert creds["endpoint_url"] == "http://s3-only:9000" and creds["aws_region"] == "us-west-2"
    assert creds["aws_session_token"] == "TOK" and creds["profile_name"] == "team"


def test_deeplake_urls_pass_creds_and_token(monkeypatch):
    import deeplake

    calls = []

    def fake_open_read_only(url, creds=None, token=None):
        calls.append((url, creds, token))
        raise RuntimeError("Dataset does not exist\nat that path")

    monkeypatch.setattr(deeplake, "open_read_only", fake_open_read_only)
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("ACTIVELOOP_TOKEN", "al-token")
    with pytest.raises(
        DataError, match=r"^s3://b/ds: cannot open Deep Lake dataset \(Dataset does not exist at"
    ):
        list(iter_rows("s3://b/ds", format="deeplake"))
    with pytest.raises(DataError, match=r"^al://org/ds: cannot open Deep Lake dataset"):
        list(iter_rows("hub://org/ds"))
    creds = {
        "aws_access_key_id": "AK",
        "aws_secret_access_key": "SK",
        "endpoint_url": "http://127.0.0.1:9000",
    }
    assert calls == [("s3://b/ds", creds, None), ("al://org/ds", None, "al-token")]


def _rss_mib() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_streaming_a_parquet_file_holds_no_more_of_it_as_it_goes(tmp_path):
    """Memory stays flat over a stream: the reader drops each row group's bytes once its rows are read."""
    import os

    path, rows, groups = tmp_path / "big.parquet", 4000, 32
    with pq.ParquetWriter(path, pa.schema([("prompt", pa.string())]), compression="none") as writer:
        for _ in range(groups):  # row groups of 4000 rows x 1 KiB of incompressible text: 128 MiB in all
            writer.write_table(pa.table({"prompt": [os.urandom(512).hex() for _ in range(rows)]}))
    seen, rss = 0, {}
    for _ in iter_rows(str(path)):
        seen += 1
        if seen in (groups // 2 * rows, groups * rows):  # after the reader's own buffers have grown
            rss[seen] = _rss_mib()
    assert seen == groups * rows
    growth = rss[groups * rows] - rss[groups // 2 * rows]
    assert growth < 32, f"RSS grew by {growth:.0f} MiB over the last 64 MiB of rows"


def test_a_mistyped_relative_model_dir_is_named_before_the_hubs_answer(tmp_path, monkeypatch):
    """``outputs/sft-typo`` has the form of a hub name: the error says first that there is no such local
    directory, then what the hub said (it used to read as a failed download only)."""
    from kuberlhf.errors import KuberlhfError
    from kuberlhf.models.loading import _load

    class Hub:
        @staticmethod
        def from_pretrained(path, **kwargs):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.chdir(tmp_path)
    with pytest.raises(KuberlhfError) as info:
        _load(Hub, "outputs/sft-typo", "tokenizer")
    assert str(info.value) == (f"cannot load tokenizer from 'outputs/sft-typo': there is no local directory "
                               f"'outputs/sft-typo' (in {tmp_path}), and as a hub name: We couldn't connect to "
                               "'https://huggingface.co' to load the files.")
    (tmp_path / "outputs/sft-typo").mkdir(parents=True)  # a directory that exists but does not load: as before
    with pytest.raises(KuberlhfError, match=r"^cannot load tokenizer from 'outputs/sft-typo': We couldn't"):
        _load(Hub, "outputs/sft-typo", "tokenizer")
