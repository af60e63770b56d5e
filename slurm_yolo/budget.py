"""The epilog's time budget and what follows from it, decided once.

The site's ``time_budget_s`` bounds one archiver: the epilog's watchdog ends it then, exit
0, whatever still hangs (an epilog that fails or runs on drains the node). Everyone who waits
for an archiver waits the same window, :func:`stale_after_s`: the reconciler before it steps
in for a job whose node epilogs may still run, a taker before it takes over a claim whose holder may still be alive, the drain before it touches an entry
that an epilog may still be copying. The deadlines of the small steps inside one archiver
(one ``scontrol``, the write-back child, the spool lock) are clamped here too, so a step
never gets more than its share nor less than the time it needs to answer at all.
"""

from __future__ import annotations

import time

# How much longer than its budget an archiver may look alive: its watchdog fires at the
# budget, and a killed one may still be flushing its last write over NFS.
MARGIN_S = 60.0
# The epilog stops starting work this long before its watchdog, so that it ends on its own.
WATCHDOG_SLACK_S = 2.0
# One small command (scontrol, the write-back child): at least long enough to answer, at most
# this, so that a hung slurmctld cannot eat the copy's time.
COMMAND_MIN_S, COMMAND_MAX_S = 0.5, 5.0
# The per-run spool lock: a drain holding it ships in attempt order; wait at most this.
LOCK_MAX_S = 10.0
# The share of what is left that the copy into the spool may use: the rest is for the upload.
STAGE_SHARE, STAGE_MIN_S = 0.6, 1.0
# A reconciler's lookups before it archives (squeue, scontrol, opening the run folder).
LOOKUP_S = 10.0


def stale_after_s(time_budget_s: float) -> float:
    """How long after it started an archiver that has not finished is taken for dead."""
    return float(time_budget_s) + MARGIN_S


def epilog_deadline(started: float, time_budget_s: float) -> float:
    """The ``time.monotonic()`` value by which an epilog started at ``started`` stops working."""
    return started + float(time_budget_s) - WATCHDOG_SLACK_S


def left_s(deadline: float, now: float | None = None) -> float:
    """Seconds until ``deadline`` (a ``time.monotonic()`` value); negative once past it."""
    return deadline - (time.monotonic() if now is None else now)


def command_timeout(deadline: float, now: float | None = None) -> float:
    """The timeout of one small command run before ``deadline``."""
    return max(COMMAND_MIN_S, min(COMMAND_MAX_S, left_s(deadline, now)))


def lock_wait(deadline: float, now: float | None = None) -> float:
    """How long to wait for the spool lock before ``deadline`` (0: do not wait)."""
    return max(0.0, min(LOCK_MAX_S, left_s(deadline, now)))


def stage_deadline(deadline: float, now: float | None = None) -> float:
    """When the copy into the spool must stop, leaving the rest of the budget to the upload."""
    now = time.monotonic() if now is None else now
    return now + max(STAGE_MIN_S, left_s(deadline, now) * STAGE_SHARE)


def lookup_deadline(now: float | None = None) -> float:
    """The deadline of a reconciler's lookups about one job."""
    return (time.monotonic() if now is None else now) + LOOKUP_S
