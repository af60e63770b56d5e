"""``slurm-yolo-epilog``: the Slurm epilog, on the nodes and on the controller.

As ``Epilog=`` it runs as root after EVERY job on every node of the job; as
``EpilogSlurmctld=`` once per job on the controller, which is the only epilog Slurm runs
when the job's node died (``NODE_FAIL``). Whichever archiver claims an attempt first does
the work (:mod:`slurm_yolo.epilog.claim`); the controller only steps in for dead nodes.

Contract (docs/admin.md): exit 0 always, within the site's time budget; a cheap no-op for
jobs that are not ours; no PATH (absolute paths only); every user-settable value is
hostile input; what cannot be uploaded now stays in the spool for ``slurm-yolo spool drain``.
The steps themselves are in :mod:`slurm_yolo.epilog.archiver`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from slurm_yolo.names import MARKER_PREFIX  # cheap: re, secrets

# Everything else is imported inside the function that needs it: slurmd starts this module
# after every job on the cluster, and the no-op path (a job that is not ours) must load
# neither yaml nor boto3 nor the archiver (tests/unit/test_epilog_entry.py checks it).

if TYPE_CHECKING:  # types only: the no-op path must not import the site config (yaml)
    from slurm_yolo.site import SiteConfig

log = logging.getLogger("slurm_yolo.epilog")


def is_ours(env: Mapping[str, str]) -> bool:
    """The no-op test, first thing, before any import: is this job marked by slurm-yolo?"""
    return env.get("SLURM_JOB_COMMENT", "").startswith(MARKER_PREFIX)


def setup_logging(path: str) -> None:
    """Log to the site's log file (stderr if it cannot be opened): the epilog has no terminal."""
    handler: logging.Handler
    try:
        Path(path).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
    except OSError:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("slurm_yolo")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


# The contexts Slurm runs this program in (SLURM_SCRIPT_CONTEXT).
NODE_CONTEXT, CONTROLLER_CONTEXT = "epilog_slurmd", "epilog_slurmctld"


def archive_job(env: Mapping[str, str], site: SiteConfig, *, deadline: float, by: str = "",
                node_down: bool = False) -> dict[str, Any]:
    """Archive the attempt the job ``env`` describes (see :mod:`slurm_yolo.epilog.archiver`).

    Returns the summary as a dict (what the log line shows).
    """
    from slurm_yolo.epilog.archiver import archive_job as archive

    by = by or f"{env.get('SLURM_SCRIPT_CONTEXT') or NODE_CONTEXT}@{env.get('SLURMD_NODENAME') or socket.gethostname()}"
    return archive(env, site, deadline=deadline, by=by, node_down=node_down).to_dict()


def _controller_sees_dead_node(env: Mapping[str, str], site: SiteConfig, deadline: float) -> bool:
    """On the controller, archive only what no node epilog will: jobs whose node died.

    Every other job is archived on its nodes (where the data is local); the claim makes it
    harmless if both try, and the reconciler catches a node epilog that died half-way. A
    job requeued after its node died shows ``JobState=PENDING`` here, so the states of its
    nodes are asked too.
    """
    from slurm_yolo.epilog.archiver import dead_nodes, scontrol_fields
    from slurm_yolo.epilog.endstate import node_failed

    job_id = env.get("SLURM_JOB_ID", "")
    fields = scontrol_fields(site, job_id, deadline, env)
    dead = dead_nodes(site, env.get("SLURM_JOB_NODELIST", ""), deadline, env)
    log.info("job %s on the controller: JobState=%s Reason=%s, dead nodes %s: %s", job_id, fields.get("JobState"),
             fields.get("Reason"), dead or "none",
             "archiving here" if dead or node_failed(fields) else "left to its node epilogs")
    return bool(dead) or node_failed(fields)


def run(env: Mapping[str, str]) -> int:
    """The epilog proper (after the no-op test). Always returns 0."""
    from slurm_yolo.budget import epilog_deadline
    from slurm_yolo.errors import Refused, SlurmYoloError
    from slurm_yolo.site import load_site_config, site_config_path

    started = time.monotonic()
    job_id = env.get("SLURM_JOB_ID", "?")
    try:
        site = load_site_config(site_config_path(dict(env)))
    except SlurmYoloError as e:
        setup_logging("/var/log/slurm-yolo/epilog.log")
        log.error("job %s: not archived: %s", job_id, e)
        return 0
    setup_logging(site.log_file)
    # Hard stop: whatever hangs (a dead NFS server, a stuck store), the node must not drain.
    watchdog = threading.Timer(site.time_budget_s, _give_up, args=(job_id,))
    watchdog.daemon = True
    watchdog.start()
    deadline = epilog_deadline(started, site.time_budget_s)
    summary: dict[str, Any] = {}
    try:
        context = env.get("SLURM_SCRIPT_CONTEXT") or NODE_CONTEXT
        if context == CONTROLLER_CONTEXT and not _controller_sees_dead_node(env, site, deadline):
            return 0  # its nodes' epilogs archive it
        summary = archive_job(env, site, deadline=deadline, node_down=context == CONTROLLER_CONTEXT)
        level = logging.INFO if summary["shipped"] or not summary["claimed"] else logging.WARNING
        log.log(level, "job %s: %s", job_id, summary)
    except Refused as e:
        log.error("job %s: refused: %s", job_id, e)
        summary = {"refused": str(e)}
    except Exception:  # never let a bug drain the node; log it whole
        log.exception("job %s: epilog error", job_id)
        summary = {"error": "epilog error"}
    log.info("job %s: epilog done in %.2f s", job_id, time.monotonic() - started)
    _count(site, summary, time.monotonic() - started)
    return 0


def _count(site: SiteConfig, summary: dict[str, Any], duration_s: float) -> None:
    """The Prometheus textfile (epilog/metrics.py), after the work: it never delays an upload."""
    if not site.metrics_textfile:
        return
    from slurm_yolo.epilog import metrics

    metrics.record(site.metrics_textfile, site.spool_dir, metrics.archives_event([summary], duration_s=duration_s))


def _give_up(job_id: str) -> None:
    log.error("job %s: epilog time budget exhausted; exiting 0, run stays in the spool", job_id)
    logging.shutdown()
    os._exit(0)


def _detach_fds() -> None:
    """Slurm waits for the epilog's stdout to close; never let a child inherit it, nor other fds."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.closerange(3, 65536)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``slurm-yolo-epilog`` (``--check`` validates the site config instead)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        from slurm_yolo.epilog.check import main as check_main

        return check_main(argv)
    env = dict(os.environ)
    if not is_ours(env):
        return 0
    _detach_fds()
    try:
        return run(env)
    except BaseException:  # noqa: BLE001 - the contract is exit 0, always
        return 0


if __name__ == "__main__":
    sys.exit(main())
