"""Write the end state back into the user's run folder, as the user (never as root there).

Root writing inside a user-controlled folder invites symlink and rename races, so the
epilog forks a child that drops to the job's uid/gid and updates ``run.json`` with the
ordinary atomic, locked update: whatever the user has planted there, the child can do no
more than the user could.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable


def update_as_user(run_dir: str, uid: int, gid: int, change: Callable[[dict[str, Any]], None],
                   *, timeout: float = 5.0) -> str:
    """Apply ``change`` to ``run_dir/run.json`` in a child running as ``uid:gid``.

    Returns ``"ok"``, ``"failed"`` or ``"timed out"`` (the child is killed); never raises.
    """
    from slurm_yolo.record import update_record

    pid = os.fork()
    if pid == 0:  # child: drop privileges for good, then do the ordinary update
        code = 1
        try:
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
            update_record(run_dir, change)
            code = 0
        finally:
            os._exit(code)
    end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "ok" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        if time.monotonic() >= end:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "timed out"
        time.sleep(0.01)
