"""``slurm-yolo``: the command line. Thin: parse argv, call one function, print, return a code.

Every user-fixable problem is a :class:`~slurm_yolo.errors.SlurmYoloError`: one line on
stderr (``slurm-yolo: error: ...``) and its exit code (2 for bad input, 3 for a run that
did not complete, 1 otherwise).

Each command lives in its room's ``cli`` module (launcher, epilog, catalog, report); the
table :data:`COMMANDS` names it and its help line, and a room is imported only when one of
its commands runs (or its ``--help`` is asked for). So ``slurm-yolo --help`` imports no
room at all, and ``slurm-yolo submit`` none of the catalog, the epilog or the portal: on a
busy login node the start-up time is the first thing a user feels.
"""

from __future__ import annotations

import argparse
import importlib
import sys
# Not typing: the only module it would load at start-up.
from collections.abc import Sequence

from slurm_yolo.errors import SlurmYoloError

DESCRIPTION = """\
Launch Ultralytics YOLO training on Slurm with run IDs; every run is archived to S3 however it
ends: by the node epilog where the admins installed it, else by the job itself and your
`reconcile --user` (`slurm-yolo doctor` says which). Typical use:

  slurm-yolo submit configs/pcb.yaml --set train.epochs=50 --wait
  slurm-yolo sweep configs/pcb.yaml --grid train.lr0=0.01,0.001 --grid train.batch=8,16
  slurm-yolo status 20261122_120000_ab12cd34
"""

LAUNCHER, EPILOG, CATALOG, REPORT = (f"slurm_yolo.{room}.cli" for room in ("launcher", "epilog", "catalog", "report"))
# The job the launcher submits: imported only by a real submission (it is the node's code).
JOB = "slurm_yolo.job.train"

# command -> (the module whose add_commands registers it, its line in `slurm-yolo --help`).
# A room's commands are contiguous here, in the order its add_commands registers them;
# tests/unit/test_cli.py checks both against the rooms.
COMMANDS: dict[str, tuple[str, str]] = {
    "submit": (LAUNCHER, "submit one training run"),
    "sweep": (LAUNCHER, "submit a grid of runs as one Slurm job array"),
    "status": (LAUNCHER, "show a run's record"),
    "doctor": ("slurm_yolo.launcher.doctor", "check your set-up end to end: store, mode, reconciler, a check job"),
    "spool": (EPILOG, "admin: list or drain the epilog's spool of pending uploads"),
    "reconcile": (EPILOG, "archive ended runs no epilog archived (admin: dead nodes, for a timer; --user: yours, on a cluster without the epilog)"),
    "runs": (CATALOG, "find, show, compare and fetch archived runs"),
    "reproduce": (CATALOG, "resubmit an archived run's config as a new run"),
    "index": (CATALOG, "maintain the store's run index (quarterly Parquet files + pending updates)"),
    "store": (CATALOG, "keep the store affordable: usage and cost, lifecycle rules, pruning"),
    "report": (REPORT, "the web portal: a static site built from the index and the archives"),
    "mlflow": (REPORT, "register archived runs in an MLflow tracking server (extra [mlflow])"),
}


class _Version(argparse.Action):
    """``--version``: the installed package's version, looked up only when asked (start-up time)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from importlib import metadata  # stdlib

        try:
            version = metadata.version("slurm-yolo")
        except metadata.PackageNotFoundError:
            version = "(not installed: running from a source tree)"
        print(f"slurm-yolo {version}")  # on stdout, as argparse's own version action does
        parser.exit()


def command_of(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (the first word that is not an option; the top level has
    only ``-h`` and ``--version``, which take no value), or ``None``."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``slurm-yolo`` argument parser.

    Args:
        argv: the arguments it will parse: only the room of their command is imported, every
            other command gets its help line alone. ``None``: every room (the whole parser).
    """
    parser = argparse.ArgumentParser(prog="slurm-yolo", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = None if argv is None else COMMANDS.get(command_of(argv) or "", (None,))[0]
    loaded: set[str] = set()
    for name, (room, line) in COMMANDS.items():
        if room in loaded:
            continue
        if argv is None or room == wanted:
            importlib.import_module(room).add_commands(sub)
            _join(room, sub)
            loaded.add(room)
        else:
            sub.add_parser(name, help=line, add_help=False)
    return parser


def _join(room: str, sub: argparse._SubParsersAction) -> None:
    """What the CLI, the layer above the rooms, joins: the launcher with the job it submits,
    and the catalog's ``reproduce`` (it finds the run) with the launcher (it submits it)."""
    if room == LAUNCHER:
        for name in ("submit", "sweep"):
            sub.choices[name].set_defaults(job=training_job)
    elif room == CATALOG:
        sub.choices["reproduce"].set_defaults(submit=submit_training)


def training_job():
    """The job the launcher submits: the CLI (the top layer) joins the launcher and the job."""
    return importlib.import_module(JOB).TrainJob()


def submit_training(config, **kwargs):
    """The launcher's submit with the training job (what ``reproduce`` resubmits with)."""
    return importlib.import_module("slurm_yolo.launcher.submit").submit(config, job=training_job(), **kwargs)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``slurm-yolo`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
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
