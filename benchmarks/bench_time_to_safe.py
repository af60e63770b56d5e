"""Benchmark: from ``scancel`` of a training run whose checkpoints were synced to the run being safe.

Needs the dev cluster (``scripts/dev-cluster.sh up``) and root (the job runs as root, so the
benchmark may pad its run folder). Each trial submits a real training run to the ``debug``
partition with ``archive.sync_every`` set, waits for its first epoch, pads its ``weights/``
folder with big checkpoint-like files (``--pad-mb``, random bytes, as ``save_period`` would
leave), waits until the in-training sync has put them in the store, then runs ``scancel`` and
times, from the moment ``scancel`` was started:

* **SIGTERM seen**: the job's own log line for the signal (``[slurm-yolo] received SIGTERM``);
* **stop raised**: the job's ``ending the attempt on SIGTERM at`` line (where it logs one);
* **batch script / training step over**: slurmd's ``[JOB.batch]`` and ``[JOB.0] done with job``
  (the srun step that runs the training process: all its processes gone);
* **epilog start / end**: the epilog's ``epilog done in X s`` line (its end, minus X);
* **node free**: the job leaves ``COMPLETING`` (its epilog finished; the node is free for the
  next job). This is the issue's "node going idle": other jobs on the shared dev node keep the
  node itself busy, so the job's own state is what is timed;
* **safe**: the run's ``run.json`` in the store carries an end state (the commit marker, written
  by the epilog after everything else).

It also counts what the job end sent: the objects under the run's prefix that are new or
changed (ETag or Last-Modified) between a listing taken just before ``scancel`` and one after
"safe", and their bytes. And, for the denominator of the issue's target, a **bare copy**: one
``s5cmd cp`` of the same run folder (same ``--numworkers`` as the site config) to a fresh prefix
of the same store, after the trial; that prefix is deleted afterwards.

Run: ``/opt/slurm-yolo/venv/bin/python benchmarks/bench_time_to_safe.py [--trials 3]
[--pad-mb 800] [--sync-every 10s] [--workers 2] [--markdown FILE]``. About 1.5 minutes per trial
on 2 cores. It holds the cluster tests' lock shared, as a cluster test does.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import boto3
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEV = REPO / "scripts" / "dev-cluster.sh"
from _services import poll, slurm_setting  # noqa: E402 - benchmarks/ is on sys.path when run as a script
BIN = Path(sys.executable).parent
LOCK = Path("/tmp/slurm-yolo-cluster-tests.lock")  # tests/cluster/conftest.py's
PAD_NAME = "pad-epoch{:03d}.pt"


def cluster_env() -> dict[str, str]:
    out = subprocess.run(["bash", "-c", f'eval "$(bash {DEV} env)" && env -0'], capture_output=True, text=True,
                         check=True)
    env = dict(x.split("=", 1) for x in out.stdout.split("\0") if "=" in x)
    env["PATH"] = f"{BIN}:{env['PATH']}"
    return env


@contextlib.contextmanager
def shared_lock() -> Iterator[None]:
    with open(LOCK, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def job_state(env: dict[str, str], job: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, env=env).stdout
    m = re.search(r"JobState=(\S+)", out)
    state = m.group(1) if m else ""
    return state + ("+COMPLETING" if "COMPLETING" not in state and re.search(r"\bFlags=\S*\bCOMPLETING", out)
                    else "")


def split(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


def listing(s3, url: str) -> dict[str, tuple[str, float, int]]:
    """key → (ETag, Last-Modified epoch seconds, size) under ``url``."""
    bucket, prefix = split(url)
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            found[o["Key"]] = (o["ETag"], o["LastModified"].timestamp(), o["Size"])
    return found


def delete_prefix(s3, url: str) -> None:
    bucket, prefix = split(url)
    keys = [{"Key": k} for k in listing(s3, url)]
    for i in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000]})


def committed(s3, archive_url: str) -> bool:
    bucket, key = split(archive_url)
    try:
        record = json.loads(s3.get_object(Bucket=bucket, Key=key + "run.json")["Body"].read())
    except s3.exceptions.NoSuchKey:
        return False
    return bool(record.get("end_state"))


def pad(run_dir: Path, total_mb: int, files: int) -> int:
    """Checkpoint-sized random files in ``weights/``; returns the bytes written."""
    each = total_mb * 1_000_000 // files
    block = os.urandom(1 << 20)
    for i in range(files):
        path = run_dir / "weights" / PAD_NAME.format(i)
        tmp = path.with_name(f".{path.name}.tmp")  # excluded from the sync until it is whole
        with open(tmp, "wb") as f:
            left = each
            while left:
                n = min(left, len(block))
                f.write(block[:n] if i % 2 else os.urandom(n))  # not all alike: no store may dedupe them
                left -= n
        os.replace(tmp, path)
    return each * files


# ---------------------------------------------------------------- log parsing

def _ts(text: str, fmt: str) -> float:
    return datetime.strptime(text, fmt).timestamp()


def signal_seen(run_dir: Path, after: float) -> float | None:
    """When the job first logged SIGTERM after ``after``: its own line (``received SIGTERM at``,
    with ms where it prints them), else submitit's (``Bypassing signal SIGTERM``, ms)."""
    found = []
    for log in sorted((run_dir / "slurm").glob("*_log.out")) + [run_dir / "train.log"]:
        for line in log.read_text(errors="replace").splitlines():
            m = re.search(r"received SIGTERM at (\S+)", line)
            if m:
                with contextlib.suppress(ValueError):  # a stamp in whole seconds only where nothing finer is
                    t = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                    found.append((0 if "." in m.group(1) else 1, t))
            m = re.match(r"submitit \w+ \((\S+ \S+)\) - Bypassing signal SIGTERM", line)
            if m:
                found.append((0, _ts(m.group(1), "%Y-%m-%d %H:%M:%S,%f")))
    found = [f for f in found if f[1] >= after - 1]
    return min(found)[1] if found else None


