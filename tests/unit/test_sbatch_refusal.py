"""sbatch's refusals, parsed into one line with Slurm's reason and where the fix is.

The stderr texts are sbatch's own, captured on the dev clusters (Slurm 22.05.8; 24.11.5 gave
the same text for the partition, gres and feature cases) with the option in the first column.
Two are not captured here, since the dev clusters run without slurmdbd and with a controller
that answers: the account refusal and the unreachable controller are Slurm's wording from its
error table (``slurm_errno.c``).
"""

from __future__ import annotations

import subprocess

import pytest

from slurm_yolo.errors import SubmitError, SubmitRefused
from slurm_yolo.launcher.slurm_params import sbatch_reason, sbatch_refusal
from slurm_yolo.launcher.submit import submission_error

CAPTURED = [
    ("--partition=nope",
     "sbatch: error: invalid partition specified: nope\n"
     "sbatch: error: Batch job submission failed: Invalid partition name specified\n",
     "invalid partition specified: nope (Invalid partition name specified)", "check slurm.partition"),
    ("--mem=999999G",
     "sbatch: error: Memory specification can not be satisfied\n"
     "sbatch: error: Batch job submission failed: Requested node configuration is not available\n",
     "Memory specification can not be satisfied (Requested node configuration is not available)", "slurm.mem"),
    ("--gpus-per-node=1", "sbatch: error: Invalid generic resource (gres) specification\n",
     "Invalid generic resource (gres) specification", "slurm.gpus asks for GPUs"),
    ("--constraint=a100", "sbatch: error: Batch job submission failed: Invalid feature specification\n",
     "Invalid feature specification", "check slurm.extra.constraint"),
    ("--bogus-opt=1", "sbatch: unrecognized option '--bogus-opt=1'\nTry \"sbatch --help\" for more information\n",
     "unrecognized option '--bogus-opt=1'", "check slurm.extra"),
    ("--mail-type=WRONG", "sbatch: error: Invalid --mail-type specification\n",
     "Invalid --mail-type specification", "check slurm.extra"),
    # the dry run's sbatch --test-only words Slurm's verdict as "allocation failure"
    ("--test-only --partition=nope",
     "sbatch: error: invalid partition specified: nope\nallocation failure: Invalid partition name specified\n",
     "invalid partition specified: nope (Invalid partition name specified)", "check slurm.partition"),
    ("--test-only --constraint=a100", "allocation failure: Invalid feature specification\n",
     "Invalid feature specification", "check slurm.extra.constraint"),
    ("--test-only --mem=999999G", "allocation failure: Requested node configuration is not available\n",
     "Requested node configuration is not available", "ask for what a node has"),
    ("--account=x (with accounting)",
     "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified\n",
     "Invalid account or account/partition combination specified", "check slurm.account"),
]


@pytest.mark.parametrize("option, stderr, reason, fix", CAPTURED, ids=[c[0] for c in CAPTURED])
def test_refusal_is_one_line_with_the_reason_and_the_fix(option, stderr, reason, fix):
    assert sbatch_reason(stderr) == reason
    err = sbatch_refusal(stderr, 1)
    assert isinstance(err, SubmitRefused) and err.exit_code == 2
    msg = str(err)
    assert "\n" not in msg and "sbatch: error" not in msg
    assert msg.startswith(f"sbatch refused the job: {reason}; {fix}") and msg.endswith("; nothing was submitted")


def test_unreachable_controller_is_not_bad_input():
    err = sbatch_refusal("sbatch: error: Batch job submission failed: Unable to contact slurm controller "
                         "(connect failure)\n", 1)
    assert type(err) is SubmitError and err.exit_code == 1
    assert str(err).startswith("sbatch could not reach Slurm: Unable to contact slurm controller (connect failure);")


def test_silent_failure_says_the_exit_code():
    assert "exit code 1, no reason given" in str(sbatch_refusal("", 1))


def test_submitits_error_is_read_through_to_sbatchs_stderr():
    """submitit raises FailedJobError(stderr) from CalledProcessError(['sbatch', path]): the
    launcher reads the cause, whatever submitit's own message."""
    cause = subprocess.CalledProcessError(1, ["sbatch", "/r/slurm/.submission_file_x.sh"],
                                          stderr="sbatch: error: invalid partition specified: nope\n")
    try:
        raise RuntimeError("submitit's wording") from cause
    except RuntimeError as e:
        err = submission_error(e, "run-1")
    assert isinstance(err, SubmitRefused) and "invalid partition specified: nope" in str(err)
    other = submission_error(OSError("disk full"), "run-1")
    assert type(other) is SubmitError and str(other) == "submission of run-1 failed: disk full; nothing was submitted"


def test_test_only_estimate_is_slurms_line():
    line = "sbatch: Job 75 to start at 2026-12-03T13:31:49 using 1 processors on nodes vm in partition debug\n"
    assert sbatch_reason(line) == line.strip().removeprefix("sbatch: ")
