"""Benchmark: ``runs list --where 'map50_95>0.85'`` over 10,000 runs in a loopback S3 store.

On each store side by side (``--stores``; default SeaweedFS, a real S3 server, and moto, a
mock), started fresh by ``scripts/store.sh`` on a free port: seeds 10,000 per-run index
records plus the compacted quarterly Parquet files (and 20 pending updates, as after a burst of
finishing jobs), then times, end to end:

* ``slurm-yolo runs list --where 'map50_95>0.85' --json`` (the CLI entry point, new process
  state each time: parse argv, boto3 client, read pending + the quarters, filter, print);
* the same as a fresh ``python -m slurm_yolo.cli`` process (interpreter start and imports too);
* the naive alternative: list ``runs/`` and GET every per-run record, then filter;
* 20 epilogs' index step for a new run each at the same moment (``index_run`` from 20
  threads), then one compaction with no grace period: how many of the 20 runs the quarterly
  files hold after it, and how many ``pending/`` updates are left.

Run: ``python benchmarks/bench_catalog.py [--runs 10000] [--repeat 5] [--stores seaweedfs,moto]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import platform
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.catalog_seed import make_record, write_index  # noqa: E402
from slurm_yolo.archive import layout  # noqa: E402
from slurm_yolo.archive import index_compact, index_format, index_store  # noqa: E402
from slurm_yolo.catalog import index, query  # noqa: E402
from slurm_yolo.catalog.index import Catalog  # noqa: E402
from slurm_yolo.cli import main as cli_main  # noqa: E402

from _services import STORES, s3_server  # noqa: E402 - benchmarks/ is on sys.path when run as a script


def seed(cat: Catalog, n: int) -> list[dict]:
    client = cat.store.boto3_client()
    client.create_bucket(Bucket=cat.bucket)
    rng = random.Random(42)
    lines = [make_record(i, rng, bucket=cat.bucket) for i in range(n)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda x: client.put_object(Bucket=cat.bucket, Key=cat.key(layout.index_key(x["run_id"])),
                                                  Body=json.dumps(x).encode()), lines))
    write_index(client, cat, lines[20:])
    for x in lines[:20]:
        client.put_object(Bucket=cat.bucket, Key=index_store.pending_key(cat, x["run_id"]), Body=json.dumps(x).encode())
    return lines


def time_cli(where: str) -> tuple[float, int]:
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        assert cli_main(["runs", "list", "--where", where, "--json"]) == 0
    return time.perf_counter() - start, len(json.loads(out.getvalue()))


def time_process(where: str) -> tuple[float, int]:
    """A fresh ``python -m slurm_yolo.cli`` process: what a user waits for, imports included."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "slurm_yolo.cli", "runs", "list", "--where", where, "--json"],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    return time.perf_counter() - start, len(json.loads(out))


def time_naive(cat: Catalog, where: str) -> tuple[float, int]:
    start = time.perf_counter()
    client = cat.store.boto3_client()
    keys = [o["Key"] for o in index_store.list_keys(client, cat.bucket, cat.key(layout.INDEX_RUNS))]
    with ThreadPoolExecutor(16) as pool:  # a fair naive reader: 16 parallel GETs
        lines = list(pool.map(lambda k: json.loads(client.get_object(Bucket=cat.bucket, Key=k)["Body"].read()), keys))
    found = query.select(lines, query.Query(where=(query.parse_where(where),)))
    return time.perf_counter() - start, len(found)


