"""Data loading at scale: kuberlhf's loader beside a plain datasets pipeline on a million OpenOrca-shaped rows.

$ nice -n 10 .venv/bin/python bench/data_scale.py                 # 1,000,000 rows, then the table
$ .venv/bin/python bench/data_scale.py --rows 50000               # a quick run
$ .venv/bin/python bench/data_scale.py --rows 200000 --num-proc 2 # also the map in two processes
$ .venv/bin/python bench/data_scale.py --baseline-rev 07fe79c     # also the loader of that commit

Writes OpenOrca-shaped rows (id, system_prompt, question, response; questions ~100-1200 characters,
responses ~50-1000, a system prompt in two rows of three) as JSON Lines and as Parquet into a temporary folder,
then runs each loader in its own process, one after the other, each with an empty cache:

* kuberlhf: ``kuberlhf.data.load_data`` of a ``data`` section (``data.train=<file>``) as the SFT stage calls it:
  load, check every row, format prompt and completion; a second load of the same file from the warm cache;
* plain datasets: ``datasets.load_dataset("json"|"parquet")`` and a batched ``map`` formatting the same prompt
  and completion (no checks);
* kuberlhf streaming: ``data.streaming=true`` iterated over the whole file, peak RSS also read a quarter in.

The plain and the cold kuberlhf loads run --repeats times, taking turns at going first (on this disk the second
of two runs is often the slower), each after os.sync() in a fresh cache removed after it; the table shows each
one's median run (of an even count the faster middle one) and the fastest and slowest.
rows/s = rows / wall time of the load (imports excluded); peak RSS is the child's own (VmHWM of /proc/self/status
at the end; memory-mapped Arrow pages count while resident; with --num-proc the map's
worker processes are given beside it). Results go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the of and to in is that for it as was with be by on not this are or from at which but have an they you "
         "were all there would their we been has when who will more no if out so said what up its about into than "
         "them can only other new some could time these two may then do first any my now such like our over even "
         "most made after also did many before must through back years where much your way well down should because "
         "each just those people how too little state good very make world still own see men work long get here "
         "between both life being under never day same another know while last might great old year off come since "
         "against go came right used take three answer question translate sentence summary review article").split()
SYSTEM = ("You are an AI assistant. User will give you a task. Your goal is to complete the task as faithfully as "
          "you can. While performing the task think step-by-step and justify your steps.")


# ---------------------------------------------------------------------- data


def write_data(folder: Path, rows: int, seed: int = 0) -> tuple[Path, Path]:
    """``orca.jsonl`` and ``orca.parquet`` holding the same ``rows`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    corpus = " ".join(rng.choice(WORDS) for _ in range(400_000))  # ~2.3 MB of text to cut fields from
    jsonl, parquet = folder / "orca.jsonl", folder / "orca.parquet"
    writer = None
    with open(jsonl, "w", encoding="utf-8") as out:
        for start in range(0, rows, 50_000):
            batch = []
            for i in range(start, min(rows, start + 50_000)):
                q0, r0 = rng.randrange(len(corpus) - 1300), rng.randrange(len(corpus) - 1100)
                batch.append({"id": f"niv.{i}", "system_prompt": SYSTEM if i % 3 else "",
                              "question": corpus[q0 : q0 + rng.randint(100, 1200)].strip() + "?",
                              "response": corpus[r0 : r0 + rng.randint(50, 1000)].strip() + "."})
            out.write("".join(json.dumps(row) + "\n" for row in batch))
            table = pa.Table.from_pylist(batch)
            writer = writer or pq.ParquetWriter(parquet, table.schema)
            writer.write_table(table)
    if writer is not None:
        writer.close()
    return jsonl, parquet


# ---------------------------------------------------------------------- the loaders (in the child)


def vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def digest(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]


def sample(ds) -> list[dict]:
    n = len(ds)
    return [ds[i] for i in (0, n // 2, n - 1)]


def child(loader: str, path: str, num_proc: int | None) -> dict:
    """Run one loader; its rows, seconds and peak RSS (VmHWM; of the map's worker processes too, if any)."""
    import resource

    result = load(loader, path, num_proc)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {**result, "peak_rss_mib": vm_hwm_mib(), "workers_rss_mib": workers if num_proc else None}


def load(loader: str, path: str, num_proc: int | None) -> dict:
    import datasets

    datasets.disable_progress_bars()
    if loader == "plain":
        from kuberlhf.data.formats import DEFAULT_PROMPT_TEMPLATE, DEFAULT_SYSTEM_TEMPLATE

        started = time.perf_counter()
        builder = "parquet" if path.endswith(".parquet") else "json"
        ds = datasets.load_dataset(builder, data_files=path, split="train", cache_dir=os.environ["KUBERLHF_CACHE"])

        def format_rows(batch: dict) -> dict:
            prompts = []
            for question, system in zip(batch["question"], batch["system_prompt"], strict=True):
                system = (system or "").strip()
                prefix = DEFAULT_SYSTEM_TEMPLATE.format(system_prompt=system) if system else ""
                prompts.append(DEFAULT_PROMPT_TEMPLATE.format(system=prefix, question=question.strip()))
            return {"prompt": prompts, "completion": [" " + r.strip() for r in batch["response"]]}

        ds = ds.map(format_rows, batched=True, remove_columns=ds.column_names)
        return {"rows": len(ds), "seconds": time.perf_counter() - started, "digest": digest(sample(ds))}
    from kuberlhf.config import from_dict
    from kuberlhf.config.sections import DataConfig
    from kuberlhf.data import load_data

    section = {"train": path, "streaming": loader == "stream", **({"num_proc": num_proc} if num_proc else {})}
    cfg = from_dict(DataConfig, section)
    started = time.perf_counter()
    train, _, stats = load_data(cfg, "sft", seed=0)
    if loader != "stream":
        return {"rows": len(train), "seconds": time.perf_counter() - started, "digest": digest(sample(train)),
                "rows_read": stats.rows_read}
    count, quarter_rss, quarter = 0, None, None
    for _ in train:
        count += 1
        if count == max(1, int(os.environ["BENCH_ROWS"]) // 4):
            quarter_rss, quarter = vm_hwm_mib(), count
    return {"rows": count, "seconds": time.perf_counter() - started, "quarter_rows": quarter,
            "quarter_rss_mib": quarter_rss, "end_rss_mib": vm_hwm_mib()}


# ---------------------------------------------------------------------- the runs (in the parent)


def run(loader: str, path: Path, cache: Path, rows: int, num_proc: int | None = None, src: Path | None = None
        ) -> dict:
    """One loader in its own process: its result (with its peak RSS, VmHWM, which a new program starts afresh;
    ``wait4``'s ru_maxrss would carry this process's own peak over the exec)."""
    cmd = [sys.executable, __file__, "--child", loader, "--file", str(path)]
    if num_proc:
        cmd += ["--num-proc", str(num_proc)]
    env = {**os.environ, "KUBERLHF_CACHE": str(cache), "HF_DATASETS_CACHE": str(cache / "hf"),
           "BENCH_ROWS": str(rows), "PYTHONPATH": str(src or Path(__file__).resolve().parents[1] / "src")}
    os.sync()  # the last run's writes do not land on this one
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.wait() != 0:
        raise SystemExit(f"{loader} on {path.name} failed (status {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def median(runs: list[dict]) -> dict:
    """The run of median wall time (of an odd count; the faster middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[(len(runs) - 1) // 2], "spread": (ordered[0]["seconds"], ordered[-1]["seconds"])}


def machine() -> str:
    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    import datasets
    import pyarrow

    return (f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"{int(mem.split()[1]) / 1024 / 1024:.1f} GiB RAM, Python {platform.python_version()}, "
            f"datasets {datasets.__version__}, pyarrow {pyarrow.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to write and load (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=4,
                        help="plain and cold kuberlhf loads, taking turns at going first; the median shows (default 4)")
    parser.add_argument("--num-proc", type=int, default=None, help="also run kuberlhf with data.num_proc=N")
    parser.add_argument("--baseline-rev", default=None,
                        help="also run the non-streaming load on this commit's src/ (the loader before Arrow)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.file, args.num_proc)))
        return
    print(f"# {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="data-scale-") as tmp:
        root = Path(tmp)
        old_src = None
        if args.baseline_rev:
            from ppo_memory import baseline_src

            (root / "baseline").mkdir()
            old_src = baseline_src(args.baseline_rev, root / "baseline")
        started = time.perf_counter()
        jsonl, parquet = write_data(root, args.rows)
        print(f"# wrote {args.rows} rows in {time.perf_counter() - started:.0f} s: JSONL "
              f"{jsonl.stat().st_size / 2**20:.0f} MiB, Parquet {parquet.stat().st_size / 2**20:.0f} MiB", flush=True)
        results = []
        for path in (jsonl, parquet):
            kind = path.suffix[1:]
            plains, colds = [], []
            for attempt in range(args.repeats):  # each in a fresh cache, taking turns at going first
                pair = [("plain", plains), ("load", colds)]
                for loader, runs in pair if attempt % 2 == 0 else pair[::-1]:
                    cache = root / f"cache-{loader}-{kind}-{attempt}"
                    runs.append(run(loader, path, cache, args.rows))
                    if loader == "plain" or attempt + 1 < args.repeats:
                        shutil.rmtree(cache)  # the last cold load's cache serves the warm load
            plain, cold = median(plains), median(colds)
            warm = run("load", path, root / f"cache-load-{kind}-{args.repeats - 1}", args.rows)
            assert cold["digest"] == plain["digest"] == warm["digest"], "the loaders made different rows"
            results += [("plain datasets `load_dataset` + `map`", kind, plain, plain),
                        ("kuberlhf `load_data` (cold cache)", kind, cold, plain),
                        ("kuberlhf `load_data` (warm cache)", kind, warm, plain)]
            if args.num_proc:
                many = run("load", path, root / f"cache-kuberlhf-{kind}-np{args.num_proc}", args.rows, args.num_proc)
                assert many["digest"] == plain["digest"]
                results.append((f"kuberlhf `load_data`, num_proc={args.num_proc} (cold)", kind, many, plain))
            if old_src is not None:
                before = run("load", path, root / f"cache-before-{kind}", args.rows, src=old_src)
                assert before["digest"] == plain["digest"]
                results.append((f"kuberlhf `load_data` at {args.baseline_rev} (before)", kind, before, plain))
            stream = run("stream", path, root / f"cache-stream-{kind}", args.rows)
            results.append(("kuberlhf streaming, whole file", kind, stream, plain))
            print(f"# {kind} done", flush=True)
    print("| loader | file | rows | wall (s) | rows/s | peak RSS (MiB) | rows/s vs plain | peak RSS vs plain |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kind, r, plain in results:
        rate, plain_rate = r["rows"] / r["seconds"], plain["rows"] / plain["seconds"]
        rss = f"{r['peak_rss_mib']:.0f}"
        if "quarter_rss_mib" in r:
            rss += f" ({r['quarter_rss_mib']:.0f} at {r['quarter_rows']} rows, {r['end_rss_mib']:.0f} at the end)"
        if r.get("workers_rss_mib"):
            rss += f" (+ workers {r['workers_rss_mib']:.0f} each at most)"
        wall = f"{r['seconds']:.1f}" + (f" ({r['spread'][0]:.1f}-{r['spread'][1]:.1f})" if len(plains) > 1 and
                                          "spread" in r else "")
        print(f"| {name} | {kind} | {r['rows']} | {wall} | {rate:,.0f} | {rss} | "
              f"{rate / plain_rate:.2f}x | {r['peak_rss_mib'] / plain['peak_rss_mib']:.2f}x |")


if __name__ == "__main__":
    main()
