"""Benchmark: the run index at 1k / 10k / 100k / 1M runs, the old design against the new one.

Both designs side by side, on the same fresh loopback S3 server (SeaweedFS by default, a real
S3 server; ``--store moto`` for moto), for each size:

* **old**: one ``INDEX.jsonl`` that every epilog rewrites under compare-and-swap (the code of
  commit ``OLD_COMMIT``, loaded from git history as it was, so nothing is re-implemented);
* **new**: the epilog writes its record and one pending update; compaction folds them into
  quarterly Parquet files; readers open only the quarters a query needs.

The synthetic site: N runs spread evenly over 3 years (so ``--since 90d`` covers ~8 % of
them), plus 20 pending updates as right after a burst of job ends. Measured, end to end:

* one epilog's index step (median of ``--epilogs``): wall time and bytes sent + received;
* ``runs list --where 'map50_95>0.85' --since 90d --json`` and the same without ``--since``
  (a full scan), in process, output included (the CLI entry point);
* ``load_records`` (what the portal and the MLflow bridge read), the new design only against
  the old one at each size;
* the new design's compaction of 100 fresh updates.

``--compaction`` measures compaction across a cluster instead (SeaweedFS; requests and bytes
counted per boto3 client, on botocore's send and receive events, i.e. every request each drain
sends):

* **pending reads**: 1,000 pending updates read one GET at a time, 16 and 32 at a time
  (boto3 threads on one client), and by one ``s5cmd cp 'pending/*' DIR``;
* **drains at once**: 1 / 10 / 50 / 200 drains (threads, each its own client, released together
  by a barrier) compact an index of 10,000 runs with 1,000 pending updates, with the lease and
  without it (every drain compacts, as before the lease): requests, bytes, pending GETs,
  quarter GETs, wall time, and whether every run is in the quarters exactly once.

Run: ``python benchmarks/bench_index.py [--sizes 1000,10000,100000,1000000] [--plot docs/img/index-scale.png]``,
or ``python benchmarks/bench_index.py --compaction [--nodes 1,10,50,200] [--nodes-without-lease 1,10,50]``.
The old design at 1M runs moves ~600 MB per epilog: expect the whole run to take ~15 minutes.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import io
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.catalog_seed import make_record  # noqa: E402
from tests.helpers.s3_requests import RequestLog  # noqa: E402
from slurm_yolo.archive import index_compact, index_format, index_store  # noqa: E402
from slurm_yolo.archive.index_location import IndexLocation  # noqa: E402
from slurm_yolo.catalog import index, query  # noqa: E402
from slurm_yolo.catalog.index import Catalog  # noqa: E402
from slurm_yolo.cli import main as cli_main  # noqa: E402
from slurm_yolo.errors import SlurmYoloError  # noqa: E402

from _services import s3_server  # noqa: E402 - benchmarks/ is on sys.path when run as a script

OLD_COMMIT = "497afa9"  # the last commit with the single-INDEX.jsonl design
NOW = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
SPAN = timedelta(days=3 * 365)
WHERE = "map50_95>0.85"


def load_old() -> ModuleType:
    """The old index module, from git history (its ``layout.INDEX_JSONL`` is the file name)."""
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:slurm_yolo/archive/index_store.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    src = src.replace("layout.INDEX_JSONL", '"INDEX.jsonl"')
    spec = importlib.util.spec_from_loader("old_index_store", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    exec(compile(src, "old_index_store.py", "exec"), module.__dict__)  # noqa: S102 - our own past code
    return module


def site_lines(n: int, seed: int = 42) -> list[dict]:
    """``n`` runs evenly over 3 years back from NOW (newest first), with make_record's mix of values."""
    rng = random.Random(seed)
    step = SPAN / n
    out = []
    for i in range(n):
        line = make_record(i, rng, bucket="bench-index")
        t = NOW - step * (i + 1)
        stamp = t.strftime("%Y-%m-%dT%H:%M:%SZ")
        line.update(run_id=f"{t:%Y%m%d_%H%M%S}_{i:07d}", submitted_at=stamp, start=stamp, end=stamp)
        out.append(line)
    return out


def fresh_line(i: int, rng: random.Random) -> dict:
    """A run that just ended (this quarter), with a unique run ID."""
    line = make_record(0, rng, now=NOW, bucket="bench-index")
    return {**line, "run_id": f"{NOW:%Y%m%d_%H%M%S}_e{i:08d}", "user": "ana"}


