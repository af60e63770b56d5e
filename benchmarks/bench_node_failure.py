"""Benchmark: seconds from a node's death to its run's commit marker in the store.

Needs the multi-node dev cluster (``scripts/dev-cluster.sh up --nodes 3``). Each trial
submits a real training run to the ``multi`` partition (requeue off, so the job ends
``NODE_FAIL``), waits for two epochs, then kills the node the run is on the hard way
(``dev-cluster.sh crash``: SIGKILL to slurmd, slurmstepd and the job at once) and times:

* **declared dead**: until ``sinfo`` shows the node DOWN (Slurm's own detection: the
  controller pings nodes and gives up ``SlurmdTimeout`` after the last answer);
* **archived**: until the run's ``run.json`` (the commit marker, written last) is in the
  store with end state ``NODE_FAIL``, archived by ``EpilogSlurmctld`` from the shared
  filesystem;
* **archiving itself**: the difference, i.e. what slurm-yolo adds to Slurm's detection.

The node is revived after each trial. Run:
``/opt/slurm-yolo/venv/bin/python benchmarks/bench_node_failure.py [--trials 3] [--markdown FILE]``.
About 1 minute per trial on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import yaml

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "scripts" / "dev-cluster.sh"
BIN = Path(sys.executable).parent
from _services import poll, slurm_setting  # noqa: E402 - benchmarks/ is on sys.path when run as a script


def cluster_env() -> dict[str, str]:
    out = subprocess.run(["bash", "-c", f'eval "$(bash {DEV} env)" && env -0'], capture_output=True, text=True,
                         check=True)
    env = dict(x.split("=", 1) for x in out.stdout.split("\0") if "=" in x)
    env["PATH"] = f"{BIN}:{env['PATH']}"
    return env


def trial(env: dict[str, str], s3, dataset: str, runs_root: Path) -> dict[str, float]:
    cfg = {"run": {"task": "detect", "project": "bench-nodefail", "model_name": "yolov8n"},
           "train": {"model": "yolov8n.yaml", "data": dataset, "epochs": 60, "imgsz": 64, "batch": 8, "workers": 0,
                     "plots": False, "amp": False},
           "slurm": {"partition": "multi", "gpus": 0, "cpus_per_task": 1, "mem": "2500M", "time": "00:10:00"},
           "archive": {"url": "s3://slurm-yolo/runs/{user}/bench"}, "runs_root": str(runs_root)}
    path = runs_root / f"cfg-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = json.loads(subprocess.run(["slurm-yolo", "submit", str(path), "--json"], capture_output=True, text=True,
                                    env=env, check=True).stdout.strip().splitlines()[-1])
    job = out["job_id"]
    subprocess.run(["scontrol", "update", f"jobid={job}", "requeue=0"], env=env, check=True)
    results = Path(out["run_dir"]) / "results.csv"
    poll("two epochs", lambda: results.exists() and len(results.read_text().splitlines()) >= 3, 300, 1.0)
    node = subprocess.run(["squeue", "-h", "-j", job, "-o", "%N"], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()
    bucket, _, key = out["archive_url"][len("s3://"):].partition("/")

    def archived():
        try:
            r = json.loads(s3.get_object(Bucket=bucket, Key=key + "run.json")["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None
        return r.get("end_state") == "NODE_FAIL"

    subprocess.run(["bash", str(DEV), "crash", node], env=env, check=True, capture_output=True)
    t0 = time.monotonic()
    down = None
    try:
        def state():
            nonlocal down
            st = subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True,
                                env=env).stdout.strip()
            if down is None and st.startswith("down"):
                down = time.monotonic() - t0
            return archived()

        poll("the NODE_FAIL commit marker", state, 300, 0.2)
        done = time.monotonic() - t0
    finally:
        subprocess.run(["bash", str(DEV), "revive", node], env=env, check=True, capture_output=True)
    return {"declared_dead_s": down if down is not None else float("nan"), "archived_s": done, "node": node}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    env = cluster_env()
    if int(env.get("SLURM_YOLO_NODES") or 0) < 2:
        print("needs the multi-node dev cluster: scripts/dev-cluster.sh up --nodes 3", file=sys.stderr)
        return 2
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    state = Path(env["SLURM_YOLO_DEV_STATE"])
    dataset = state / "datasets" / "pcb-test" / "data.yaml"
    if not dataset.exists():
        subprocess.run([str(BIN / "python"), "-m", "slurm_yolo.synthetic", str(dataset.parent), "--train", "32",
                        "--val", "8", "--size", "64"], check=True, env=env)
        subprocess.run(["chmod", "-R", "a+rX", str(dataset.parent.parent)], check=True)
    runs_root = state / "runs" / f"bench-{uuid.uuid4().hex[:6]}"
    runs_root.mkdir(mode=0o1777, parents=True)
    timeout = slurm_setting(env, "SlurmdTimeout")
    rows = []
    for i in range(args.trials):
        r = trial(env, s3, str(dataset), runs_root)
        rows.append(r)
        print(f"trial {i + 1}: {r['node']} declared DOWN after {r['declared_dead_s']:.1f} s, "
              f"run archived as NODE_FAIL after {r['archived_s']:.1f} s", flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in ("declared_dead_s", "archived_s")}
    load = os.getloadavg()[0]
    lines = [f"SlurmdTimeout={timeout}; {args.trials} trials; "
             f"{os.cpu_count()} CPUs, 1-min load {load:.1f}", "",
             "| from the node's death (SIGKILL) to | median | trials |", "|---|---|---|",
             f"| Slurm declares the node DOWN | {med['declared_dead_s']:.1f} s | "
             + ", ".join(f"{r['declared_dead_s']:.1f}" for r in rows) + " |",
             f"| the run's commit marker (`run.json`, `NODE_FAIL`) is in the store | {med['archived_s']:.1f} s | "
             + ", ".join(f"{r['archived_s']:.1f}" for r in rows) + " |",
             f"| of which slurm-yolo (archived − declared) | {med['archived_s'] - med['declared_dead_s']:.1f} s | |"]
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
