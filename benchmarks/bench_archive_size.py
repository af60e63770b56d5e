"""Benchmark: the epilog's archive time against a bare ``s5cmd cp`` of the same folder, at
1 GB and 10 GB, on SeaweedFS, and a 10 GB run archived through a spool with 1 GB free.

A run folder of random bytes on this machine's disk: ``weights/`` with ``save_period``-style
checkpoints (``epoch*.pt``, ``last.pt``, ``best.pt``, 100–500 MB each) up to the size asked,
300 images of 30–60 KB, ``results.csv``, ``args.yaml`` and ``run.json``. Two ways, interleaved,
``--reps`` each, the median reported:

* **bare s5cmd**: ``s5cmd --json --numworkers W cp FOLDER/* s3://…/`` — the copy limit: no
  checks, no hashing, no metadata;
* **slurm-yolo**: the epilog's own ``archive_job`` (safe walk, sha256 of every byte, small
  files through the spool, large ones straight from the folder as ``/proc/self/fd/N``, the
  commit marker and the index record), ``scontrol`` off.

Then, once: the same archive with the spool on a tmpfs of ``--spool-mb`` (1 GB): the run must
arrive whole and the spool must never have held more than that.

Run: ``/opt/slurm-yolo/venv/bin/python benchmarks/bench_archive_size.py [--sizes-gb 1 10]
[--reps 3] [--markdown FILE]`` as root (tmpfs). Needs ~2× the largest size free on disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slurm_yolo.archive import s5cmd  # noqa: E402
from slurm_yolo.store import Store  # noqa: E402
from slurm_yolo.epilog import archiver  # noqa: E402
from slurm_yolo.site import SiteConfig  # noqa: E402
from slurm_yolo.names import MARKER_PREFIX  # noqa: E402

BUCKET = "bench-archive"
RUN_ID = "20261123_080000_benchrun"


def make_folder(root: Path, gigabytes: float) -> Path:
    run = root / RUN_ID
    (run / "weights").mkdir(parents=True)
    left = int(gigabytes * 1e9)
    chunk = os.urandom(1 << 20)
    i = 0
    while left > 0:
        size = min(left, (100 + 100 * (i % 5)) * 1_000_000)
        name = "last.pt" if i == 0 else "best.pt" if i == 1 else f"epoch{i}.pt"
        with open(run / "weights" / name, "wb") as f:
            for _ in range(size // len(chunk)):
                f.write(chunk[: len(chunk) - i % 7] + bytes([i % 251]) * (i % 7))
            f.write(chunk[: size % len(chunk)])
        left -= size
        i += 1
    for j in range(300):
        (run / ("images" if j % 2 else "val") / f"img{j}.jpg").parent.mkdir(exist_ok=True)
        (run / ("images" if j % 2 else "val") / f"img{j}.jpg").write_bytes(os.urandom(30_000 + 100 * j))
    (run / "results.csv").write_text("epoch,time,metrics/mAP50(B)\n1,1.0,0.5\n")
    (run / "args.yaml").write_text("epochs: 1\n")
    record = {"run_id": RUN_ID, "task": "detect", "project": "bench", "model_name": "m", "status": "COMPLETED",
              "attempts": [{"attempt": 1, "status": "COMPLETED", "signals": []}]}
    (run / "run.json").write_text(json.dumps(record))
    return run


def start_seaweed(folder: Path) -> dict[str, str]:
    port = str(_free_port())
    subprocess.run(["bash", str(REPO / "scripts" / "store.sh"), "start", "seaweedfs", str(folder), port, BUCKET],
                   check=True, capture_output=True, text=True)
    return dict(line.split("=", 1) for line in (folder / "store.env").read_text().splitlines() if "=" in line)


@contextlib.contextmanager
def seaweed(work: Path) -> Iterator[Store]:
    """A fresh SeaweedFS for one copy, its data deleted after: it frees a deleted object's space
    only at its next vacuum, and 10 GB copies would otherwise fill the disk."""
    folder = work / f"seaweedfs-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    try:
        env = start_seaweed(folder)
        yield Store(endpoint_url=env["ENDPOINT"], keys=(("AWS_ACCESS_KEY_ID", env["ACCESS_KEY"]),
                                                        ("AWS_SECRET_ACCESS_KEY", env["SECRET_KEY"])),
                    atomic_conditional_writes=True)
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "store.sh"), "stop", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare(store: Store, run: Path, workers: int) -> float:
    dest = f"s3://{BUCKET}/bare-{uuid.uuid4().hex[:8]}/"
    t0 = time.perf_counter()
    result = s5cmd.run(s5cmd.base_argv(store, workers=workers) + ["cp", f"{run}/*", dest], store, timeout=3600)
    seconds = time.perf_counter() - t0
    if not result.ok:
        raise RuntimeError(result.summary())
    _delete(store, dest)
    return seconds


def epilog(store: Store, run: Path, spool: Path, workers: int) -> tuple[float, dict]:
    tag = uuid.uuid4().hex[:8]
    site = SiteConfig(path="(bench)", store=store, allowed_prefix=f"s3://{BUCKET}/{tag}/{{user}}/",
                      index_url=f"s3://{BUCKET}/{tag}/index/", spool_dir=str(spool), log_file="/dev/null",
                      s5cmd_workers=workers, scontrol=False, claim_dir=str(spool.parent / f"claims-{tag}"))
    env = {"SLURM_JOB_ID": str(int(time.time() * 1000) % 10**9), "SLURM_JOB_UID": str(os.getuid()),
           "SLURM_JOB_GID": str(os.getgid()), "SLURM_JOB_COMMENT": MARKER_PREFIX + str(run),
           "SLURM_JOB_EXIT_CODE2": "0:0"}
    t0 = time.perf_counter()
    result = archiver.archive_job(env, site, deadline=time.monotonic() + 3600, by="bench")
    seconds = time.perf_counter() - t0
    if not result.shipped or not result.complete:
        raise RuntimeError(f"not archived: {result}")
    _delete(store, f"s3://{BUCKET}/{tag}/")
    return seconds, result.to_dict()


def _delete(store: Store, prefix: str) -> None:
    s5cmd.run(s5cmd.base_argv(store) + ["rm", prefix + "*"], store, timeout=600)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--spool-mb", type=int, default=1000)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-archive-", dir="/var/tmp"))
    lines = []
    try:
        lines += [f"SeaweedFS on loopback; {os.cpu_count()} CPUs; s5cmd --numworkers {args.workers}; "
                  f"median of {args.reps}, interleaved", "",
                  "| run folder | bare `s5cmd cp` | slurm-yolo epilog | ratio |", "|---|---|---|---|"]
        for gb in args.sizes_gb:
            run = make_folder(work / f"runs-{gb:g}", gb)
            times: dict[str, list[float]] = {"bare": [], "epilog": []}
            for _ in range(args.reps):
                with seaweed(work) as store:
                    times["bare"].append(bare(store, run, args.workers))
                spool = work / f"spool-{uuid.uuid4().hex[:6]}"
                with seaweed(work) as store:
                    times["epilog"].append(epilog(store, run, spool, args.workers)[0])
                shutil.rmtree(spool, ignore_errors=True)
            b, e = statistics.median(times["bare"]), statistics.median(times["epilog"])
            size = sum(f.stat().st_size for f in run.rglob("*") if f.is_file())
            lines.append(f"| {size / 1e9:.2f} GB, {sum(1 for f in run.rglob('*') if f.is_file())} files | "
                         f"{b:.1f} s ({', '.join(f'{x:.1f}' for x in times['bare'])}) | "
                         f"{e:.1f} s ({', '.join(f'{x:.1f}' for x in times['epilog'])}) | {e / b:.2f}× |")
            print(lines[-1], flush=True)
            if gb == max(args.sizes_gb) and os.geteuid() == 0:
                spool = work / "small-spool"
                spool.mkdir()
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.spool_mb}m", "tmpfs", str(spool)],
                               check=True)
                try:
                    with seaweed(work) as store:
                        seconds, summary = epilog(store, run, spool / "spool", args.workers)
                    lines += ["", f"The {size / 1e9:.1f} GB run with the spool on a {args.spool_mb} MB tmpfs: "
                                  f"archived whole in {seconds:.1f} s ({summary['files']} files, shipped "
                                  f"{summary['shipped']})."]
                    print(lines[-1], flush=True)
                finally:
                    subprocess.run(["umount", str(spool)], check=True)
            shutil.rmtree(run.parent, ignore_errors=True)
        lines.append(f"\n1-minute load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
