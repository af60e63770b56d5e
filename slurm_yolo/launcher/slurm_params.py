"""Pure builders: config -> submitit/sbatch parameters, the epilog marker, the batch script.

Nothing here runs a command or touches the filesystem, so the exact sbatch parameters a
config produces are checked against a golden file in the tests.
"""

from __future__ import annotations

import shlex
from typing import Any

from slurm_yolo.config import Config
from slurm_yolo.timeparse import time_minutes
from slurm_yolo.names import MARKER_PREFIX



def make_marker(path: str) -> str:
    """The ``--comment`` value that tells the epilog where the run (or sweep) folder is."""
    return MARKER_PREFIX + path


def slurm_parameters(config: Config, *, job_name: str, marker: str) -> dict[str, Any]:
    """submitit ``SlurmExecutor.update_parameters`` keywords for a config.

    Args:
        config: the validated config.
        job_name: Slurm job name (shows in squeue).
        marker: the epilog marker (see :func:`make_marker`), passed as ``--comment``.
    """
    s = config.slurm
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": time_minutes(s["time"]),
        # One task per node: on one node it trains (Ultralytics spawns its own DDP workers);
        # on several, each task starts its node's torchrun (slurm_yolo.job.distributed).
        "nodes": s["nodes"],
        "ntasks_per_node": 1,
        "cpus_per_task": s["cpus_per_task"],
        "mem": s["mem"],
        "comment": marker,
        # submitit sends USR2 this long before the time limit: time to checkpoint + requeue.
        "signal_delay_s": s["signal_delay_s"],
        "stderr_to_stdout": True,
        # Requeue (pre-emption, `scontrol requeue`) must keep the job ID and the run folder.
        "additional_parameters": {"requeue": True, **{k.replace("_", "-"): v for k, v in s["extra"].items()}},
    }
    if s["nodes"] > 1:
        # A task that dies before its torchrun starts (or whose node dies) ends the step at
        # once, instead of leaving the other nodes waiting out the rendezvous timeout.
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    if s["gpus"]:
        params["gpus_per_node"] = s["gpus"]
    for key in ("partition", "account", "qos"):
        if s[key]:
            params[key] = s[key]
    return params


def submit_command(python: str, folder: str) -> str:
    """The command submitit puts in the batch script (what runs the pickled job)."""
    return " ".join([shlex.quote(python), "-u -m submitit.core._submit", shlex.quote(folder)])


def batch_script(params: dict[str, Any], *, python: str, folder: str, array_size: int | None = None) -> str:
    """The sbatch script submitit would submit for these parameters (for ``--dry-run``).

    Uses submitit's own renderer so what is printed is what would be submitted.
    """
    from submitit.slurm.slurm import _make_sbatch_string  # submitit's renderer; pure

    extra = {"map_count": array_size} if array_size else {}
    return _make_sbatch_string(command=submit_command(python, folder), folder=folder, **params, **extra)
