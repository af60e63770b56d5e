"""What Slurm says, as data: the commands the archivers ask Slurm, and parsers of their text.

Builders return argv (run by :mod:`slurm_yolo.commands`, absolute paths: the epilog has no
PATH); parsers take the text and are table-tested with captured output
(tests/data/slurm*, tests/unit/test_captured_outputs.py). The verdict they feed is
:mod:`slurm_yolo.epilog.endstate`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from slurm_yolo import runfolder
from slurm_yolo.scontrol import JOB_ID_RE

# The comment is last: it is the user's text and may contain the separator.
SQUEUE_FORMAT = "%i|%T|%U|%e|%k"
# What a Slurm node list may look like before it is handed to scontrol (``n[1-2],gpu3``).
NODELIST_RE = re.compile(r"[A-Za-z0-9_.,\[\]-]{1,4096}")


def scontrol_argv(scontrol: str, job_id: str) -> list[str]:
    """``scontrol show job <id>`` — one query per job, by absolute path (the epilog has no PATH)."""
    if not JOB_ID_RE.fullmatch(job_id):
        raise ValueError(f"job id {job_id!r} is not a Slurm job ID (123 or 123_4)")
    return [scontrol, "show", "job", job_id]


@dataclass(frozen=True)
class QueuedJob:
    """One line of ``squeue``: a job slurmctld still knows."""

    job_id: str
    state: str
    uid: int
    end: str
    comment: str


def squeue_argv(squeue: str) -> list[str]:
    """Every job slurmctld knows, finished ones included, in :data:`SQUEUE_FORMAT`."""
    return [squeue, "-h", "-a", "-t", "all", "-o", SQUEUE_FORMAT]


def parse_squeue(text: str) -> list[QueuedJob]:
    """``squeue -o SQUEUE_FORMAT`` output → jobs (lines that do not parse are skipped)."""
    jobs = []
    for line in text.splitlines():
        parts = line.split("|", 4)
        if len(parts) != 5 or not parts[2].strip().isdigit():
            continue
        job_id, state, uid, end, comment = parts
        jobs.append(QueuedJob(job_id.strip(), state.strip().split()[0] if state.strip() else "", int(uid),
                              end.strip(), comment))
    return jobs


# sacct's fields for the reconciler, the comment last (the user's text may hold the separator).
# JobIDRaw is what the epilog sees as SLURM_JOB_ID (an array element's own ID); JobID is
# ``123_4`` for it. Identical in Slurm 22.05 and 24.11 (tests/data/slurm*/sacct-*.txt).
SACCT_FIELDS = ("JobIDRaw", "JobID", "State", "UID", "End", "ExitCode", "NodeList", "Reason", "Comment")
# Ended jobs only: sacct -s with a window (-S/-E) keeps the jobs that were in one of these
# states within it, i.e. that ended after its start (states: SLURM_ENDED's short names).
SACCT_ENDED = "BF,CA,CD,DL,F,NF,OOM,PR,TO"
# What sacct prints when the cluster keeps no accounting (AccountingStorageType=none), in
# 22.05 and 24.11 (tests/data/slurm*/sacct_no_accounting.stderr). A slurmdbd that is down is
# not this: its jobs reach it later, so that round must not count as completed.
NO_ACCOUNTING = re.compile(r"accounting storage is disabled", re.I)


@dataclass(frozen=True)
class AccountedJob:
    """One line of ``sacct``: a job that ended, as Slurm's accounting recorded it.

    It answers what :class:`QueuedJob` answers (the reconciler picks due jobs from either), and
    ``fields`` carries what ``scontrol show job`` would have said, for the end-state rules.
    """

    job_id: str
    state: str
    uid: int
    end: str
    comment: str
    fields: tuple[tuple[str, str], ...] = ()

    def scontrol(self) -> dict[str, str]:
        """The job in ``scontrol show job``'s words (JobId, JobState, Reason, ExitCode, NodeList)."""
        return dict(self.fields)

    def ids(self) -> set[str]:
        """The names squeue may print for it: its own ID, and ``123_4`` for an array element."""
        f = self.scontrol()
        return {self.job_id} | ({f"{f['ArrayJobId']}_{f['ArrayTaskId']}"} if f.get("ArrayTaskId") else set())


