"""``slurm-yolo submit|sweep|status``: the launcher's commands (thin: parse, plan, submit, print).

``submit`` and ``sweep`` make one :func:`~slurm_yolo.launcher.submit.plan` and either show it
(``--dry-run``, once ``sbatch --test-only`` accepted its script) or carry it out: the same
checks either way. What runs on the node comes
from the caller (``args.job``, set by ``slurm_yolo.cli``, which joins the launcher and the job).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from slurm_yolo import record as rec
from slurm_yolo.config import load_config
from slurm_yolo.errors import RunFailed, RunNotFound, SlurmYoloError
from slurm_yolo.launcher import submit as launcher
from slurm_yolo.launcher.watch import wait_for
from slurm_yolo.output import console, emit_json, print_record
from slurm_yolo.runfolder import RUN_JSON, TRAIN_LOG


def _add_common_submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (sections run/train/slurm/archive)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=50 (repeatable; values are YAML)")
    p.add_argument("--executor", choices=list(launcher.EXECUTORS), default="slurm",
                   help="slurm: sbatch through submitit (default); local: run here without Slurm")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument("--dry-run", action="store_true",
                   help="run every check, ask Slurm (sbatch --test-only) and print the batch script; "
                        "create and submit nothing")


def add_commands(sub: Any) -> None:
    """Register ``submit``, ``sweep`` and ``status`` on the ``slurm-yolo`` subparsers."""
    p = sub.add_parser("submit", help="submit one training run",
                       description="Create a run folder with run.json and submit one training job.")
    _add_common_submit(p)
    p.add_argument("--run-id", help="use this run ID (letters, digits, . _ -) instead of a generated one")
    p.add_argument("--wait", action="store_true",
                   help="follow the job (state, epoch, mAP) until it ends; exit 3 if it did not complete")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("sweep", help="submit a grid of runs as one Slurm job array",
                       description="Submit one job array: one run (own run ID and run.json) per grid point.")
    _add_common_submit(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", required=True,
                   help="a swept key and its values, e.g. --grid train.lr0=0.01,0.001 (repeatable: cartesian product)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("status", help="show a run's record",
                       description="Show run.json of a run, by run folder or by run ID under --runs-root.")
    p.add_argument("run", metavar="RUN_ID_OR_DIR")
    p.add_argument("--runs-root", default=None,
                   help="where run folders are (default: look in $SLURM_YOLO_RUNS, then ./runs)")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(func=cmd_status)


def _say_mode(p: launcher.SubmitPlan) -> None:
    """One line on stderr when no slurm-yolo epilog archives the runs (user mode)."""
    line = p.mode.line() if p.mode is not None else None
    if line:
        print(f"slurm-yolo: {line}", file=sys.stderr, flush=True)


def _show_dry_run(p: launcher.SubmitPlan, as_json: bool) -> int:
    says = launcher.ask_slurm(p)  # refuses what sbatch would refuse, with the same error line
    _say_mode(p)
    if as_json:
        emit_json({**p.to_dict(), "slurm_says": says})
        return 0
    print(p.script)
    if p.executor == "slurm":
        print(f"# sbatch --test-only: {says}" if says else "# Slurm not asked (no sbatch or Slurm config here)",
              file=sys.stderr)
    print(f"# dry run: {p.describe()}; nothing was submitted", file=sys.stderr)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    p = launcher.plan(config, args.executor, args.run_id)
    if args.dry_run:
        return _show_dry_run(p, args.json)
    (handle,) = launcher.execute(p, args.job())
    _say_mode(p)
    if not args.json:
        print(f"run       {handle.run_id}\njob       {handle.job_id} ({handle.executor})\n"
              f"folder    {handle.run_dir}\narchive   {handle.archive_url}", flush=True)
    if not args.wait:
        if args.json:
            emit_json(handle.to_dict())
        return 0
    state = _wait(handle.run_dir, handle.job_id, handle.executor, quiet=args.json)
    if args.json:
        emit_json({**handle.to_dict(), "end_state": state})
    if state != "COMPLETED":
        raise RunFailed(f"run {handle.run_id} ended {state}; see {handle.run_dir}/{TRAIN_LOG}")
    return 0


def _wait(run_dir: str, job_id: str, executor: str, quiet: bool) -> str:
    if quiet:
        return wait_for(run_dir, job_id, executor=executor)
    err = console(stderr=True)
    with err.status("submitted") as status:
        def show(p) -> None:
            status.update(f"job {job_id}: {p.line()}")

        state = wait_for(run_dir, job_id, executor=executor, on_progress=show)
    err.print(f"job {job_id}: {state}")
    return state


def cmd_sweep(args: argparse.Namespace) -> int:
    p = launcher.plan_sweep(args.config, launcher.parse_grid(args.grid), base_overrides=args.overrides,
                            executor=args.executor)
    if args.dry_run:
        return _show_dry_run(p, args.json)
    handles = launcher.execute(p, args.job())
    _say_mode(p)
    if args.json:
        emit_json({"sweep_id": handles[0].sweep_id, "runs": [h.to_dict() for h in handles]})
    else:
        print(f"sweep {handles[0].sweep_id}: {len(handles)} runs in job array {handles[0].job_id.split('_')[0]}")
        for h in handles:
            print(f"  [{h.array_index}] {h.run_id}  job {h.job_id}  {h.run_dir}")
    return 0


def find_run_dir(run: str, runs_root: str | None) -> Path:
    """A run folder from a path, or a run ID under ``runs_root`` (else $SLURM_YOLO_RUNS, then ./runs)."""
    roots = [runs_root] if runs_root else [r for r in (os.environ.get("SLURM_YOLO_RUNS"), "./runs") if r]
    for candidate in [Path(run)] + [Path(root) / run for root in roots]:
        if (candidate / RUN_JSON).is_file():
            return candidate
    raise RunNotFound(f"no run folder for {run!r} (looked in {', '.join(roots)}); pass the run folder or --runs-root")


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = find_run_dir(args.run, args.runs_root)
    try:
        record = rec.read_record(run_dir)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not an object
        raise SlurmYoloError(f"{run_dir}/{RUN_JSON} cannot be read ({' '.join(str(e).split())[:200]}); "
                             "the archived copy may be intact: try `slurm-yolo runs show`") from e
    if args.json:
        emit_json(record)
        return 0
    print_record(record, run_dir)
    return 0
