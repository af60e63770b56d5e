"""Follow a submitted run until it ends (``submit --wait``).

Slurm accounting (sacct) is often off on small clusters, so the state comes from
``squeue`` (which keeps finished jobs for MinJobAge), the progress from the run folder
(``results.csv``), and the verdict from ``run.json``, where the epilog writes the end state.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from slurm_yolo import record as rec
from slurm_yolo.commands import run_command
from slurm_yolo.errors import CommandError
from slurm_yolo.runfolder import RESULTS_CSV
from slurm_yolo.states import SLURM_ENDED, EndState, Executor, JobStatus
from slurm_yolo.tasks import metric_field

# squeue states after which the epilog has already run (the job left COMPLETING).
FINAL_SLURM_STATES = SLURM_ENDED


@dataclass(frozen=True)
class Progress:
    """One observation of a running job."""

    slurm_state: str | None  # None: squeue no longer knows the job
    status: str | None       # the job's own status in run.json
    end_state: str | None    # the epilog's verdict in run.json
    attempt: int
    epoch: int
    epochs: int | None
    metric: float | None = None          # the latest epoch's value of the task's metric
    metric_name: str = "map50_95"        # its field name (tasks.metric_field of fitness_metric)

    def line(self) -> str:
        """A one-line summary for a progress display."""
        parts = [self.slurm_state or self.status or "?"]
        if self.attempt > 1:
            parts.append(f"attempt {self.attempt}")
        parts.append(f"epoch {self.epoch}/{self.epochs if self.epochs else '?'}")
        if self.metric is not None:
            parts.append(f"{self.metric_name} {self.metric:.4f}")
        return "  ".join(parts)


def squeue_argv(job_id: str) -> list[str]:
    """``squeue`` for one job (finished ones too), state only."""
    return ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"]


def parse_squeue_state(text: str) -> str | None:
    """The state from :func:`squeue_argv` output; ``None`` when the job is unknown."""
    states = [line.strip() for line in text.splitlines() if line.strip()]
    return states[0] if states else None


def local_job_alive(job_id: str) -> bool:
    """Whether a local job's process (submitit's LocalExecutor: the job ID is its PID) runs.

    When this process submitted it, it is our child: reap it, because a dead child stays
    a zombie that ``kill(pid, 0)`` still finds. Otherwise ask the kernel.
    """
    try:
        pid = int(job_id)
    except ValueError:
        return True  # not a PID: nothing to check, rely on run.json
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == 0
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def observe(run_dir: Path, job_id: str, executor: str) -> Progress:
    """Look once at the job's Slurm state (or local process) and the run folder."""
    state = None
    if executor == Executor.LOCAL:
        # Checked BEFORE reading run.json: a process that is gone has written all it ever
        # will, so a status still RUNNING means it died without a word (SIGKILL, OOM).
        state = "RUNNING" if local_job_alive(job_id) else "GONE"
    elif executor == Executor.SLURM:
        try:
            state = parse_squeue_state(run_command(squeue_argv(job_id), "watch", timeout=30).stdout)
        except CommandError as e:
            if "Invalid job id" not in e.detail:
                raise
    record = rec.read_record(run_dir)
    rows = rec.read_results_rows(run_dir / RESULTS_CSV)
    latest = rows[-1] if rows else {}
    # The task's own metric (top1 for classify, the mask mAP for segment, ...), as the launcher
    # recorded it; box mAP50-95 for records written before runs named theirs.
    field = metric_field(str(record.get("fitness_metric") or "")) or "map50_95"
    return Progress(
        slurm_state=state,
        status=record.get("status"),
        end_state=record.get("end_state"),
        attempt=len(record.get("attempts") or []) or 1,
        epoch=len(rows),
        epochs=(record.get("config") or {}).get("train", {}).get("epochs"),
        metric=latest.get(field),
        metric_name=field,
    )


def is_over(p: Progress, executor: str) -> bool:
    """Whether the run has ended for good (requeued jobs go back to PENDING and are not over)."""
    if executor == Executor.LOCAL:
        return p.status not in (None, JobStatus.SUBMITTED, JobStatus.RUNNING) or p.slurm_state == "GONE"
    return p.slurm_state is None or p.slurm_state in FINAL_SLURM_STATES


def final_state(p: Progress) -> str:
    """The run's end state: the epilog's verdict, else the job's own word, else Slurm's
    (a local process that died without recording an end is ``FAILED``)."""
    own = p.status if p.status not in (None, JobStatus.RUNNING, JobStatus.SUBMITTED) else None
    if p.slurm_state == "GONE":
        return p.end_state or own or EndState.FAILED
    return p.end_state or own or p.slurm_state or EndState.UNKNOWN


def wait_for(
    run_dir: str | Path, job_id: str, *, executor: str = "slurm", poll_s: float = 3.0,
    on_progress: Callable[[Progress], None] = lambda p: None, epilog_grace_s: float = 20.0,
) -> str:
    """Poll until the run ends; return its end state (``COMPLETED``, ``FAILED``, ...).

    After Slurm reports a final state, waits up to ``epilog_grace_s`` for the epilog's
    verdict to appear in ``run.json`` (sites without the epilog still get Slurm's state).
    """
    run_dir = Path(run_dir)
    while True:
        p = observe(run_dir, job_id, executor)
        on_progress(p)
        if is_over(p, executor):
            break
        time.sleep(poll_s)
    deadline = time.monotonic() + epilog_grace_s
    while executor == Executor.SLURM and p.end_state is None and time.monotonic() < deadline:
        time.sleep(min(poll_s, 1.0))
        p = observe(run_dir, job_id, executor)
    on_progress(p)
    return final_state(p)