def sacct_argv(sacct: str, start: str, *, uid: int | None = None) -> list[str]:
    """The jobs that ended since ``start`` (``YYYY-MM-DDTHH:MM:SS``, the controller's local
    time), every user's, or only ``uid``'s; allocations only (no steps), as ``|``-separated lines."""
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", start):
        raise ValueError(f"sacct start {start!r} is not YYYY-MM-DDTHH:MM:SS")
    who = ["-u", str(uid)] if uid is not None else ["-a"]
    return [sacct, "-X", "-n", "-P", *who, "-S", start, "-E", "now", "-s", SACCT_ENDED,
            "-o", ",".join(SACCT_FIELDS)]


def parse_sacct(text: str) -> list[AccountedJob]:
    """``sacct -P -o SACCT_FIELDS`` output → ended jobs (lines that do not parse are skipped).

    ``State`` is Slurm's word alone (``CANCELLED by 1001`` → ``CANCELLED``; the whole text is
    kept as ``StateText``), ``Reason`` as accounting stored it (``None`` where there was none).
    """
    jobs = []
    for line in text.splitlines():
        parts = line.split("|", len(SACCT_FIELDS) - 1)
        if len(parts) != len(SACCT_FIELDS):
            continue
        raw, job_id, state, uid, end, exit_code, nodes, reason, comment = parts
        if not raw.strip().isdigit() or not uid.strip().isdigit():
            continue
        word = state.strip().split()[0] if state.strip() else ""
        array_job, _, task = job_id.strip().partition("_")
        fields = (("JobId", raw.strip()), *((("ArrayJobId", array_job), ("ArrayTaskId", task)) if task else ()),
                  ("JobState", word),
                  ("StateText", state.strip()), ("ExitCode", exit_code.strip()), ("NodeList", nodes.strip()),
                  ("Reason", reason.strip() or "None"), ("source", "sacct"))
        jobs.append(AccountedJob(raw.strip(), word, int(uid), end.strip(), comment, fields))
    return jobs


def scontrol_node_argv(scontrol: str, nodelist: str) -> list[str] | None:
    """``scontrol show node <list>``; ``None`` for a node list that does not look like Slurm's."""
    if not nodelist or not NODELIST_RE.fullmatch(nodelist):
        return None
    return [scontrol, "show", "node", nodelist]


def down_nodes(text: str) -> list[str]:
    """``scontrol show node`` output → the nodes whose State is DOWN or NOT_RESPONDING."""
    out = []
    for block in re.split(r"\n(?=NodeName=)", text.strip()):
        name = re.match(r"NodeName=(\S+)", block)
        state = re.search(r"\bState=(\S+)", block)
        if name and state and re.search(r"DOWN|NOT_RESPONDING|FAIL", state.group(1)):
            out.append(name.group(1))
    return out


OOM_REPORT = re.compile(r"Detected \d+ oom.kill event")
LOG_TAIL_BYTES = 256 << 10


def oom_in_log_text(text: str, attempt: int) -> bool:
    """Whether slurmstepd reported an oom-kill after the banner of ``attempt`` in a job log.

    The log is appended to across requeues; the job prints its attempt banner
    (:func:`slurm_yolo.runfolder.attempt_banner`) when it starts, so only what follows this
    attempt's last banner counts.
    """
    return bool(OOM_REPORT.search(text[runfolder.attempt_start(text, attempt):]))


def oom_in_logs(snapshot_dir: str | Path, attempt: int) -> bool:
    """Scan this job's Slurm logs in the epilog's (already safely copied) snapshot."""
    # Only this job's logs are in the snapshot: a run's own slurm/ folder (one job ID across
    # requeues), or the one log the epilog copied from a sweep's folder.
    for log in sorted(Path(snapshot_dir).glob(f"{runfolder.SLURM_LOGS}/*_log.*")):
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - LOG_TAIL_BYTES))
            if oom_in_log_text(f.read().decode("utf-8", "replace"), attempt):
                return True
    return False