def counted_store(store):
    """The store, whose ``boto3_client()`` returns one shared client with a byte counter."""
    client = store.boto3_client()
    counter = RequestLog(client, wire=True)
    counted = type("CountedStore", (), {"__getattr__": lambda self, k: getattr(store, k),
                                        "boto3_client": lambda self: client})()
    return counted, counter


def seed_old(cat: Catalog, old: ModuleType, lines: list[dict]) -> None:
    client = cat.store.boto3_client()
    client.put_object(Bucket=cat.bucket, Key=cat.key("INDEX.jsonl"),
                      Body=old.dump_jsonl({x["run_id"]: x for x in lines[20:]}))
    for x in lines[:20]:
        client.put_object(Bucket=cat.bucket, Key=index_store.pending_key(cat, x["run_id"]), Body=json.dumps(x).encode())


def seed_new(cat: Catalog, lines: list[dict]) -> None:
    client = cat.store.boto3_client()
    by_quarter: dict[str, list[dict]] = {}
    for x in lines[20:]:
        by_quarter.setdefault(index_format.quarter_of(x), []).append({**x, "indexed_at": "2026-01-01T00:00:00.000000Z"})

    def put(item):
        quarter, recs = item
        client.put_object(Bucket=cat.bucket, Key=cat.key(index_format.part_rel(quarter)),
                          Body=index_format.encode(index_format.to_table(recs)))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, by_quarter.items()))
    for x in lines[:20]:
        index_store.add_to_index(cat.store, cat.index_url, x)


def time_epilogs(step, store, n: int, i0: int) -> tuple[float, float]:
    """Median wall time and bytes of ``n`` sequential epilog index steps (new runs each)."""
    rng = random.Random(i0)
    times, sizes = [], []
    for i in range(n):
        line = fresh_line(i0 + i, rng)
        counted, counter = counted_store(store)
        t0 = time.perf_counter()
        step(counted, line)
        times.append(time.perf_counter() - t0)
        sizes.append(counter.bytes)
    return statistics.median(times), statistics.median(sizes)


def time_list(args: list[str]) -> tuple[float, int]:
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        assert cli_main(["runs", "list", *args, "--json"]) == 0
    return time.perf_counter() - t0, len(json.loads(out.getvalue()))


def old_list(cat: Catalog, old: ModuleType, q: query.Query) -> tuple[float, int]:
    """The old reader: GET INDEX.jsonl, list + GET pending, re-check the ETag, parse, filter."""
    t0 = time.perf_counter()
    client = cat.store.boto3_client()
    got = old.get_object(client, cat.bucket, cat.key("INDEX.jsonl"))
    pending = old.read_pending(cat, client)
    old.etag_now(client, cat.bucket, cat.key("INDEX.jsonl"))
    lines = list(old.merge(old.parse_jsonl(got[0]), pending).values())
    found = query.select(lines, q)
    out = json.dumps(found, default=str)
    return time.perf_counter() - t0, len(found) + 0 * len(out)


