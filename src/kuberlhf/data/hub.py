"""Sources with loaders of their own: Hugging Face datasets (the Hub, ``save_to_disk`` folders) and
Deep Lake 4 datasets (local, ``s3://``, ``al://``/``hub://``),
read in batches as records (:class:`~kuberlhf.data.records.Record`).

Deep Lake gets its S3 ``creds`` from the standard ``AWS_*`` variables (:func:`deeplake_creds`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from kuberlhf.data.records import BATCH_ROWS, Record, columns_to_rows
from kuberlhf.errors import DataError, one_line


def hf_disk_dataset(
    path: str, shown: str, split: str, storage_options: dict[str, Any] | None = None
) -> tuple[Any, str]:
    """A ``save_to_disk`` dataset's ``split`` (when it holds several) and how messages name it."""
    import datasets

    try:
        loaded = datasets.load_from_disk(path, storage_options=storage_options)
    except Exception as err:  # any failure means an unreadable source
        raise DataError(f"{shown}: cannot load a save_to_disk dataset ({one_line(err)})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"{shown}: no split {split!r}; available splits: {', '.join(sorted(loaded))}"
            )
        loaded = loaded[split]
        shown = f"{shown}[{split}]"
    return loaded, shown


def hf_disk_records(
    path: str, shown: str, split: str, storage_options: dict[str, Any] | None = None
) -> Iterator[Record]:
    """The rows of :func:`hf_disk_dataset` as records, batch by batch."""
    loaded, shown = hf_disk_dataset(path, shown, split, storage_options)
    index = 0
    for batch in loaded.iter(batch_size=BATCH_ROWS):
        for row in columns_to_rows(batch):
            yield Record(shown, index, row)
            index += 1


def _hub_error(shown: str, local_miss: bool, name: str, split: str, index: int, err: Exception) -> DataError:
    prefix = f"{shown}: no such local path, and " if local_miss else f"{shown}: "
    return DataError(
        f"{prefix}cannot load Hugging Face dataset {name!r} (split {split!r})"
        + (f" after {index} rows" if index else "")
        + f": {type(err).__name__}: {one_line(err)}"
    )


def hf_hub_dataset(
    name: str,
    shown: str,
    split: str,
    streaming: bool,
    *,
    local_miss: bool = False,
    subset: str | None = None,
    data_dir: str | None = None,
) -> Any:
    """``datasets.load_dataset`` of a Hub dataset (``subset`` is its ``name=``); a failure is a DataError."""
    import datasets

    options = {k: v for k, v in (("name", subset), ("data_dir", data_dir)) if v is not None}
    try:
        return datasets.load_dataset(name, split=split, streaming=streaming, **options)
    except DataError:
        raise
    except Exception as err:  # hub, network and builder errors alike
        raise _hub_error(shown, local_miss, name, split, 0, err) from None


def hf_hub_records(name: str, shown: str, split: str, streaming: bool, **options: Any) -> Iterator[Record]:
    """The rows of :func:`hf_hub_dataset` (same ``options``) as records; a failure while reading is a DataError."""
    loaded = hf_hub_dataset(name, shown, split, streaming, **options)
    index = 0
    try:
        for row in loaded:
            yield Record(shown, index, dict(row))
            index += 1
    except DataError:
        raise
    except Exception as err:  # hub, network and builder errors alike
        raise _hub_error(shown, options.get("local_miss", False), name, split, index, err) from None


def deeplake_creds() -> dict[str, str] | None:
    """Deep Lake 4 ``creds`` from the standard ``AWS_*`` environment variables."""
    env = os.environ
    pairs = {
        "aws_access_key_id": env.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY"),
        "aws_session_token": env.get("AWS_SESSION_TOKEN"),
        "endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
        "aws_region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        "profile_name": env.get("AWS_PROFILE"),
    }
    creds = {k: v for k, v in pairs.items() if v}
    return creds or None


def deeplake_records(url: str) -> Iterator[Record]:
    """The rows of the Deep Lake 4 dataset at ``url`` (a path, ``s3://``, ``al://`` or ``hub://``) as records,
    its values plain Python; a failure to open or read it is a DataError."""
    import deeplake

    if url.startswith("hub://"):
        url = "al://" + url[len("hub://") :]
    creds = deeplake_creds() if url.startswith("s3://") else None
    token = os.environ.get("ACTIVELOOP_TOKEN") if url.startswith("al://") else None
    try:
        ds = deeplake.open_read_only(url, creds=creds, token=token)
        columns = [column.name for column in ds.schema.columns]
    except Exception as err:  # deeplake has its own exception types
        raise DataError(f"{url}: cannot open Deep Lake dataset ({one_line(err)})") from None
    index = 0
    try:
        for batch in ds.batches(BATCH_ROWS):
            for row in columns_to_rows({c: _plain(batch[c]) for c in columns}):
                yield Record(url, index, row)
                index += 1
    except Exception as err:
        raise DataError(f"{url} row {index}: cannot read Deep Lake data ({one_line(err)})") from None


def _plain(value: Any) -> Any:
    """Convert numpy, bytes and Deep Lake values into plain Python str/int/float/list/dict."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _plain(value.tolist())
    if hasattr(value, "to_dict"):  # deeplake Dict
        return _plain(value.to_dict())
    return value


