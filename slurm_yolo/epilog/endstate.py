"""Decide how a job attempt ended, from the evidence the epilog can gather.

Slurm's epilog environment alone cannot tell a time-out from a cancel from a success (all
show ``SLURM_JOB_EXIT_CODE2=0:0``), so the verdict combines three sources:

- the epilog environment (exit code, restart count);
- what the job recorded itself in ``run.json`` (its status, the signals it caught);
- one ``scontrol show job`` where the site allows it (Reason=TimeLimit/OutOfMemory, JobState).

The rules are an ordered table: the first that matches wins, and the evidence is kept with
the verdict so a person can check it. Reading Slurm's own output (``scontrol``, ``squeue``,
slurmstepd's log lines) is :mod:`slurm_yolo.epilog.slurm_parse`'s; this module only judges.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from slurm_yolo.states import EndState, JobStatus

# During the epilog scontrol shows JobState=COMPLETING in every case seen (docs/admin.md); these
# are for Slurm versions that already show the requeue.
REQUEUE_STATES = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}


@dataclass(frozen=True)
class Evidence:
    """Everything known about how one attempt ended.

    Attributes:
        exit_code2: ``SLURM_JOB_EXIT_CODE2`` (``"exit:signal"``), e.g. ``"3:0"``.
        restart_count: ``SLURM_JOB_RESTART_COUNT`` in the epilog (already incremented on requeue).
        attempt: the attempt that ended (1-based), from the job's own record.
        job_status: the job's last status in run.json (COMPLETED, FAILED, REQUEUING, RUNNING, ...).
        job_signals: signal names the job recorded during this attempt.
        scontrol: ``scontrol show job`` fields (JobState, Reason, ExitCode, Restarts), or empty.
        record_damaged: the job's run.json was unusable: only Slurm's evidence counts.
        node_down: the controller saw a node of the job DOWN when the job ended.
        oom_in_log: slurmstepd reported an oom-kill in this attempt's job log. An OOM in the
            srun step (where the job runs) shows as a plain ``1:0`` exit and Reason=NonZeroExitCode
            during the epilog; Slurm only marks the job OUT_OF_MEMORY after the epilog.
    """

    exit_code2: str | None = None
    restart_count: int = 0
    attempt: int = 1
    job_status: str | None = None
    job_signals: tuple[str, ...] = ()
    scontrol: Mapping[str, str] = field(default_factory=dict)
    oom_in_log: bool = False
    record_damaged: bool = False
    node_down: bool = False

    def exit_status(self) -> tuple[int | None, int | None]:
        """``(exit code, signal)`` from ``exit_code2``; ``(None, None)`` if absent."""
        return _split_code(self.exit_code2)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scontrol"] = dict(self.scontrol)
        d["job_signals"] = list(self.job_signals)
        return d


@dataclass(frozen=True)
class Verdict:
    """The end state of an attempt, with the rule that decided it and the evidence."""

    state: EndState
    rule: str
    exit_code: int | None
    evidence: Evidence

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "rule": self.rule, "exit_code": self.exit_code,
                "evidence": self.evidence.to_dict()}


def _split_code(text: str | None) -> tuple[int | None, int | None]:
    if not text or not re.fullmatch(r"\d+:\d+", text.strip()):
        return None, None
    code, sig = text.strip().split(":")
    return int(code), int(sig)


def _sc(e: Evidence, key: str) -> str:
    return (e.scontrol.get(key) or "").strip()


def _requeued(e: Evidence) -> bool:
    restarts = _sc(e, "Restarts")
    return _sc(e, "JobState") in REQUEUE_STATES or (restarts.isdigit() and int(restarts) >= e.attempt) \
        or e.restart_count >= e.attempt


def _oom(e: Evidence) -> bool:
    code, sig = e.exit_status()
    return _sc(e, "Reason") == "OutOfMemory" or _sc(e, "JobState") == "OUT_OF_MEMORY" or sig == 125 \
        or e.oom_in_log


def _cancelled(e: Evidence) -> bool:
    _, sc_sig = _split_code(_sc(e, "ExitCode"))
    return _sc(e, "JobState") == "CANCELLED" or "SIGTERM" in e.job_signals \
        or sc_sig in (9, 15)


def _failed(e: Evidence) -> bool:
    code, sig = e.exit_status()
    return bool(code) or bool(sig) or e.job_status == JobStatus.FAILED


def _completed(e: Evidence) -> bool:
    code, sig = e.exit_status()
    return e.job_status == JobStatus.COMPLETED and not code and not sig


def node_failed(scontrol: Mapping[str, str]) -> bool:
    """Whether ``scontrol show job`` fields say the job's node died (no node epilog runs then)."""
    return (scontrol.get("JobState") or "").strip() == "NODE_FAIL" or (scontrol.get("Reason") or "").strip() == "NodeDown"


def _node_failed(e: Evidence) -> bool:
    return e.node_down or node_failed(e.scontrol)


def _slurm_says_completed(e: Evidence) -> bool:
    """No record to ask (damaged): exit 0:0 in the environment and in scontrol, no reason.
    A time-out or a cancel also shows 0:0 in the environment, but not in scontrol."""
    code, sig = e.exit_status()
    return e.record_damaged and code == 0 and sig == 0 and _sc(e, "ExitCode") == "0:0" \
        and _sc(e, "Reason") in ("None", "") and _sc(e, "JobState") in ("COMPLETING", "COMPLETED")


# (state, rule name, predicate) — order matters: the first match wins.
RULES: tuple[tuple[EndState, str, Callable[[Evidence], bool]], ...] = (
    # The node died: no node epilog ran; the controller path or the reconciler archives it,
    # and Slurm may already have requeued it (so before the requeue rules).
    (EndState.NODE_FAIL, "the node died (JobState=NODE_FAIL or Reason=NodeDown)", _node_failed),
    (EndState.OUT_OF_MEMORY, "cgroup OOM (Reason=OutOfMemory, signal 125 or slurmstepd's oom-kill report)", _oom),
    (EndState.PREEMPTED, "requeued after the job caught the pre-emption/time-limit signal",
     lambda e: _requeued(e) and "SIGUSR2" in e.job_signals),
    (EndState.REQUEUED, "requeued (scontrol requeue, node failure or pre-emption)", _requeued),
    (EndState.TIMEOUT, "time limit (Reason=TimeLimit)", lambda e: _sc(e, "Reason") == "TimeLimit"
     or _sc(e, "JobState") == "TIMEOUT"),
    # submitit sends USR2 signal_delay_s before the limit; a job that is not requeued then
    # (no requeues left) ends itself before Slurm's own kill.
    (EndState.TIMEOUT, "time-limit warning (USR2) and not requeued", lambda e: "SIGUSR2" in e.job_signals),
    (EndState.CANCELLED, "SIGTERM without a time limit (scancel)", _cancelled),
    (EndState.COMPLETED, "job recorded COMPLETED and exit code 0", _completed),
    (EndState.COMPLETED, "record damaged; Slurm: exit code 0:0, no reason", _slurm_says_completed),
    (EndState.FAILED, "non-zero exit code or the job recorded FAILED", _failed),
)


def decide(e: Evidence) -> Verdict:
    """The end state for this evidence (``UNKNOWN`` if no rule matches)."""
    code, _ = e.exit_status()
    for state, rule, predicate in RULES:
        if predicate(e):
            return Verdict(state, rule, code, e)
    return Verdict(EndState.UNKNOWN, "no rule matched; see evidence", code, e)