def bench_size(kind: str, n: int, epilogs: int, repeat: int, old: ModuleType) -> dict:
    lines = site_lines(n)
    since = NOW - timedelta(days=90)
    q_since = query.Query(since=since, where=(query.parse_where(WHERE),), sort=("-submitted_at",))
    q_all = query.Query(where=(query.parse_where(WHERE),), sort=("-submitted_at",))
    row: dict = {"runs": n}
    with s3_server(kind) as server:
        store = server.store()
        old_cat = Catalog(store, "s3://bench-index/old/")
        new_cat = Catalog(store, "s3://bench-index/new/")
        store.boto3_client().create_bucket(Bucket="bench-index")
        t0 = time.perf_counter()
        seed_old(old_cat, old, lines)
        seed_new(new_cat, lines)
        row["seed_s"] = round(time.perf_counter() - t0, 1)
        os.environ.update({"AWS_ENDPOINT_URL": server.endpoint, "SLURM_YOLO_INDEX": new_cat.index_url,
                           "SLURM_YOLO_SITE_CONFIG": "/nonexistent", **dict(server.keys)})
        # Readers first (the old epilogs below compact the 20 pending updates into INDEX.jsonl).
        reps = max(1, repeat if n <= 100_000 else 1)  # 1M: one each (the old design takes ~20 s a read)
        new_since = [time_list(["--where", WHERE, "--since", since.strftime("%Y-%m-%dT%H:%M:%SZ")]) for _ in range(reps)]
        new_all = [time_list(["--where", WHERE]) for _ in range(reps)]
        old_since = [old_list(old_cat, old, q_since) for _ in range(reps)]
        old_all = [old_list(old_cat, old, q_all) for _ in range(reps)]
        assert {c for _, c in new_since} == {c for _, c in old_since}, (new_since, old_since)
        assert {c for _, c in new_all} == {c for _, c in old_all}, (new_all, old_all)
        row["matches_since"], row["matches_all"] = new_since[0][1], new_all[0][1]
        row["new_list_since_s"] = statistics.median(t for t, _ in new_since)
        row["old_list_since_s"] = statistics.median(t for t, _ in old_since)
        row["new_list_all_s"] = statistics.median(t for t, _ in new_all)
        row["old_list_all_s"] = statistics.median(t for t, _ in old_all)
        new_load, old_load = [], []
        for _ in range(reps):  # interleaved: the same load for both
            t0 = time.perf_counter()
            assert len(index.load_records(new_cat)) == n
            new_load.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            client = old_cat.store.boto3_client()
            got = old.merge(old.parse_jsonl(old.get_object(client, old_cat.bucket, old_cat.key("INDEX.jsonl"))[0]),
                            old.read_pending(old_cat, client))
            old_load.append(time.perf_counter() - t0)
            assert len(got) == n
        row["new_load_s"], row["old_load_s"] = statistics.median(new_load), statistics.median(old_load)
        n_old = max(1, epilogs if n <= 100_000 else 2)
        row["old_epilog_s"], row["old_epilog_bytes"] = time_epilogs(
            lambda s, x: old.add_to_index(s, old_cat.index_url, x), store, n_old, 10_000_000)
        row["new_epilog_s"], row["new_epilog_bytes"] = time_epilogs(
            lambda s, x: index_store.index_run(s, new_cat.index_url, x), store, epilogs, 20_000_000)
        for _ in range(100):
            index_store.add_to_index(store, new_cat.index_url, fresh_line(30_000_000 + _, random.Random(_)))
        t0 = time.perf_counter()
        result = index_compact.compact(new_cat, grace_s=0)
        row["compact_100_s"] = time.perf_counter() - t0
        row["compacted_updates"] = result.updates
    print(json.dumps(row), file=sys.stderr)
    return row


INDEX_PARTS = ("lease/", "pending/", "parquet/", "refused/")


def seed_pending(cat: IndexLocation, client, n: int, i0: int) -> list[dict]:
    rng = random.Random(i0)
    recs = [fresh_line(i0 + i, rng) for i in range(n)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda r: index_store.add_to_index(cat.store, cat.index_url, r, client=client), recs))
    return recs