def stop_raised(run_dir: Path, after: float) -> float | None:
    """When the job raised its stop (``ending the attempt on SIGTERM at …``), if it logs it."""
    for log in sorted((run_dir / "slurm").glob("*_log.out")):
        for line in log.read_text(errors="replace").splitlines():
            m = re.search(r"ending the attempt on SIGTERM at (\S+)", line)
            if m:
                t = datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
                if t >= after - 1:
                    return t
    return None


def step_done(env: dict[str, str], job: str) -> float | None:
    """slurmd's ``[JOB.batch] done with job`` (local time, ms)."""
    log = Path(env["SLURM_YOLO_DEV_STATE"]) / "log" / "slurmd-vm.log"
    for line in reversed(log.read_text(errors="replace").splitlines()[-20000:]):
        m = re.match(rf"\[(\S+)\] \[{job}\.batch\] done with job", line)
        if m:
            return _ts(m.group(1), "%Y-%m-%dT%H:%M:%S.%f")
    return None


def task_done(env: dict[str, str], job: str) -> float:
    """slurmd's ``[JOB.0] done with job``: the srun step that ran the training process."""
    log = Path(env["SLURM_YOLO_DEV_STATE"]) / "log" / "slurmd-vm.log"
    for line in reversed(log.read_text(errors="replace").splitlines()[-20000:]):
        m = re.match(rf"\[(\S+)\] \[{job}\.0\] done with job", line)
        if m:
            return _ts(m.group(1), "%Y-%m-%dT%H:%M:%S.%f")
    return float("nan")


