"""Write the end state back into the user's run folder, as the user (never as root there).

Root writing inside a user-controlled folder invites symlink and rename races, so the
archiver starts a child process that runs as the job's uid/gid (``python -I -m
slurm_yolo.epilog.writeback RUN_DIR``, the verdict on stdin) and updates ``run.json`` with
the ordinary atomic, locked update: whatever the user has planted there, the child can do
no more than the user could. A new process, not a fork: the archiver has a watchdog thread,
and a forked copy of a threaded Python may hang on a lock another thread held.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

from slurm_yolo.commands import run_command
from slurm_yolo.errors import CommandError
from slurm_yolo.record import update_record

DONE = "run.json updated"


def apply_verdict(r: dict[str, Any], v: Mapping[str, Any]) -> None:
    """Put the archiver's verdict ``v`` into a record, next to what the job said (``status``),
    never over it: both are evidence.

    ``v`` keys: ``state``, ``exit_code``, ``rule``, ``dest``, ``user``, ``uid``, ``metrics``
    (or ``None``), ``node`` (who decided), ``now``.
    """
    r["end_state"] = v["state"]
    r["archive_url"] = v["dest"]
    # Who ran it comes from slurmd and passwd, never from the user-writable record.
    r["user"], r["uid"] = v["user"], v["uid"]
    if v.get("metrics"):
        r["metrics"] = v["metrics"]
    if r.get("attempts"):
        a = r["attempts"][-1]
        a["end"] = a.get("end") or v["now"]
        a.update(end_state=v["state"], exit_code=v["exit_code"],
                 epilog={"node": v["node"], "time": v["now"], "rule": v["rule"]})
        if v.get("metrics"):
            a["epoch"] = v["metrics"]["epochs_done"]


def update_as_user(run_dir: str, uid: int, gid: int, verdict: Mapping[str, Any], *, timeout: float = 5.0) -> str:
    """Apply :func:`apply_verdict` to ``run_dir/run.json`` in a process running as ``uid:gid``.

    Returns ``"ok"``, ``"failed: ..."`` or ``"timed out"`` (the child is killed); never raises.
    """
    argv = [sys.executable, "-I", "-m", "slurm_yolo.epilog.writeback", run_dir]
    # User mode: the archiver already is the job's user (who may not switch identity at all).
    who = None if os.geteuid() == uid else (uid, gid)
    try:
        proc = run_command(argv, "writeback", timeout=timeout, env={"PATH": "/usr/bin:/bin"}, cwd="/",
                           input_text=json.dumps(verdict, default=str), as_user=who)
    except CommandError as e:
        return "timed out" if "no answer within" in e.detail else f"failed: {e.detail}"
    except (OSError, ValueError) as e:  # e.g. not root, so no switch to another user
        return f"failed: {e}"
    # Said by the child after the write, so an exit 0 of anything else is not taken for it.
    return "ok" if proc.stdout.strip() == DONE else f"failed: the child said {proc.stdout.strip()[:100]!r}"


def main(argv: list[str]) -> int:
    """The child: ``python -I -m slurm_yolo.epilog.writeback RUN_DIR`` with the verdict on stdin."""

    verdict = json.loads(sys.stdin.read())
    update_record(argv[0], lambda r: apply_verdict(r, verdict))
    print(DONE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
