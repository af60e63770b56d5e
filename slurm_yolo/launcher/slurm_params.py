"""Pure builders and parsers: config -> submitit/sbatch parameters, the epilog marker, the
batch script; sbatch's refusal -> one error line.

Nothing here runs a command or touches the filesystem, so the exact sbatch parameters a
config produces are checked against a golden file in the tests, and the refusals against
sbatch's real messages.
"""

from __future__ import annotations

import shlex
from typing import Any

from slurm_yolo.config import Config
from slurm_yolo.mode import SELF_ARCHIVE_MODULE
from slurm_yolo.errors import SubmitError, SubmitRefused
from slurm_yolo.names import MARKER_PREFIX
from slurm_yolo.timeparse import time_minutes


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


def submit_command(python: str, folder: str, *, self_archive: bool = False) -> str:
    """The command submitit puts in the batch script (what runs the pickled job); with
    ``self_archive`` (user mode) srun runs in the background and the shell waits for it
    (:data:`SELF_ARCHIVE_WAIT`)."""
    command = " ".join([shlex.quote(python), "-u -m submitit.core._submit", shlex.quote(folder)])
    return command + SELF_ARCHIVE_WAIT if self_archive else command


# Appended to submitit's srun line in user mode: bash runs a trap only once its foreground
# command returned, and SIGKILL follows SIGTERM KillWait later while the training step still
# runs; so srun goes to the background and the `wait` builtin, which a trapped signal
# interrupts, waits for it.
SELF_ARCHIVE_WAIT = " &\n_slurm_yolo_wait $!"


def self_archive_setup(python: str, folder: str) -> dict[str, list[str]]:
    """submitit's ``setup``/``teardown`` lines by which a job archives itself (user mode).

    The batch step outlives the training step (a Python error, an OOM-killed srun step), so
    after srun the teardown archives with srun's exit status. A SIGTERM (scancel, time
    limit, requeue, pre-emption) reaches the batch shell at once and SIGKILL follows
    ``KillWait`` later, while the training step is still running: the shell's trap archives
    then (srun runs in the background: :data:`SELF_ARCHIVE_WAIT`), and the teardown does not
    archive again. A requeued job's batch step first archives the attempt before it, if that
    archive did not finish. The claim makes it one archive whatever else runs.

    Args:
        python: the interpreter that submitted (the job's own).
        folder: the marker's folder (the run folder, or the sweep folder of an array).
    """
    archive = " ".join([shlex.quote(python), "-m", SELF_ARCHIVE_MODULE, "archive", shlex.quote(folder)])
    return {
        "setup": [
            "# slurm-yolo user mode: this cluster has no slurm-yolo epilog, so the job archives itself",
            f"_slurm_yolo_archive() {{ {archive} \"$@\" || true; }}",
            "trap '_slurm_yolo_termed=1; _slurm_yolo_archive --why SIGTERM' TERM",
            # wait returns early on a trapped signal: wait again until srun itself has ended.
            '_slurm_yolo_wait() { while :; do wait "$1"; _slurm_yolo_step=$?; kill -0 "$1" 2>/dev/null || break; done; }',
            # A requeued job: archive the attempt before this one if nothing finished that (its
            # SIGTERM archive cut short by SIGKILL, its node dead), before training touches the folder.
            '[ "${SLURM_RESTART_COUNT:-0}" = 0 ] || _slurm_yolo_archive --why requeued',
        ],
        "teardown": [
            '[ -n "${_slurm_yolo_termed:-}" ] || _slurm_yolo_archive --why exit --step-exit "$_slurm_yolo_step"',
            'exit "$_slurm_yolo_step"',
        ],
    }


def batch_script(params: dict[str, Any], *, python: str, folder: str, array_size: int | None = None,
                 self_archive: bool = False) -> str:
    """The sbatch script submitit would submit for these parameters (for ``--dry-run``).

    Uses submitit's own renderer so what is printed is what would be submitted.
    """
    from submitit.slurm.slurm import _make_sbatch_string  # submitit's renderer; pure

    extra = {"map_count": array_size} if array_size else {}
    return _make_sbatch_string(command=submit_command(python, folder, self_archive=self_archive), folder=folder,
                               **params, **extra)


