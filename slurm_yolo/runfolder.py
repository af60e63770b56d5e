"""The run folder's contract: the names every room agrees on, written once.

The launcher creates a run folder, the job fills it, the epilog, the drain and the
reconciler read it as root, the catalog reads the archived copy. Each of them used to spell
the file names (and the job's attempt banner, and the attempt key of claims and spool
entries) on its own; here they are one decision each::

    <runs_root>/<run_id>/                  a run folder
        run.json                           the record (slurm_yolo.record)
        .placement.json                    where the launcher said the run is archived (kept
                                           apart from run.json: a damaged record does not move the run)
        results.csv  args.yaml             what Ultralytics writes
        weights/last.pt  weights/best.pt   (+ weights/last.good.pt: the monitor's copy)
        train.log                          the job's output, with one banner per attempt
        slurm/                             submitit's logs and pickles (single runs)
    <runs_root>/_sweeps/<sweep_id>/        a sweep: array.json + the array's slurm/ logs
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RUN_JSON = "run.json"
PLACEMENT = ".placement.json"
RESULTS_CSV = "results.csv"
ARGS_YAML = "args.yaml"
TRAIN_LOG = "train.log"
SLURM_LOGS = "slurm"
WEIGHTS = "weights"
LAST_PT = "last.pt"
BEST_PT = "best.pt"
# The monitor's copy of the last checkpoint that loaded: resume falls back to it when a kill
# truncated last.pt (Ultralytics writes it in place).
GOOD_CHECKPOINT = "last.good.pt"
RUN_LOCK = ".run.lock"
# A run.json that could not be used is archived beside the epilog's record under this name.
DAMAGED_RECORD = "run.json.damaged"

SWEEPS_DIR = "_sweeps"
ARRAY_JSON = "array.json"

# The line the job prints (to train.log and its Slurm log) when an attempt starts. Slurm's
# log is appended to across requeues; what follows the last banner of attempt N is attempt N's.
ATTEMPT_BANNER = "[slurm-yolo] run {run_id} attempt {attempt} on {node}"
_BANNER_ATTEMPT = " attempt {attempt} on "


def attempt_banner(run_id: str, attempt: int, node: str) -> str:
    """The banner the job prints when attempt ``attempt`` of ``run_id`` starts on ``node``."""
    return ATTEMPT_BANNER.format(run_id=run_id, attempt=attempt, node=node)


def attempt_start(log_text: str, attempt: int) -> int:
    """Where the last banner of ``attempt`` starts in a log's text; 0 if there is none."""
    found = log_text.rfind(_BANNER_ATTEMPT.format(attempt=attempt))
    if found < 0:
        return 0
    line = log_text.rfind("\n", 0, found) + 1
    return line


_KEY_RE = re.compile(r"(?P<uid>\d+)\.(?P<job>\d+)\.(?P<run>[A-Za-z0-9][A-Za-z0-9._-]{0,63})\.a(?P<attempt>\d+)")


@dataclass(frozen=True, order=True)
class AttemptKey:
    """One attempt of one run of one job: the name of its claim and of its spool entry.

    ``str(key)`` is ``<uid>.<job_id>.<run_id>.a<attempt>``. The job ID is Slurm's raw job
    ID (an array element's ``123_4`` is not one: such IDs are recorded as ``0``).
    """

    uid: int
    job_id: str
    run_id: str
    attempt: int

    @classmethod
    def of(cls, uid: int, job_id: str, run_id: str, attempt: int) -> "AttemptKey":
        """The key of an attempt, with the job ID normalised as Slurm's raw ID."""
        return cls(int(uid), str(job_id) if str(job_id).isdigit() else "0", run_id, int(attempt))

    @property
    def run_key(self) -> str:
        """What identifies the run across its attempts: ``<uid>.<job_id>.<run_id>``."""
        return f"{self.uid}.{self.job_id}.{self.run_id}"

    def __str__(self) -> str:
        return f"{self.run_key}.a{self.attempt}"

    @classmethod
    def parse(cls, name: str) -> "AttemptKey | None":
        """The key a claim or spool entry is named by; ``None`` for any other name."""
        m = _KEY_RE.fullmatch(name)
        if m is None:
            return None
        return cls(int(m["uid"]), m["job"], m["run"], int(m["attempt"]))
