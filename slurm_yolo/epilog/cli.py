"""``slurm-yolo spool drain|list``: finish uploads the epilog could not (run by a timer as root)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from slurm_yolo import budget
from slurm_yolo.archive.index_compact import compact
from slurm_yolo.archive.index_location import IndexLocation
from slurm_yolo.epilog import metrics, refusals, ship, spool, usermode
from slurm_yolo.epilog.entry import EntryInfo
from slurm_yolo.epilog.main import setup_logging
from slurm_yolo.epilog.reconcile import reconcile
from slurm_yolo.errors import SiteConfigError, SlurmYoloError
from slurm_yolo.site import SiteConfig, load_site_config, site_config_path


def add_commands(sub: Any) -> None:
    p = sub.add_parser("spool", help="admin: list or drain the epilog's spool of pending uploads",
                       description="Runs left in the spool by the epilog (store down, slow, killed) are "
                                   "uploaded by `drain`; run it from the systemd timer or cron as root.")
    ssub = p.add_subparsers(dest="spool_command", metavar="ACTION", required=True)
    d = ssub.add_parser("drain", help="upload every pending run (idempotent; safe to run twice at once)")
    d.add_argument("--budget", type=float, default=600, help="stop starting new uploads after this many seconds")
    d.add_argument("--site-config", default=None, help="default: $SLURM_YOLO_SITE_CONFIG or /etc/slurm-yolo/site.yaml")
    d.add_argument("--json", action="store_true", help="print one JSON object")
    d.add_argument("--all", action="store_true", dest="everything",
                   help="try every entry now: also those backing off after failures and those whose last "
                        "failure needed a person (bad credentials, no such bucket), once the cause is fixed")
    d.add_argument("--no-compact", action="store_false", dest="compact",
                   help="do not fold the index's pending updates into its quarterly files afterwards "
                        "(by default every drain does: cheap when nothing is pending, safe on every node at once)")
    d.set_defaults(func=cmd_drain)
    ls = ssub.add_parser("list", help="show pending runs and their last error")
    ls.add_argument("--site-config", default=None)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    r = sub.add_parser("reconcile", help="archive ended runs no epilog archived (admin: dead nodes, for a timer; --user: yours, on a cluster without the epilog)",
                       description="Archive the runs of ended jobs that no epilog claimed: NODE_FAIL jobs at "
                                   "once, others once their node epilogs had their time budget; and take over "
                                   "claims whose holder died mid-archive. Ended jobs come from squeue and, so that "
                                   "a reconciler that was stopped forgets none, from sacct since its last completed "
                                   "round where the cluster keeps accounting, else from a walk of the site's "
                                   "runs_roots. Run it as root every minute on a host that mounts the users' "
                                   "filesystem and reaches slurmctld (docs/admin.md).")
    r.add_argument("--site-config", default=None, help="default: $SLURM_YOLO_SITE_CONFIG or /etc/slurm-yolo/site.yaml")
    r.add_argument("--dry-run", action="store_true",
                   help="say what would be archived, and list the refused markers remembered (never retried, "
                        f"forgotten after {refusals.KEEP_S / 86400:g} days); archive nothing")
    r.add_argument("--settle", type=float, default=None, metavar="SECONDS",
                   help="how long after a job ended its node epilogs have before the reconciler steps in "
                        f"(default: the site's time_budget_s + {budget.MARGIN_S:g}; NODE_FAIL jobs are due at once)")
    r.add_argument("--json", action="store_true", help="print one JSON list")
    usermode.add_arguments(r)  # --user [--install|--uninstall]: a user's own round, no epilog on the cluster
    r.set_defaults(func=cmd_reconcile)


def _site(args: argparse.Namespace) -> SiteConfig:
    if os.geteuid() != 0:
        raise SiteConfigError("the spool is root-only: run `slurm-yolo spool ...` as root (the drain timer does)")
    return load_site_config(args.site_config or site_config_path())


def cmd_drain(args: argparse.Namespace) -> int:
    site = _site(args)
    results = ship.drain(site, budget_s=args.budget, log=lambda m: None if args.json else print(m),
                          everything=args.everything)
    metrics.record(site.metrics_textfile, site.spool_dir, metrics.drain_event(results))
    left = [e.name for e in spool.iter_entries(site.spool_dir)]
    index = _compact_index(site) if args.compact else None
    if args.json:
        print(json.dumps({"shipped": [r.entry for r in results if r.ok],
                          "failed": {r.entry: r.detail for r in results if not r.ok}, "pending": left,
                          "index": index}))
    else:
        print(f"{sum(r.ok for r in results)} shipped, {sum(not r.ok for r in results)} failed, {len(left)} pending")
        if index:
            print(f"index: {index}")
    return 0 if not left else 1


def _compact_index(site: SiteConfig) -> str:
    """Fold the index's pending updates into its quarterly files; one line saying what happened.

    Never fails the drain: the updates stay pending (and visible) until a later tick or
    `slurm-yolo index compact` manages."""
    try:
        result = compact(IndexLocation.at(site.store, site.index_url, site.allowed_prefix))
    except SlurmYoloError as e:
        return f"not compacted: {e}"
    return result.summary()


def cmd_list(args: argparse.Namespace) -> int:
    site = _site(args)
    entries = []
    for e in spool.iter_entries(site.spool_dir):
        try:
            info = EntryInfo.load(e)
        except (OSError, ValueError) as err:
            entries.append({"entry": e.name, "last_error": f"unreadable entry.json: {err}", "permanent": True})
            continue
        entries.append({"entry": e.name, **{k: getattr(info, k) for k in (
            "run_id", "job_id", "user", "dest", "created", "last_error", "error_class", "tries", "complete",
            "permanent", "next_try_s")}})
    if args.json:
        print(json.dumps(entries))
    else:
        for entry in entries:
            state = "NEEDS A PERSON" if entry.get("permanent") else f"tries={entry.get('tries') or 0}"
            print(f"{entry['entry']}  {entry.get('user')}  {entry.get('dest')}  {state}  "
                  f"{entry.get('last_error') or ''}")
        stuck = sum(1 for entry in entries if entry.get("permanent"))
        print(f"{len(entries)} pending" + (f", {stuck} need a person (fix the cause, then "
                                           "`slurm-yolo spool drain --all`)" if stuck else ""),
              file=sys.stderr)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    if args.user or args.install or args.uninstall:
        return usermode.cmd_reconcile_user(args)
    site = _site(args)
    setup_logging(site.log_file)
    results = reconcile(site, dry_run=args.dry_run, settle_s=args.settle,
                        say=lambda m: None if args.json else print(m))
    if not args.dry_run:
        metrics.record(site.metrics_textfile, site.spool_dir, metrics.archives_event(results))
    if args.json:
        print(json.dumps(results))
    elif not results:
        print("nothing to reconcile")
    return 1 if any("error" in r for r in results) else 0