def local_command(python: str, folder: str) -> str:
    """What ``--executor local`` runs on this machine (it has no batch script), for ``--dry-run``."""
    return f"# --executor local: no sbatch; this machine runs\n{submit_command(python, folder)}\n"


# What sbatch says (lower-cased fragment) -> where the fix is. First match wins.
REFUSAL_FIXES: tuple[tuple[str, str], ...] = (
    ("accounting/qos policy", "a limit of your account or QOS (jobs, size or time; `sacctmgr show qos`): "
                              "wait for your jobs or ask for less"),
    ("account", "check slurm.account and slurm.partition (`sacctmgr show assoc user=$USER` lists yours)"),
    ("partition", "check slurm.partition (`sinfo -s` lists this cluster's partitions)"),
    ("gres", "slurm.gpus asks for GPUs these nodes do not have: set slurm.gpus=0 or a GPU slurm.partition"),
    ("memory specification", "slurm.mem is more than a node has (`sinfo -N -l` lists nodes)"),
    ("node configuration is not available",
     "ask for what a node has: slurm.cpus_per_task, slurm.mem, slurm.gpus, slurm.nodes (`sinfo -N -l` lists nodes)"),
    ("feature", "check slurm.extra.constraint (`sinfo -o '%P %f'` lists node features)"),
    ("time limit", "slurm.time is over the partition's limit (`sinfo -o '%P %l'`)"),
    ("qos", "check slurm.qos (`sacctmgr show qos` lists them)"),
    ("unrecognized option", "check slurm.extra: its keys are sbatch option names (`sbatch --help`)"),
    ("invalid --", "check slurm.extra: its values must be what `sbatch --help` says"),
)
# sbatch failing to reach Slurm: not the config's fault, so not exit 2.
UNREACHABLE = ("unable to contact slurm controller", "socket timed out", "resource temporarily unavailable",
               "connection refused", "slurm_persist_conn")
_SBATCH_PREFIXES = ("sbatch: error: ", "sbatch: fatal: ", "sbatch: ")
# How sbatch introduces Slurm's verdict: when submitting, and with --test-only (the dry run).
_FAILED = ("batch job submission failed: ", "allocation failure: ")


def sbatch_reason(stderr: str) -> str:
    """Slurm's reason, one line, from a refused sbatch's stderr.

    ``sbatch: error: invalid partition specified: nope`` + ``sbatch: error: Batch job submission
    failed: Invalid partition name specified`` → ``invalid partition specified: nope (Invalid
    partition name specified)``. Prefixes, repeats and sbatch's ``Try "sbatch --help"`` go.
    """
    details: list[str] = []
    failed = None
    for line in stderr.splitlines():
        line = " ".join(line.split())
        for prefix in _SBATCH_PREFIXES:
            if line.lower().startswith(prefix):
                line = line[len(prefix):]
                break
        if not line or line.lower().startswith('try "sbatch --help"'):
            continue
        verdict = next((f for f in _FAILED if line.lower().startswith(f)), None)
        if verdict:
            failed = line[len(verdict):]
        elif line not in details:
            details.append(line)
    if failed and details:
        return f"{'; '.join(details)} ({failed})"
    return failed or "; ".join(details) or "no reason given"


def sbatch_refusal(stderr: str, returncode: int | None = None) -> SubmitError:
    """The one-line error for a failed sbatch: :class:`SubmitRefused` (exit 2) with Slurm's
    reason and where to fix it, or :class:`SubmitError` when Slurm could not be reached."""
    reason = sbatch_reason(stderr)
    if reason == "no reason given" and returncode is not None:
        reason = f"exit code {returncode}, no reason given"
    low = reason.lower()
    if any(u in low for u in UNREACHABLE):
        return SubmitError(f"sbatch could not reach Slurm: {reason}; try again, or ask your admin if it "
                           "persists; nothing was submitted")
    fix = next((f for fragment, f in REFUSAL_FIXES if fragment in low), "fix the slurm.* setting it names")
    return SubmitRefused(f"sbatch refused the job: {reason}; {fix}; nothing was submitted")
