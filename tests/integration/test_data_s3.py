"""Loading datasets from a real S3 server (SeaweedFS, the ``s3_bucket`` fixture)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kuberlhf.data import iter_rows, load_examples
from kuberlhf.data.hub import deeplake_creds
from kuberlhf.errors import DataError

SRC = Path(__file__).resolve().parents[2] / "src"
ORCA = [{"system_prompt": "", "question": f"q{i}", "response": f"r{i}"} for i in range(30)]
PAIRS = [{"prompt": f"p{i}", "chosen": " good", "rejected": " bad"} for i in range(2000)]


def _client():
    return boto3.client("s3")  # AWS_ENDPOINT_URL etc. come from the fixture's environment


def _jsonl(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def _parquet(rows: list[dict], row_group_size: int | None = None) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf, row_group_size=row_group_size)
    return buf.getvalue()


def test_jsonl_and_parquet_objects(s3_bucket):
    s3 = _client()
    s3.put_object(Bucket=s3_bucket, Key="sft/train.jsonl", Body=_jsonl(ORCA))
    s3.put_object(Bucket=s3_bucket, Key="rm/pairs.parquet", Body=_parquet(PAIRS, row_group_size=500))

    ds, stats = load_examples(f"s3://{s3_bucket}/sft/train.jsonl", "sft")
    assert isinstance(ds, datasets.Dataset) and ds.num_rows == 30 and stats.rows_read == 30
    assert ds[7] == {"prompt": "Question: q7\n\nAnswer:", "completion": " r7"}

    ds, stats = load_examples(f"s3://{s3_bucket}/rm/pairs.parquet", "preference")
    assert ds.num_rows == 2000 and ds[1999] == {"prompt": "p1999", "chosen": " good", "rejected": " bad"}

    stream, stats = load_examples(
        f"s3://{s3_bucket}/rm/pairs.parquet", "preference", streaming=True, max_rows=1500
    )
    assert isinstance(stream, datasets.IterableDataset)
    assert sum(1 for _ in stream) == 1500 and stats.rows_read == 1500


def test_prefix_of_files(s3_bucket):
    s3 = _client()
    s3.put_object(Bucket=s3_bucket, Key="data/part-1.parquet", Body=_parquet(ORCA[10:]))
    s3.put_object(Bucket=s3_bucket, Key="data/part-0.jsonl", Body=_jsonl(ORCA[:10]))
    s3.put_object(Bucket=s3_bucket, Key="data/README.md", Body=b"# readme")
    s3.put_object(Bucket=s3_bucket, Key="data/nested/part-9.jsonl", Body=_jsonl(ORCA[:1]))
    for uri in (f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/data/"):
        assert list(iter_rows(uri)) == ORCA
    assert list(iter_rows(f"s3://{s3_bucket}/data/", format="parquet")) == ORCA[10:]


def test_bad_row_and_missing_objects(s3_bucket):
    rows = list(ORCA)
    rows[4] = {"question": "q", "response": None}
    _client().put_object(Bucket=s3_bucket, Key="bad.jsonl", Body=_jsonl(rows) + b"{not json\n")
    uri = f"s3://{s3_bucket}/bad.jsonl"
    with pytest.raises(DataError, match=rf"^{uri} row 4: field 'response' must be a string, got None$"):
        load_examples(uri, "sft")
    ds, stats = load_examples(uri, "sft", on_bad_row="skip")
    assert ds.num_rows == 29 and stats.rows_skipped == 2
    assert (
        stats.skipped_examples[1]
        == f"{uri} line 31: invalid JSON (Expecting property name enclosed in double quotes)"
    )
    with pytest.raises(DataError, match=rf"s3://{s3_bucket}/nope\.jsonl: no such object"):
        load_examples(f"s3://{s3_bucket}/nope.jsonl", "sft")
    with pytest.raises(DataError, match=rf"s3://{s3_bucket}/nothing-here: no such object or prefix"):
        load_examples(f"s3://{s3_bucket}/nothing-here", "sft")


def test_deeplake_dataset_on_s3(s3_bucket):
    import deeplake

    creds = deeplake_creds()
    assert creds is not None and creds["endpoint_url"].startswith("http://127.0.0.1")
    assert {"aws_access_key_id", "aws_secret_access_key", "aws_region"} <= set(creds)
    uri = f"s3://{s3_bucket}/deeplake/hh"
    ds = deeplake.create(uri, creds=creds)
    ds.add_column("chosen", deeplake.types.Text())
    ds.add_column("rejected", deeplake.types.Text())
    n = 1300
    ds.append(
        {
            "chosen": [f"\n\nHuman: question {i}?\n\nAssistant: good answer {i}" for i in range(n)],
            "rejected": [f"\n\nHuman: question {i}?\n\nAssistant: bad" for i in range(n)],
        }
    )
    ds.commit()

    loaded, stats = load_examples(uri, "preference", format="deeplake")
    assert loaded.num_rows == n and stats.rows_read == n
    assert loaded[n - 1] == {
        "prompt": f"\n\nHuman: question {n - 1}?\n\nAssistant:",
        "chosen": f" good answer {n - 1}",
        "rejected": " bad",
    }
    # format=auto recognises the dataset by its _deeplake_log/ folder
    assert list(iter_rows(uri))[0]["chosen"].endswith("good answer 0")


def test_deeplake_on_s3_wrong_credentials(s3_bucket):
    """Deep Lake reads with the AWS_* credentials; a wrong secret is a one-line DataError.

    (Unit tests check the exact ``creds`` dict; deeplake also reads AWS_* by itself.)
    The failing open runs in a child process: after a failed S3 open, deeplake 4.7.4's
    exit handler spins or crashes once the S3 server has gone away (as it does at the
    end of the test session), which would hang pytest.
    """
    import deeplake

    uri = f"s3://{s3_bucket}/deeplake/x"
    ds = deeplake.create(uri, creds=deeplake_creds())
    ds.add_column("prompt", deeplake.types.Text())
    ds.append({"prompt": ["hello"]})
    ds.commit()
    assert list(iter_rows(uri, format="deeplake")) == [{"prompt": "hello"}]

    code = (  # os._exit: past deeplake's exit handler, which can crash (SIGSEGV) after a failed open
        "import os, sys\n"
        "from kuberlhf.data import iter_rows\n"
        "try:\n"
        "    list(iter_rows(sys.argv[1], format='deeplake'))\n"
        "except Exception as err:\n"
        "    print(type(err).__name__, err, flush=True)\n"
        "    os._exit(3)\n"
    )
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": "wrong-secret", "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", code, uri], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith(f"DataError {uri}: cannot open Deep Lake dataset (")
    assert "SignatureDoesNotMatch" in result.stdout


def test_save_to_disk_dataset_on_s3(s3_bucket):
    from kuberlhf.artifacts.storage import fs_for

    uri = f"s3://{s3_bucket}/hf/pairs"
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PAIRS[:5]), "test": datasets.Dataset.from_list(PAIRS[5:7])}
    )
    dd.save_to_disk(uri, storage_options=fs_for(uri).storage_options)
    ds, stats = load_examples(uri, "preference", split="test")
    assert ds.to_list() == PAIRS[5:7] and stats.rows_read == 2
    with pytest.raises(DataError, match=r"no split 'validation'; available splits: test, train"):
        load_examples(uri, "preference", split="validation")


def _outcome(uri, kind, streaming, **kwargs):
    try:
        ds, stats = load_examples(uri, kind, streaming=streaming, **kwargs)
        return ("ok", list(ds) if streaming else ds.to_list(), stats.to_dict())
    except DataError as err:
        return ("error", str(err))


def test_arrow_loads_give_the_row_reader_rows_and_reuse_the_download(s3_bucket, tmp_path, monkeypatch):
    """Non-streaming loads (Arrow, from a downloaded copy) and streaming ones (row by row from S3) agree."""
    import kuberlhf.artifacts.storage as storage

    monkeypatch.setenv("KUBERLHF_CACHE", str(tmp_path / "cache"))
    s3 = _client()
    rows = list(ORCA)
    rows[4] = {"question": "q"}
    body = _jsonl(rows[:10]) + b"\n{not json\n   \n" + _jsonl(rows[10:]) + b"[1]\n"
    s3.put_object(Bucket=s3_bucket, Key="mixed/a.jsonl", Body=body)
    s3.put_object(Bucket=s3_bucket, Key="mixed/b.parquet", Body=_parquet(ORCA + [{"question": "", "response": "r"}]))
    s3.put_object(Bucket=s3_bucket, Key="mixed/c.json", Body=json.dumps(ORCA[:3]).encode())
    prefix = f"s3://{s3_bucket}/mixed/"
    for uri in (prefix + "a.jsonl", prefix + "b.parquet", prefix):
        for on_bad_row in ("skip", "error"):
            arrow = _outcome(uri, "sft", False, on_bad_row=on_bad_row)
            assert arrow == _outcome(uri, "sft", True, on_bad_row=on_bad_row), (uri, on_bad_row)
        for max_rows in (5, 31, 45):
            assert _outcome(uri, "sft", False, on_bad_row="skip", max_rows=max_rows) == _outcome(
                uri, "sft", True, on_bad_row="skip", max_rows=max_rows)
    _, kept, stats = _outcome(prefix, "sft", False, on_bad_row="skip")
    assert (len(kept), stats["rows_read"], stats["rows_skipped"]) == (62, 66, 4)
    assert stats["skipped_examples"][:2] == [f"{prefix}a.jsonl row 4: missing field 'response'",
                                             f"{prefix}a.jsonl line 12: invalid JSON (Expecting property name "
                                             "enclosed in double quotes)"]
    downloads = sorted((tmp_path / "cache" / "datasets" / "downloads").iterdir())
    assert sorted(p.suffix for p in downloads) == [".json", ".jsonl", ".parquet"]  # one copy of each object

    def no_download(uri, *args, **kwargs):
        raise AssertionError(f"downloaded {uri} again")

    with monkeypatch.context() as patch:
        patch.setattr(storage, "open_uri", no_download)
        patch.setattr(storage, "download_object", no_download)
        again, _ = load_examples(prefix, "sft", on_bad_row="skip")
    assert again.to_list() == kept
    s3.put_object(Bucket=s3_bucket, Key="mixed/a.jsonl", Body=_jsonl(ORCA[:2]))  # a new object: a new ETag
    changed, stats = load_examples(prefix + "a.jsonl", "sft")
    assert changed.num_rows == 2 and stats.rows_read == 2


def test_s3_files_load_through_boto3_alone(s3_bucket, tmp_path, monkeypatch):
    """s3fs is the s3data extra: files and prefixes load without it; a save_to_disk folder names the extra."""
    from kuberlhf.artifacts.storage import fs_for
    from kuberlhf.errors import StorageError

    monkeypatch.setenv("KUBERLHF_CACHE", str(tmp_path / "cache"))
    s3 = _client()
    s3.put_object(Bucket=s3_bucket, Key="plain/part-0.jsonl", Body=_jsonl(ORCA[:10]))
    s3.put_object(Bucket=s3_bucket, Key="plain/part-1.parquet", Body=_parquet(ORCA[10:]))
    disk = f"s3://{s3_bucket}/hf/saved"
    datasets.Dataset.from_list(PAIRS[:3]).save_to_disk(disk, storage_options=fs_for(disk).storage_options)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # `import s3fs` now fails as if not installed
    prefix = f"s3://{s3_bucket}/plain/"
    ds, stats = load_examples(prefix, "sft")
    assert ds.num_rows == 30 and stats.rows_read == 30 and ds[12]["completion"] == " r12"
    stream, _ = load_examples(prefix, "sft", streaming=True)
    assert list(stream) == ds.to_list()
    with pytest.raises(StorageError, match=rf"^reading {disk} as a dataset needs s3fs: pip install 'kuberlhf\[s3data\]'$"):
        load_examples(disk, "preference")


def test_a_large_object_downloads_in_parts_into_the_cache(s3_bucket, tmp_path, monkeypatch):
    """A data object over the part size comes down in ranged parts, whole, under its ETag's name."""
    from kuberlhf.artifacts import s3 as s3conn

    monkeypatch.setenv("KUBERLHF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(s3conn, "_defaults", s3conn.StorageOptions(multipart_threshold_mb=5,
                                                                   multipart_chunksize_mb=5))
    rows = [{"question": f"q{i} " + "x" * 1000, "response": f"r{i}"} for i in range(12000)]  # ~12 MiB
    _client().put_object(Bucket=s3_bucket, Key="big/train.jsonl", Body=_jsonl(rows))
    ranges = []
    real = s3conn.s3_client

    def spying(*args, **kwargs):
        client = real(*args, **kwargs)
        client.meta.events.register("before-parameter-build.s3.GetObject",
                                    lambda params, **_: ranges.append(params.get("Range")))
        return client

    monkeypatch.setattr("kuberlhf.artifacts.objects.s3_client", spying)
    ds, stats = load_examples(f"s3://{s3_bucket}/big/train.jsonl", "sft")
    assert ds.num_rows == 12000 and stats.rows_read == 12000 and ds[11999]["completion"] == " r11999"
    assert len([r for r in ranges if r]) == 3  # three 5 MiB parts
    [copy] = (tmp_path / "cache" / "datasets" / "downloads").iterdir()
    assert copy.read_bytes() == _jsonl(rows)
