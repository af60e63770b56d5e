"""``slurm-yolo``: the command line. Thin: parse argv, call one function, print, return a code.

Every user-fixable problem is a :class:`~slurm_yolo.errors.SlurmYoloError`: one line on
stderr (``slurm-yolo: error: ...``) and its exit code (2 for bad input, 3 for a run that
did not complete, 1 otherwise).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from slurm_yolo import record as rec
from slurm_yolo.catalog import cli as catalog_cli
from slurm_yolo.config import load_config
from slurm_yolo.epilog import cli as epilog_cli
from slurm_yolo.errors import ConfigError, RunFailed, RunNotFound, SlurmYoloError
# TrainJob, not torch: the job imports torch and ultralytics only when it runs on the node.
from slurm_yolo.job.train import TrainJob
from slurm_yolo.launcher import submit as launcher
from slurm_yolo.launcher.watch import wait_for
from slurm_yolo.output import console, emit_json, print_record
from slurm_yolo.report import cli as report_cli

DESCRIPTION = """\
Launch Ultralytics YOLO training on Slurm with run IDs; every run is archived to S3 by the
node epilog however it ends. Typical use:

  slurm-yolo submit configs/pcb.yaml --set train.epochs=50 --wait
  slurm-yolo sweep configs/pcb.yaml --grid train.lr0=0.01,0.001 --grid train.batch=8,16
  slurm-yolo status 20261122_120000_ab12cd34
"""


def _add_common_submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (sections run/train/slurm/archive)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=50 (repeatable; values are YAML)")
    p.add_argument("--executor", choices=["slurm", "local"], default="slurm",
                   help="slurm: sbatch through submitit (default); local: run here without Slurm")
    p.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
    p.add_argument("--dry-run", action="store_true", help="print the batch script; create and submit nothing")


class _Version(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked (start-up time)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from importlib import metadata  # stdlib

        try:
            version = metadata.version("slurm-yolo")
        except metadata.PackageNotFoundError:
            version = "(not installed: running from a source tree)"
        print(f"slurm-yolo {version}")  # on stdout, as argparse's own version action does
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``slurm-yolo`` argument parser, with the epilog's and the catalog's commands."""
    parser = argparse.ArgumentParser(prog="slurm-yolo", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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

    _add_extension_commands(sub)
    return parser


def _add_extension_commands(sub) -> None:
    """Commands implemented in the epilog, catalog and report packages register themselves here."""
    epilog_cli.add_commands(sub)
    catalog_cli.add_commands(sub)
    # The catalog finds the run, the launcher submits it: joined here, the layer above both.
    sub.choices["reproduce"].set_defaults(submit=submit_training)
    report_cli.add_commands(sub)


def training_job():
    """The job the launcher submits: the CLI (the top layer) joins the launcher and the job."""
    return TrainJob()


def submit_training(config, **kwargs):
    """The launcher's submit with the training job (what ``reproduce`` resubmits with)."""
    return launcher.submit(config, job=training_job(), **kwargs)


def cmd_submit(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if args.dry_run:
        result = launcher.dry_run(config, run_id=args.run_id)
        return _show_dry_run(result, args.json, f"would create {result['run_dir']}")
    handle = launcher.submit(config, job=training_job(), run_id=args.run_id, executor=args.executor)
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
        raise RunFailed(f"run {handle.run_id} ended {state}; see {handle.run_dir}/train.log")
    return 0


def _show_dry_run(result: dict[str, Any], as_json: bool, what: str) -> int:
    if as_json:
        emit_json(result)
    else:
        print(result["script"])
        print(f"# dry run: {what}; nothing was submitted", file=sys.stderr)
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


    grid: dict[str, list[Any]] = {}
    for item in args.grid:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. --grid train.lr0=0.01,0.001")
        grid[key] = [yaml.safe_load(v) for v in values.split(",")]
    if args.dry_run:
        combos = launcher.expand_grid(grid)
        for combo in combos:  # validate every element, exactly as a real sweep would
            load_config(args.config, args.overrides + launcher.override_strings(combo))
        result = launcher.dry_run(load_config(args.config, args.overrides), array_size=len(combos))
        result["elements"] = combos
        return _show_dry_run(result, args.json, f"{len(combos)} runs in one array")
    handles = launcher.sweep(args.config, grid, base_overrides=args.overrides, executor=args.executor,
                             job=training_job())
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
        if (candidate / "run.json").is_file():
            return candidate
    raise RunNotFound(f"no run folder for {run!r} (looked in {', '.join(roots)}); pass the run folder or --runs-root")


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = find_run_dir(args.run, args.runs_root)
    try:
        record = rec.read_record(run_dir)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not an object
        raise SlurmYoloError(f"{run_dir}/run.json cannot be read ({' '.join(str(e).split())[:200]}); "
                             "the archived copy may be intact: try `slurm-yolo runs show`") from e
    if args.json:
        emit_json(record)
        return 0
    print_record(record, run_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``slurm-yolo`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SlurmYoloError as e:
        print(f"slurm-yolo: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("slurm-yolo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
