"""Benchmark: ``runs list --where 'map50_95>0.85'`` over 10,000 runs in a loopback S3 store.

Starts its own ``moto_server`` on a free port, seeds 10,000 per-run index records plus the
compacted ``INDEX.jsonl`` (and 20 pending updates, as after a burst of finishing jobs), then
times, end to end:

* ``slurm-yolo runs list --where 'map50_95>0.85' --json`` (the CLI entry point, new process
  state each time: parse argv, boto3 client, read INDEX.jsonl + pending, filter, print);
* the same as a fresh ``python -m slurm_yolo.cli`` process (interpreter start and imports too);
* the naive alternative: list ``runs/`` and GET every per-run record, then filter.

Run: ``python benchmarks/bench_catalog.py [--runs 10000] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "catalog"))

from catalog_seed import ACCESS, make_line  # noqa: E402
from slurm_yolo.archive import layout  # noqa: E402
from slurm_yolo.archive.store import Store  # noqa: E402
from slurm_yolo.catalog import index, query  # noqa: E402
from slurm_yolo.catalog.index import Catalog  # noqa: E402
from slurm_yolo.cli import main as cli_main  # noqa: E402

from _services import free_port, wait_port  # noqa: E402 - benchmarks/ is on sys.path when run as a script


@contextlib.contextmanager
def moto_server():
    port = free_port()
    binary = Path(sys.executable).parent / "moto_server"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([str(binary) if binary.exists() else shutil.which("moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, proc, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def seed(cat: Catalog, n: int) -> list[dict]:
    client = cat.store.boto3_client()
    client.create_bucket(Bucket=cat.bucket)
    rng = random.Random(42)
    lines = [make_line(i, rng, bucket=cat.bucket) for i in range(n)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda x: client.put_object(Bucket=cat.bucket, Key=cat.key(layout.index_key(x["run_id"])),
                                                  Body=json.dumps(x).encode()), lines))
    client.put_object(Bucket=cat.bucket, Key=cat.key(layout.INDEX_JSONL), Body=index.dump_jsonl(
        {x["run_id"]: x for x in lines[20:]}))
    for x in lines[:20]:
        client.put_object(Bucket=cat.bucket, Key=index.pending_key(cat, x["run_id"]), Body=json.dumps(x).encode())
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
    keys = [o["Key"] for o in index.list_keys(client, cat.bucket, cat.key(layout.INDEX_RUNS))]
    with ThreadPoolExecutor(16) as pool:  # a fair naive reader: 16 parallel GETs
        lines = list(pool.map(lambda k: json.loads(client.get_object(Bucket=cat.bucket, Key=k)["Body"].read()), keys))
    found = query.select(lines, query.Query(where=(query.parse_where(where),)))
    return time.perf_counter() - start, len(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    where = "map50_95>0.85"
    with moto_server() as endpoint:
        cat = Catalog(Store(endpoint_url=endpoint, keys=ACCESS), "s3://bench-catalog/index/")
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "SLURM_YOLO_INDEX": cat.index_url,
                           "SLURM_YOLO_SITE_CONFIG": "/nonexistent", **dict(ACCESS)})
        t0 = time.perf_counter()
        lines = seed(cat, args.runs)
        print(f"seeded {len(lines)} runs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        expected = sum(1 for x in lines if x["map50_95"] is not None and x["map50_95"] > 0.85)
        cli = [time_cli(where) for _ in range(args.repeat)]
        process = [time_process(where) for _ in range(args.repeat)]
        naive = [time_naive(cat, where) for _ in range(max(1, args.repeat // 2))]
    assert all(n == expected for _, n in cli + process + naive), (expected, cli, process, naive)
    cli_s, naive_s = statistics.median(t for t, _ in cli), statistics.median(t for t, _ in naive)
    print(json.dumps({"runs": args.runs, "matches": expected, "runs_list_s": round(cli_s, 3),
                      "runs_list_min_s": round(min(t for t, _ in cli), 3),
                      "new_process_s": round(statistics.median(t for t, _ in process), 3), "naive_s": round(naive_s, 3),
                      "ratio": round(naive_s / cli_s, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