def bench_pending_reads(store, n: int, reps: int) -> dict:
    """Wall time of reading ``n`` pending updates: listing included, each way, interleaved."""
    client = store.boto3_client()
    client.create_bucket(Bucket="bench-pending")
    cat = IndexLocation.at(store, "s3://bench-pending/index/")
    seed_pending(cat, client, n, 40_000_000)

    def pool(width):
        def read():
            keys = [o["Key"] for o in index_store.list_keys(client, cat.bucket, cat.key(index_store.PENDING))]
            if width == 1:
                return index_store.parse_pending(keys, [index_store.get_object(client, cat.bucket, k) for k in keys])
            with ThreadPoolExecutor(width) as ex:
                return index_store.parse_pending(keys, list(ex.map(lambda k: index_store.get_object(client, cat.bucket, k), keys)))
        return read

    ways = {"one GET at a time (boto3)": pool(1), "16 at a time (boto3 threads, before)": pool(16),
            "32 at a time (boto3 threads, now: `read_pending`)": pool(32),
            "one `s5cmd cp 'pending/*' DIR`": lambda: index_store.read_pending_s5cmd(cat)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(reps):
        for name, read in ways.items():
            t0 = time.perf_counter()
            got = read()
            times[name].append(time.perf_counter() - t0)
            assert len(got) == n, (name, len(got))
    row = {name: statistics.median(t) for name, t in times.items()}
    print(json.dumps({"pending_reads": row}), file=sys.stderr)
    return row


def bench_drains(store, clients: list[Requests], nodes: int, lease: bool, runs: int, pending: int, tag: str) -> dict:
    """``nodes`` drains released at once on a fresh index of ``runs`` runs and ``pending`` updates."""
    client = clients[0].client
    cat = IndexLocation.at(store, f"s3://bench-drains/{tag}/")
    seed_new(cat, site_lines(runs + 20))  # 20 of them pending already, the rest in quarters
    fresh = seed_pending(cat, client, pending - 20, 50_000_000)
    expected = {x["run_id"] for x in site_lines(runs + 20)} | {x["run_id"] for x in fresh}
    mine = clients[:nodes]
    for c in mine:
        c.reset()
    start = threading.Barrier(nodes)

    def drain(c):
        start.wait()
        try:
            return index_compact.compact(cat, client=c, grace_s=0, lease=lease)
        except SlurmYoloError as e:  # an overwhelmed store times out: a figure too
            return e

    t0 = time.perf_counter()
    with ThreadPoolExecutor(nodes) as ex:
        results = list(ex.map(drain, mine))
    wall = time.perf_counter() - t0
    # Read back with another client: the drains' counts stay theirs.
    check = store.boto3_client()
    ids: list[str] = []
    for quarter in index_compact.quarters(cat, check):
        ids += index_compact.read_quarter(cat, check, quarter)[0]["run_id"].to_pylist()
    left = len(index_store.list_keys(check, cat.bucket, cat.key(index_store.PENDING)))
    calls = sum((c.by_kind(INDEX_PARTS) for c in mine), collections.Counter())
    failed = [r for r in results if isinstance(r, SlurmYoloError)]
    results = [r for r in results if not isinstance(r, SlurmYoloError)]
    skippers = [c for c, r in zip(mine, results) if r.skipped]
    row = {"nodes": nodes, "lease": lease, "wall_s": round(wall, 2), "requests": sum(c.total for c in mine),
           "bytes": sum(c.bytes for c in mine), "pending_gets": calls.get(("GET", "pending/"), 0),
           "quarter_gets": calls.get(("GET", "parquet/"), 0), "quarter_puts": calls.get(("PUT", "parquet/"), 0),
           "compacted": sum(1 for r in results if r.updates), "skipped": len(skippers),
           "skipper_requests_max": max((c.total for c in skippers), default=0),
           "skipper_requests_mean": round(statistics.mean(c.total for c in skippers), 2) if skippers else 0,
           "lost": len(expected - set(ids)), "twice": len(ids) - len(set(ids)), "left_pending": left,
           "failed": len(failed), "first_error": str(failed[0])[:160] if failed else ""}
    print(json.dumps(row), file=sys.stderr)
    return row


def compaction_markdown(reads: dict, rows: list[dict], pending: int, runs: int, load: tuple[float, ...]) -> str:
    out = []
    if reads:
        out = [f"Pending reads, {pending} updates on SeaweedFS (listing included, median):", "",
               "| how | s | vs one GET at a time |", "|---|---:|---:|"]
        base = reads["one GET at a time (boto3)"]
        out += [f"| {k} | {v:.2f} | {v / base:.2f}× |" for k, v in reads.items()]
    solo = {r["lease"]: r for r in rows if r["nodes"] == 1}
    out += ["", f"Drains at once on an index of {runs:,} runs with {pending:,} pending updates (SeaweedFS; "
            "'vs one': against one drain alone with the lease):", "",
            "| drains | lease | requests | vs one | bytes | vs one | pending GETs | quarter GETs | compacted | "
            "skipper requests (mean/max) | wall s | lost / twice / left | drains failed |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    one = solo.get(True) or solo.get(False) or rows[0]
    for r in rows:
        out.append(f"| {r['nodes']} | {'yes' if r['lease'] else 'no (before)'} | {r['requests']:,} | "
                   f"{r['requests'] / one['requests']:.2f}× | {fmt_b(r['bytes'])} | {r['bytes'] / one['bytes']:.2f}× | "
                   f"{r['pending_gets']:,} | {r['quarter_gets']} | {r['compacted']} | "
                   f"{r['skipper_requests_mean']}/{r['skipper_requests_max']} | {r['wall_s']} | "
                   f"{r['lost']} / {r['twice']} / {r['left_pending']} | {r['failed']} |")
    out += ["", f"1-minute load average: {load[0]:.2f} at start, {load[-1]:.2f} at end "
            f"({os.cpu_count()} cores, shared with other work)."]
    return "\n".join(out)


def main_compaction(args: argparse.Namespace) -> str:
    load0 = os.getloadavg()[0]
    with s3_server("seaweedfs") as server:
        store = server.store()
        reads = bench_pending_reads(store, args.pending, args.repeat) if args.repeat else {}
        most = max(int(n) for n in (args.nodes + "," + args.nodes_without_lease).split(",") if n)
        clients = [RequestLog(store.boto3_client(), wire=True) for _ in range(most)]
        clients[0].client.create_bucket(Bucket="bench-drains")
        rows = []
        for lease, spec in ((True, args.nodes), (False, args.nodes_without_lease)):
            for n in (int(x) for x in spec.split(",") if x):
                rows.append(bench_drains(store, clients, n, lease, args.runs, args.pending,
                                         f"{'lease' if lease else 'nolease'}-{n}"))
    return compaction_markdown(reads, rows, args.pending, args.runs, (load0, os.getloadavg()[0]))


def fmt_s(x: float) -> str:
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def fmt_b(x: float) -> str:
    return f"{x / 1e6:.1f} MB" if x >= 1e6 else f"{x / 1e3:.1f} KB"


def markdown(rows: list[dict], kind: str, load: tuple[float, ...]) -> str:
    head = "| | " + " | ".join(f"{r['runs']:,} runs" for r in rows) + " |\n|---|" + "---|" * len(rows) + "\n"
    table = [
        ("epilog index step, old (median)", "old_epilog_s", fmt_s), ("epilog index step, new (median)", "new_epilog_s", fmt_s),
        ("bytes it moves, old", "old_epilog_bytes", fmt_b), ("bytes it moves, new", "new_epilog_bytes", fmt_b),
        (f"`runs list --where '{WHERE}' --since 90d`, old", "old_list_since_s", fmt_s),
        (f"`runs list --where '{WHERE}' --since 90d`, new", "new_list_since_s", fmt_s),
        ("full scan (no `--since`), old", "old_list_all_s", fmt_s), ("full scan (no `--since`), new", "new_list_all_s", fmt_s),
        ("matches with / without `--since`", None, None),
        ("`load_records` (portal, MLflow bridge), old", "old_load_s", fmt_s),
        ("`load_records` (portal, MLflow bridge), new", "new_load_s", fmt_s),
        ("compaction of 100 new updates, new", "compact_100_s", fmt_s),
    ]
    body = ""
    for label, key, f in table:
        if key is None:
            body += f"| {label} | " + " | ".join(f"{r['matches_since']:,} / {r['matches_all']:,}" for r in rows) + " |\n"
        else:
            body += f"| {label} | " + " | ".join(f(r[key]) for r in rows) + " |\n"
    return (f"Store: {kind} on loopback; 1-minute load average before/after: {load[0]:.2f} / {load[1]:.2f}; "
            f"{os.cpu_count()} CPUs.\n\n" + head + body)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["runs"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, style in (("old_epilog_s", "epilog index step, old", "o-"),
                              ("new_epilog_s", "epilog index step, new", "o--")):
        axes[0].plot(n, [r[key] for r in rows], style, label=label)
    axes[0].axhline(0.1, color="grey", lw=0.8, ls=":", label="goal 0.1 s")
    for key, label, style in (("old_list_since_s", "list --since 90d, old", "s-"),
                              ("new_list_since_s", "list --since 90d, new", "s--"),
                              ("old_list_all_s", "full scan, old", "^-"), ("new_list_all_s", "full scan, new", "^--")):
        axes[1].plot(n, [r[key] for r in rows], style, label=label)
    axes[1].axhline(1, color="grey", lw=0.8, ls=":")
    axes[1].axhline(3, color="grey", lw=0.8, ls=":")
    for ax, title in zip(axes, ("one epilog's index step", "runs list (output included)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("runs in the index")
        ax.set_ylabel("seconds")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--store", default="seaweedfs", choices=["seaweedfs", "moto"])
    ap.add_argument("--epilogs", type=int, default=20, help="epilog index steps timed per size (median)")
    ap.add_argument("--repeat", type=int, default=3, help="reader timings per size (median; 1 at 1M)")
    ap.add_argument("--plot", metavar="PNG")
    ap.add_argument("--markdown", metavar="FILE")
    ap.add_argument("--compaction", action="store_true", help="measure compaction across drains instead (see above)")
    ap.add_argument("--nodes", default="1,10,50,200", help="--compaction: drains at once, with the lease")
    ap.add_argument("--nodes-without-lease", default="1,10,50", help="--compaction: drains at once, without it")
    ap.add_argument("--pending", type=int, default=1000, help="--compaction: pending updates")
    ap.add_argument("--runs", type=int, default=10_000, help="--compaction: runs in the quarters")
    args = ap.parse_args()
    if args.compaction:
        text = main_compaction(args)
        print(text)
        if args.markdown:
            Path(args.markdown).write_text(text)
        return
    old = load_old()
    load0 = os.getloadavg()[0]
    rows = [bench_size(args.store, int(n), args.epilogs, args.repeat, old) for n in args.sizes.split(",")]
    text = markdown(rows, args.store, (load0, os.getloadavg()[0]))
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