def time_writers(cat: Catalog, n: int = 20) -> tuple[float, int, int]:
    """``n`` epilogs index a new run each at the same moment, then one compaction: (wall s of the
    epilogs, runs in the quarterly files after the compaction, pending updates left)."""
    rng = random.Random(5)
    lines = [make_record(100_000 + i, rng, bucket=cat.bucket) for i in range(n)]
    start = threading.Barrier(n)

    def writer(line: dict) -> None:
        start.wait()
        index_store.index_run(cat.store, cat.index_url, line)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(writer, lines))
    seconds = time.perf_counter() - t0
    client = cat.store.boto3_client()
    index_compact.compact(cat, grace_s=0)
    listed = {x["run_id"] for m in index_compact.quarters(cat, client)
              for x in index_format.from_table(index_compact.read_quarter(cat, client, m)[0])}
    pending = index_store.list_keys(client, cat.bucket, cat.key(index_store.PENDING))
    return seconds, sum(1 for x in lines if x["run_id"] in listed), len(pending)


def bench_store(kind: str, runs: int, repeat: int, where: str) -> dict:
    """Every measurement on a fresh ``kind`` server."""
    with s3_server(kind) as server:
        cat = Catalog(server.store(), "s3://bench-catalog/index/")
        os.environ.update({"AWS_ENDPOINT_URL": server.endpoint, "SLURM_YOLO_INDEX": cat.index_url,
                           "SLURM_YOLO_SITE_CONFIG": "/nonexistent", **dict(server.keys)})
        t0 = time.perf_counter()
        lines = seed(cat, runs)
        seed_s = time.perf_counter() - t0
        print(f"{kind}: seeded {len(lines)} runs in {seed_s:.1f} s", file=sys.stderr)
        expected = sum(1 for x in lines if x["map50_95"] is not None and x["map50_95"] > 0.85)
        cli = [time_cli(where) for _ in range(repeat)]
        process = [time_process(where) for _ in range(repeat)]
        naive = [time_naive(cat, where) for _ in range(max(1, repeat // 2))]
        # The 20 pending updates the seed left would be folded in by the writers: compact them first.
        index_compact.compact(cat, grace_s=0)
        writers_s, indexed, pending_left = time_writers(cat)
    assert all(n == expected for _, n in cli + process + naive), (kind, expected, cli, process, naive)
    assert indexed == 20, (kind, indexed)
    cli_s, naive_s = statistics.median(t for t, _ in cli), statistics.median(t for t, _ in naive)
    return {"store": kind, "runs": runs, "matches": expected, "seed_s": round(seed_s, 1),
            "runs_list_s": round(cli_s, 3), "runs_list_min_s": round(min(t for t, _ in cli), 3),
            "new_process_s": round(statistics.median(t for t, _ in process), 3), "naive_s": round(naive_s, 3),
            "ratio": round(naive_s / cli_s, 1), "writers_20_s": round(writers_s, 2), "pending_left": pending_left}


def markdown(results: list[dict], load: tuple[float, float]) -> str:
    rows = [("`runs list` in process (median)", "runs_list_s", " s"), ("fastest `runs list` in process", "runs_list_min_s", " s"),
            ("`runs list` in a new `python -m slurm_yolo.cli` process (median)", "new_process_s", " s"),
            ("naive: list `runs/` + GET every record (16 threads)", "naive_s", " s"),
            ("ratio naive / `runs list`", "ratio", "×"),
            ("20 epilogs' index step at the same moment, wall", "writers_20_s", " s"),
            ("`pending/` updates left after one compaction", "pending_left", ""),
            ("seeding the records (16 threads)", "seed_s", " s")]
    head = "| | " + " | ".join(r["store"] for r in results) + " |"
    out = [head, "|---|" + "---:|" * len(results)]
    out += ["| " + label + " | " + " | ".join(f"{r[key]}{unit}"
                                            for r in results) + " |" for label, key, unit in rows]
    out.append("")
    out.append(f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}; "
               f"1-min load average {load[0]:.1f} before, {load[1]:.1f} after. {results[0]['runs']} runs, "
               f"{results[0]['matches']} matches.")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated: seaweedfs,moto (default both)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results = [bench_store(kind, args.runs, args.repeat, "map50_95>0.85") for kind in args.stores.split(",")]
    for r in results:
        print(json.dumps(r))
    print(markdown(results, (load_before, os.getloadavg()[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
