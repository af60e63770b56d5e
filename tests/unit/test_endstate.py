"""End-state decisions: a table of evidence (as observed on the real cluster) → verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_yolo.epilog.endstate import Evidence, decide
from slurm_yolo.scontrol import parse_scontrol

# Real captures (tests/data/slurm/README.md): an OOM-killed job seen during its epilog, with
# spaces in its comment and work dir; an array of two, by its array ID (both elements).
SLURM_DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"
SCONTROL_OOM = (SLURM_DATA / "scontrol_job_oom_completing_spaces.txt").read_text()
SCONTROL_ARRAY = (SLURM_DATA / "scontrol_job_array_all.txt").read_text()


def ev(**kw):
    return Evidence(**kw)


@pytest.mark.parametrize("evidence, state", [
    (ev(exit_code2="0:0", job_status="COMPLETED", scontrol={"Reason": "None", "ExitCode": "0:0"}), "COMPLETED"),
    (ev(exit_code2="0:0", job_status="COMPLETED"), "COMPLETED"),
    (ev(exit_code2="3:0", job_status="RUNNING"), "FAILED"),
    (ev(exit_code2="1:0", job_status="FAILED"), "FAILED"),
    (ev(exit_code2="0:125", job_status="RUNNING", scontrol={"Reason": "OutOfMemory"}), "OUT_OF_MEMORY"),
    (ev(exit_code2="0:125", job_status="RUNNING"), "OUT_OF_MEMORY"),
    (ev(exit_code2="0:0", job_status="RUNNING", job_signals=("SIGTERM",),
        scontrol={"Reason": "TimeLimit", "ExitCode": "0:15"}), "TIMEOUT"),
    (ev(exit_code2="0:0", job_status="RUNNING", job_signals=("SIGTERM",),
        scontrol={"Reason": "None", "ExitCode": "0:15"}), "CANCELLED"),
    (ev(exit_code2="0:0", job_status="RUNNING", job_signals=("SIGTERM",)), "CANCELLED"),
    (ev(exit_code2="0:0", restart_count=1, attempt=1, job_status="RUNNING", job_signals=("SIGTERM",),
        scontrol={"Restarts": "1", "JobState": "REQUEUED"}), "REQUEUED"),
    (ev(exit_code2="0:0", restart_count=1, attempt=1, job_status="RUNNING", job_signals=("SIGUSR2",)), "PREEMPTED"),
    (ev(exit_code2="0:0", restart_count=1, attempt=2, job_status="COMPLETED", scontrol={"Restarts": "1"}),
     "COMPLETED"),
    (ev(exit_code2="1:0", job_status="FAILED", job_signals=("SIGUSR2",)), "TIMEOUT"),
    (ev(exit_code2="0:0", job_status="RUNNING"), "UNKNOWN"),
    (ev(exit_code2=None, job_status=None), "UNKNOWN"),
])
def test_decide(evidence, state):
    assert decide(evidence).state == state


def test_verdict_keeps_evidence_and_exit_code():
    v = decide(ev(exit_code2="3:0", job_status="FAILED"))
    assert v.exit_code == 3 and v.to_dict()["evidence"]["exit_code2"] == "3:0"


def test_parse_scontrol():
    f = parse_scontrol(SCONTROL_OOM)
    assert f["JobState"] == "COMPLETING" and f["Reason"] == "OutOfMemory" and f["ExitCode"] == "0:125"
    assert f["Restarts"] == "0" and f["Comment"] == "slurm-yolo:v1:/tmp/fixcap/no such run"
    assert f["WorkDir"] == "/tmp/fixcap/with space" and f["StdOut"] == "/tmp/fixcap/with space/oom_66.out"


def test_parse_scontrol_picks_the_array_element():
    assert parse_scontrol(SCONTROL_ARRAY, "51")["ArrayTaskId"] == "1"  # the raw ID 51 is task 1
    assert parse_scontrol(SCONTROL_ARRAY, "53")["ArrayTaskId"] == "0"
    assert parse_scontrol(SCONTROL_ARRAY, "51_0")["JobId"] == "53"
    assert parse_scontrol(SCONTROL_ARRAY, "99") == {}


def test_step_oom_seen_only_in_the_log_is_out_of_memory():
    v = decide(ev(exit_code2="1:0", job_status="RUNNING", oom_in_log=True,
                  scontrol={"Reason": "NonZeroExitCode", "ExitCode": "1:0"}))
    assert v.state == "OUT_OF_MEMORY"


def test_oom_report_counts_only_for_this_attempt():
    from slurm_yolo.epilog.slurm_parse import oom_in_log_text

    log = ("[slurm-yolo] run r attempt 1 on vm\nslurmstepd-vm: error: Detected 1 oom-kill event(s) in StepId=5.0.\n"
           "[slurm-yolo] run r attempt 2 on vm\nepoch 1\n")
    assert oom_in_log_text(log, 1) and not oom_in_log_text(log, 2)
