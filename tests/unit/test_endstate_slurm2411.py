"""The end-state rules on what Slurm 24.11.5 showed the epilog (captured, not made up).

Each file in tests/data/slurm-24.11/ is one real epilog's environment and the
``scontrol show job`` it ran, recorded by the 24.11 dev cluster's second ``Epilog=`` entry
(``scripts/dev-cluster.sh up --slurm 24.11``, log/epilog-env/; see the README there). What the
job itself recorded (its status and signals) is taken from the same runs' ``run.json``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_yolo.epilog.endstate import Evidence, decide
from slurm_yolo.epilog.slurm_parse import oom_in_log_text
from slurm_yolo.scontrol import parse_scontrol

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm-24.11"


def captured(name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(epilog environment, scontrol fields) of one captured epilog."""
    env_text, _, scontrol_text = (DATA / f"epilog_{name}.txt").read_text().partition("--- scontrol show job\n")
    env = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
    return env, parse_scontrol(scontrol_text, env["SLURM_JOB_ID"])


def evidence(name: str, **job) -> Evidence:
    env, fields = captured(name)
    return Evidence(exit_code2=env["SLURM_JOB_EXIT_CODE2"], restart_count=int(env["SLURM_JOB_RESTART_COUNT"]),
                    scontrol=fields, **job)


@pytest.mark.parametrize("name, job, state", [
    ("success", dict(job_status="COMPLETED"), "COMPLETED"),
    ("training_error", dict(job_status="FAILED"), "FAILED"),                   # exit 1:0
    ("exit3", dict(job_status="RUNNING", attempt=2), "FAILED"),                 # 3:0 (restarted once by a node death)
    ("oom_batch", dict(job_status="RUNNING", attempt=2), "OUT_OF_MEMORY"),      # 0:125, Reason=OutOfMemory
    # srun step OOM: 1:0 and Reason=NonZeroExitCode as in 22.05; slurmstepd's report decides it.
    ("oom_srun", dict(job_status="RUNNING", oom_in_log=True), "OUT_OF_MEMORY"),
    ("timelimit", dict(job_status="RUNNING", attempt=2, job_signals=("SIGTERM",)), "TIMEOUT"),  # Slurm's kill
    ("scancel", dict(job_status="RUNNING", job_signals=("SIGTERM",)), "CANCELLED"),
    ("scontrol_requeue", dict(job_status="RUNNING", job_signals=("SIGTERM",)), "REQUEUED"),
    ("preempted", dict(job_status="RUNNING", job_signals=("SIGTERM", "SIGTERM")), "REQUEUED"),
    # 24.11.5 requeues a pre-empted job once more when its resumed attempt completes.
    ("preempted_extra_requeue", dict(job_status="COMPLETED", attempt=2), "REQUEUED"),
    ("node_death_norequeue", dict(job_status="RUNNING", node_down=True), "NODE_FAIL"),
    ("node_death_requeue", dict(job_status="RUNNING", node_down=True), "NODE_FAIL"),
])
def test_decide_on_slurm_2411(name, job, state):
    assert decide(evidence(name, **job)).state == state


def test_what_changed_in_2411():
    env, fields = captured("oom_srun")
    # New in the node epilog: the job's nodes and the derived exit code (signal 125: a step's OOM).
    assert env["SLURM_JOB_NODELIST"] == "s2411" and int(env["SLURM_JOB_DERIVED_EC"]) & 0x7F == 125
    assert (env["SLURM_JOB_EXIT_CODE2"], fields["Reason"]) == ("1:0", "NonZeroExitCode")
    env, fields = captured("node_death_norequeue")
    assert env["SLURM_SCRIPT_CONTEXT"] == "epilog_slurmctld" and fields["Reason"] == "NodeDown"


def test_oom_report_of_2411_is_recognised():
    log = ("[slurm-yolo] run 20261128_064124_ic3tcabe attempt 1 on vm\n"
           "slurmstepd-s2411: error: Detected 1 oom_kill event in StepId=240004.0. "
           "Some of the step tasks have been OOM Killed.\n")
    assert oom_in_log_text(log, 1)
