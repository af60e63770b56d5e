"""The words runs are described with, as types: the job's own status, the epilog's end
state, the executor. One definition each, shared by every layer (core room: imports nothing
of the project).

They are ``str`` enums: they compare equal to, and serialise in JSON as, the plain strings
that ``run.json``, the index and older archives hold, so records stay readable both ways.
"""

from __future__ import annotations

from enum import Enum


class _Word(str, Enum):
    """A str enum whose ``str()`` and f-string form is its value (``COMPLETED``)."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = str.__format__


class JobStatus(_Word):
    """What the job says about itself in ``run.json`` → ``status`` (and each attempt's)."""

    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    REQUEUING = "REQUEUING"  # submitit checkpointed it and asked Slurm to requeue


class EndState(_Word):
    """The epilog's verdict on an attempt → ``end_state`` (docs/admin.md, "End states")."""

    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"
    REQUEUED = "REQUEUED"
    NODE_FAIL = "NODE_FAIL"
    UNKNOWN = "UNKNOWN"


class Executor(_Word):
    """Where a run's job runs."""

    SLURM = "slurm"   # sbatch through submitit; the epilog archives it
    LOCAL = "local"   # a child process here; its last sync is its archive


# Slurm job states (squeue/scontrol ``JobState``) after which a job has ended and its
# epilogs have run (it left COMPLETING). A requeued job goes back to PENDING instead.
SLURM_ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                         "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"})