def epilog_span(env: dict[str, str], job: str) -> tuple[float, float] | None:
    """(start, end) of the node epilog for ``job``, from its ``epilog done in X s`` line."""
    log = Path(env["SLURM_YOLO_DEV_STATE"]) / "log" / "epilog.log"
    for line in reversed(log.read_text(errors="replace").splitlines()[-20000:]):
        m = re.match(rf"(\S+ \S+) INFO job {job}: epilog done in ([\d.]+) s", line)
        if m:
            end = _ts(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            return end - float(m.group(2)), end
    return None


# ---------------------------------------------------------------- one trial

def trial(env: dict[str, str], s3, args: argparse.Namespace, dataset: Path, runs_root: Path,
          workers: int) -> dict[str, Any]:
    cfg = {"run": {"task": "detect", "project": "bench-safe", "model_name": "yolov8n"},
           "train": {"model": "yolov8n.yaml", "data": str(dataset), "epochs": 500, "imgsz": 64, "batch": 8,
                     "workers": args.workers, "plots": False, "amp": False},
           "slurm": {"partition": "debug", "gpus": 0, "cpus_per_task": 2, "mem": "3G", "time": "00:20:00"},
           "archive": {"url": "s3://slurm-yolo/runs/{user}/bench", "sync_every": args.sync_every},
           "runs_root": str(runs_root)}
    path = runs_root / f"cfg-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = json.loads(subprocess.run(["slurm-yolo", "submit", str(path), "--json"], capture_output=True, text=True,
                                    env=env, check=True).stdout.strip().splitlines()[-1])
    job, run_dir, url = out["job_id"], Path(out["run_dir"]), out["archive_url"]
    try:
        results = run_dir / "results.csv"
        poll("the first epoch", lambda: results.exists() and len(results.read_text().splitlines()) >= 2, 600, 1.0)
        padded = pad(run_dir, args.pad_mb, args.pad_files)
        sizes = {f"weights/{PAD_NAME.format(i)}": padded // args.pad_files for i in range(args.pad_files)}
        _, prefix = split(url)

        def synced() -> bool:
            held = listing(s3, url)
            return all(held.get(prefix + rel, (None, 0, -1))[2] == size for rel, size in sizes.items())

        poll("the padding in the store (the in-training sync)", synced, 300, 1.0)
        before = listing(s3, url)
        t0 = time.time()
        subprocess.run(["scancel", job], env=env, check=True)
        poll("the job to leave COMPLETING", lambda: job_state(env, job) not in ("", "RUNNING")
             and "COMPLETING" not in job_state(env, job), 300, 0.05)
        t_free = time.time()
        poll("the commit marker", lambda: committed(s3, url), 300, 0.1)
        t_safe = time.time()
    except BaseException:
        subprocess.run(["scancel", job], env=env)
        raise
    after = listing(s3, url)
    changed = {k: v for k, v in after.items() if before.get(k) is None or before[k][:2] != v[:2]}
    epilog = poll("the epilog's log line", lambda: epilog_span(env, job), 30, 0.5)
    step = poll("slurmd's step end", lambda: step_done(env, job), 30, 0.5)
    sig = signal_seen(run_dir, t0)
    stop = stop_raised(run_dir, t0)
    folder_bytes = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    bare = bare_copy(env, run_dir, url.rstrip("/") + "-bare/", workers)
    delete_prefix(s3, url.rstrip("/") + "-bare/")
    return {"job": job, "run_dir": str(run_dir), "folder_mb": folder_bytes / 1e6,
            "sigterm_s": (sig - t0) if sig else float("nan"), "stop_s": (stop - t0) if stop else float("nan"),
            "step_done_s": step - t0, "task_done_s": task_done(env, job) - t0,
            "epilog_start_s": epilog[0] - t0, "epilog_s": epilog[1] - epilog[0], "free_s": t_free - t0,
            "safe_s": t_safe - t0, "sent_objects": len(changed), "sent_mb": sum(v[2] for v in changed.values()) / 1e6,
            "bare_s": bare, "state": job_state(env, job)}


def bare_copy(env: dict[str, str], run_dir: Path, dest: str, workers: int) -> float:
    """Seconds for one ``s5cmd cp`` of the run folder to ``dest`` (the limit of store and disk)."""
    from slurm_yolo.archive.s5cmd import binary

    argv = [binary(), "--json", "--endpoint-url", env["S3_ENDPOINT_URL"], "--numworkers", str(workers),
            "cp", f"{run_dir}/*", dest]
    t = time.monotonic()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.monotonic() - t


# ---------------------------------------------------------------- report

COLUMNS = (("sigterm_s", "SIGTERM seen by the job"), ("stop_s", "the job stops training (its stop raised)"),
           ("step_done_s", "batch script over (slurmd)"), ("task_done_s", "the training task's step over (slurmd)"),
           ("epilog_start_s", "epilog starts"), ("free_s", "job leaves COMPLETING (node free)"),
           ("safe_s", "commit marker in the store (safe)"))


def report(rows: list[dict[str, Any]], args: argparse.Namespace, env: dict[str, str], load: tuple[float, float],
           commit: str) -> str:
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if isinstance(rows[0][k], (int, float))}
    lines = [f"{len(rows)} trials; {med['folder_mb']:.0f} MB run folder ({args.pad_mb} MB of padded checkpoints "
             f"in {args.pad_files} files); sync_every {args.sync_every}; data-loader workers {args.workers}; "
             f"KillWait={slurm_setting(env, 'KillWait')}; slurm-yolo at {commit}; {os.cpu_count()} CPUs, 1-min load "
             f"{load[0]:.1f} before / {load[1]:.1f} after", "",
             "| from `scancel` to | median, s | trials, s |", "|---|---:|---|"]
    for key, label in COLUMNS:
        lines.append(f"| {label} | {med[key]:.2f} | " + ", ".join(f"{r[key]:.2f}" for r in rows) + " |")
    lines += ["", "| | median | trials |", "|---|---:|---|",
              f"| epilog's own time, s | {med['epilog_s']:.2f} | " + ", ".join(f"{r['epilog_s']:.2f}" for r in rows)
              + " |",
              f"| sent at job end (new or changed objects), MB | {med['sent_mb']:.1f} | "
              + ", ".join(f"{r['sent_mb']:.1f} ({r['sent_objects']})" for r in rows) + " |",
              f"| bare `s5cmd cp` of the folder, s | {med['bare_s']:.2f} | "
              + ", ".join(f"{r['bare_s']:.2f}" for r in rows) + " |",
              f"| **scancel → node free / bare copy** | **{med['free_s'] / med['bare_s']:.2f}×** | "
              + ", ".join(f"{r['free_s'] / r['bare_s']:.2f}" for r in rows) + " |",
              f"| scancel → safe / bare copy | {med['safe_s'] / med['bare_s']:.2f}× | "
              + ", ".join(f"{r['safe_s'] / r['bare_s']:.2f}" for r in rows) + " |",
              f"| job end states | | {', '.join(r['state'] for r in rows)} |"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--pad-mb", type=int, default=800)
    ap.add_argument("--pad-files", type=int, default=8)
    ap.add_argument("--sync-every", default="10s")
    ap.add_argument("--workers", type=int, default=2, help="Ultralytics data-loader workers of the job")
    ap.add_argument("--markdown", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the run folders (the archives are always kept)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: the benchmark pads the job's run folder", file=sys.stderr)
        return 2
    env = cluster_env()
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    state = Path(env["SLURM_YOLO_DEV_STATE"])
    site = yaml.safe_load(Path(env["SLURM_YOLO_SITE_CONFIG"]).read_text())
    workers = int(site.get("s5cmd_workers") or 64)
    dataset = state / "datasets" / "pcb-test" / "data.yaml"
    if not dataset.exists():
        subprocess.run([str(BIN / "python"), "-m", "slurm_yolo.synthetic", str(dataset.parent), "--train", "32",
                        "--val", "8", "--size", "64"], check=True, env=env)
        subprocess.run(["chmod", "-R", "a+rX", str(dataset.parent.parent)], check=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    runs_root = state / "runs" / f"bench-safe-{uuid.uuid4().hex[:6]}"
    runs_root.mkdir(mode=0o1777, parents=True)
    load0 = os.getloadavg()[0]
    rows = []
    try:
        with shared_lock():
            for i in range(args.trials):
                r = trial(env, s3, args, dataset, runs_root, workers)
                rows.append(r)
                print(f"trial {i + 1}: job {r['job']} " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else
                                                                  f"{k} {v}" for k, v in r.items()
                                                                  if k not in ("job", "run_dir")),
                      file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(runs_root, ignore_errors=True)
    if not rows:
        return 1
    text = report(rows, args, env, (load0, os.getloadavg()[0]), commit)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
