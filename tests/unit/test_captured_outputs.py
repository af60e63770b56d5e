"""Every parser over real output captured from the dev cluster (see the READMEs in tests/data/).

Slurm 22.05.8 (scontrol, squeue), s5cmd 2.3.0 against the dev cluster's store, and an
Ultralytics 8.4 ``results.csv``. The assertions are on the fields the code decides with.
"""

from __future__ import annotations

import shutil
import sys
from datetime import datetime
from pathlib import Path

import pytest

from slurm_yolo import record as rec
from slurm_yolo.archive import s5cmd
from slurm_yolo.commands import run_command
from slurm_yolo.epilog.endstate import Evidence, decide, node_failed
from slurm_yolo.epilog.reconcile import due, job_env
from slurm_yolo.epilog.slurm_parse import QueuedJob, down_nodes, parse_squeue
from slurm_yolo.scontrol import parse_scontrol
from slurm_yolo.states import SLURM_ENDED as ENDED
from slurm_yolo.errors import CommandError
from slurm_yolo.job.steps import _epoch_of, truncate_results
from slurm_yolo.launcher.watch import Progress, is_over, parse_squeue_state

DATA = Path(__file__).resolve().parents[1] / "data"
SLURM, S5CMD, ULTRALYTICS = DATA / "slurm", DATA / "s5cmd", DATA / "ultralytics"


def slurm(name: str) -> str:
    return (SLURM / name).read_text()


# ---------------------------------------------------------------------------------------------
# scontrol show job
# ---------------------------------------------------------------------------------------------

ARRAY_TASK_0 = {"JobId": "53", "ArrayJobId": "51", "ArrayTaskId": "0", "JobState": "COMPLETED",
                "Reason": "None", "ExitCode": "0:0", "Restarts": "0"}
ARRAY_TASK_1 = {**ARRAY_TASK_0, "JobId": "51", "ArrayTaskId": "1"}


@pytest.mark.parametrize("name, job_id, expected", [
    ("scontrol_job_oom.txt", "49", {"JobState": "OUT_OF_MEMORY", "Reason": "OutOfMemory", "ExitCode": "0:125",
                                    "Restarts": "0", "Comment": "fixture-capture"}),
    # During the epilog: COMPLETING, but the reason and the signal are there already.
    ("scontrol_job_oom_completing.txt", "57", {"JobState": "COMPLETING", "Reason": "OutOfMemory",
                                               "ExitCode": "0:125", "Restarts": "0",
                                               "Comment": "slurm-yolo:v1:/tmp/fixcap/no-such-run"}),
    # A time-out while being killed shows ExitCode=0:0: only Reason=TimeLimit tells.
    ("scontrol_job_timeout_completing.txt", "50", {"JobState": "COMPLETING", "Reason": "TimeLimit",
                                                   "ExitCode": "0:0", "Restarts": "0"}),
    ("scontrol_job_timeout.txt", "50", {"JobState": "TIMEOUT", "Reason": "TimeLimit", "ExitCode": "0:15"}),
    ("scontrol_job_timeout_killed.txt", "55", {"JobState": "TIMEOUT", "Reason": "TimeLimit", "ExitCode": "0:9"}),
    # scontrol requeue: COMPLETING (never REQUEUED) with Restarts already counted, then PENDING.
    ("scontrol_job_requeue_completing.txt", "56", {"JobState": "COMPLETING", "Reason": "None", "ExitCode": "0:0",
                                                   "Restarts": "2"}),
    ("scontrol_job_requeued_pending.txt", "52", {"JobState": "PENDING", "Reason": "BeginTime", "ExitCode": "0:0",
                                                 "Restarts": "1"}),
    # An array element, asked by <array>_<task> and by its raw id, alone or among its siblings.
    ("scontrol_job_array_task.txt", "51_0", ARRAY_TASK_0),
    ("scontrol_job_array_task.txt", "53", ARRAY_TASK_0),
    ("scontrol_job_array_raw.txt", "53", ARRAY_TASK_0),
    ("scontrol_job_array_raw.txt", "51_0", ARRAY_TASK_0),
    ("scontrol_job_array_all.txt", "51_0", ARRAY_TASK_0),
    ("scontrol_job_array_all.txt", "53", ARRAY_TASK_0),
    ("scontrol_job_array_all.txt", "51_1", ARRAY_TASK_1),
    ("scontrol_job_array_all.txt", "51", ARRAY_TASK_1),  # the raw id 51 is task 1's
])
def test_parse_scontrol(name, job_id, expected):
    fields = parse_scontrol(slurm(name), job_id)
    assert {k: fields.get(k) for k in expected} == expected
    assert not node_failed(fields)
    if "array_all" not in name:  # one record: asking for no ID in particular gives it too
        assert parse_scontrol(slurm(name)) == fields


@pytest.mark.parametrize("name, job_id", [("scontrol_job_array_all.txt", "51_7"), ("scontrol_job_array_all.txt", "99"),
                                          ("scontrol_job_oom.txt", "50")])
def test_parse_scontrol_other_job_is_empty(name, job_id):
    assert parse_scontrol(slurm(name), job_id) == {}


def test_parse_scontrol_keeps_line_long_values():
    fields = parse_scontrol(slurm("scontrol_job_oom.txt"))
    assert fields["WorkDir"] == "/tmp/fixcap" and fields["StdOut"] == "/tmp/fixcap/oom_49.out"
    assert fields["Comment"] == "fixture-capture"  # scontrol pads it with a space


# What the end-state rules decide from Slurm's word alone (the job's record damaged) and with the
# epilog environment's "0:0", which tells nothing (module docstring of endstate).
@pytest.mark.parametrize("name, job_id, state", [
    ("scontrol_job_oom.txt", "49", "OUT_OF_MEMORY"),
    ("scontrol_job_oom_completing.txt", "57", "OUT_OF_MEMORY"),
    ("scontrol_job_timeout_completing.txt", "50", "TIMEOUT"),   # ExitCode=0:0 and COMPLETING: not COMPLETED
    ("scontrol_job_timeout.txt", "50", "TIMEOUT"),
    ("scontrol_job_timeout_killed.txt", "55", "TIMEOUT"),       # signal 9, but not a cancel
    ("scontrol_job_requeue_completing.txt", "56", "REQUEUED"),
    ("scontrol_job_requeued_pending.txt", "52", "REQUEUED"),
    ("scontrol_job_array_task.txt", "51_0", "COMPLETED"),
])
def test_decide_from_slurm_alone(name, job_id, state):
    e = Evidence(exit_code2="0:0", record_damaged=True, scontrol=parse_scontrol(slurm(name), job_id))
    assert decide(e).state == state


@pytest.mark.parametrize("name, job_id, evidence, state", [
    # The job caught the SIGTERM of the time limit: still a time-out, not a cancel.
    ("scontrol_job_timeout_completing.txt", "50", dict(job_status="RUNNING", job_signals=("SIGTERM",)), "TIMEOUT"),
    # Second requeue of job 56: attempt 2 ended, Slurm already counts 2 restarts.
    ("scontrol_job_requeue_completing.txt", "56",
     dict(job_status="RUNNING", job_signals=("SIGTERM",), attempt=2, restart_count=2), "REQUEUED"),
    ("scontrol_job_oom_completing.txt", "57", dict(exit_code2="0:125", job_status="RUNNING"), "OUT_OF_MEMORY"),
    ("scontrol_job_array_task.txt", "51_0", dict(job_status="COMPLETED"), "COMPLETED"),
])
def test_decide_with_the_jobs_record(name, job_id, evidence, state):
    evidence = {"exit_code2": "0:0", **evidence}
    assert decide(Evidence(scontrol=parse_scontrol(slurm(name), job_id), **evidence)).state == state


@pytest.mark.parametrize("name, down", [("scontrol_node_down.txt", ["n1"]), ("scontrol_node_up.txt", [])])
def test_down_nodes(name, down):
    assert down_nodes(slurm(name)) == down


# ---------------------------------------------------------------------------------------------
# squeue, as submit --wait reads it (launcher/watch.py)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, state, over", [
    ("squeue_watch_completing.txt", "COMPLETING", False),          # time limit, epilog not done
    ("squeue_watch_requeue_completing.txt", "COMPLETING", False),  # scontrol requeue, being killed
    ("squeue_watch_requeued.txt", "PENDING", False),               # requeued: it will run again
    ("squeue_watch_timeout.txt", "TIMEOUT", True),
    ("squeue_watch_array_all.txt", "COMPLETED", True),             # -j <array>: one line per element
    ("squeue_watch_unknown.stdout", None, True),                   # forgotten (after MinJobAge)
])
def test_squeue_watch(name, state, over):
    assert parse_squeue_state(slurm(name)) == state
    p = Progress(state, "RUNNING", None, attempt=1, epoch=0, epochs=3)
    assert is_over(p, "slurm") is over


def test_squeue_unknown_job_error_is_recognised():
    # observe() tells "squeue forgot the job" from "squeue failed" by this text in the detail.
    argv = [sys.executable, "-c", "import sys; sys.stderr.write(open(sys.argv[1]).read()); sys.exit(1)",
            str(SLURM / "squeue_watch_unknown.stderr")]
    with pytest.raises(CommandError) as info:
        run_command(argv, "watch")
    assert "Invalid job id" in info.value.detail


# ---------------------------------------------------------------------------------------------
# squeue, as the reconciler reads it (epilog/reconcile.py)
# ---------------------------------------------------------------------------------------------

LATER = datetime(2026, 11, 23, 6, 45, 0)


@pytest.mark.parametrize("name, states, due_ids", [
    ("squeue_reconcile_completing.txt",
     {"50": "COMPLETING", "51_0": "COMPLETED", "51_1": "COMPLETED", "49": "OUT_OF_MEMORY", "54": "OUT_OF_MEMORY",
      "52": "RUNNING", "55": "RUNNING", "56": "RUNNING", "57": "RUNNING"}, ["54"]),
    ("squeue_reconcile_requeue_completing.txt",
     {"56": "COMPLETING", "50": "TIMEOUT", "57": "OUT_OF_MEMORY", "54": "OUT_OF_MEMORY", "51_0": "COMPLETED"},
     ["54", "57"]),
    ("squeue_reconcile_requeued.txt", {"52": "PENDING", "50": "RUNNING", "51_0": "RUNNING", "49": "OUT_OF_MEMORY"},
     []),
    ("squeue_reconcile.txt", {"7": "CANCELLED", "5": "COMPLETED", "6": "COMPLETED", "8": "RUNNING"}, ["7", "6"]),
])
def test_squeue_reconcile(name, states, due_ids):
    jobs = parse_squeue(slurm(name))
    assert {j.job_id: j.state for j in jobs if j.job_id in states} == states
    assert all(j.uid == 0 for j in jobs)
    # Only ended jobs with our marker are due; COMPLETING (epilog running) never is.
    assert [j.job_id for j in due(jobs, 60, LATER)] == due_ids
    assert "COMPLETING" not in ENDED and "PENDING" not in ENDED


def test_squeue_reconcile_fields():
    jobs = {j.job_id: j for j in parse_squeue(slurm("squeue_reconcile_requeue_completing.txt"))}
    assert jobs["56"].end == "NONE"  # a requeued job has no end time
    assert jobs["57"].end == "2026-11-23T06:32:07" and jobs["57"].comment == "slurm-yolo:v1:/tmp/fixcap/no-such-run"
    assert jobs["51_0"].comment == "fixture-capture"
    # Due only once its node epilogs had their time: 06:32:07 + 60 s.
    assert [j.job_id for j in due([jobs["57"]], 60, datetime(2026, 11, 23, 6, 32, 30))] == []


@pytest.mark.parametrize("queued, name, env", [
    (QueuedJob("57", "OUT_OF_MEMORY", 0, "2026-11-23T06:32:07", "slurm-yolo:v1:/tmp/fixcap/no-such-run"),
     "scontrol_job_oom_completing.txt", {"SLURM_JOB_ID": "57", "SLURM_JOB_EXIT_CODE2": "0:125",
                                         "SLURM_JOB_RESTART_COUNT": "0", "SLURM_JOB_NODELIST": "vm"}),
    # squeue names an array element 51_0; the epilog environment has its raw id, 53.
    (QueuedJob("51_0", "COMPLETED", 0, "2026-11-23T06:31:46", "fixture-capture"),
     "scontrol_job_array_task.txt", {"SLURM_JOB_ID": "53", "SLURM_JOB_EXIT_CODE2": "0:0"}),
    (QueuedJob("56", "COMPLETING", 0, "NONE", "fixture-capture"),
     "scontrol_job_requeue_completing.txt", {"SLURM_JOB_ID": "56", "SLURM_JOB_RESTART_COUNT": "2"}),
])
def test_reconciler_env_from_scontrol(queued, name, env):
    got = job_env(queued, parse_scontrol(slurm(name), queued.job_id))
    assert {k: got[k] for k in env} == env


# ---------------------------------------------------------------------------------------------
# s5cmd --json (archive/s5cmd.py)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, returncode, ok, classes, transient", [
    ("ls_prefix", 0, True, [], False),
    ("ls_recursive", 0, True, [], False),
    ("ls_missing", 1, False, ["missing_source"], False),           # "no object found"
    ("ls_missing_prefix", 1, False, ["missing_source"], False),    # "no object found"
    ("cp_missing_key", 1, False, ["missing_source"], False),       # "NoSuchKey: ... status code: 404"
    ("cp_missing_wildcard", 1, False, ["missing_source"], False),  # "no object found"
    ("cp_upload_empty_wildcard", 1, False, ["missing_source"], False),  # "no match found for ..."
    ("refused", 1, False, ["unreachable"], True),
    ("run_partial", 1, False, ["missing_source", "no_bucket"], False),
])
def test_s5cmd_outcomes(name, returncode, ok, classes, transient):
    outcomes = s5cmd.parse_output((S5CMD / f"{name}.stdout").read_text(), (S5CMD / f"{name}.stderr").read_text())
    result = s5cmd.Result(returncode, outcomes)
    assert outcomes and result.ok is ok and result.transient is transient
    assert sorted(o.error_class for o in result.failures) == classes


@pytest.mark.parametrize("name, listed", [
    ("ls_prefix", {"s3://slurm-yolo/fixtures/s5cmd-capture/run1/weights/": None,
                   "s3://slurm-yolo/fixtures/s5cmd-capture/run1/results.csv": 6}),
    ("ls_recursive", {"s3://slurm-yolo/fixtures/s5cmd-capture/run1/results.csv": 6,
                      "s3://slurm-yolo/fixtures/s5cmd-capture/run1/weights/best.pt": 100}),
])
def test_s5cmd_ls(name, listed):
    outcomes = s5cmd.parse_output((S5CMD / f"{name}.stdout").read_text(), "")
    assert {o.source: o.size for o in outcomes} == listed
    assert {o.operation for o in outcomes} == {"ls"}


@pytest.mark.parametrize("name, empty_answer", [("ls_missing_prefix", True), ("cp_missing_wildcard", True),
                                                ("cp_missing_key", False)])
def test_s5cmd_no_object_found_text(name, empty_answer):
    # A wildcard that matched nothing says "no object found": catalog's allow_empty relies on this text.
    (failure,) = s5cmd.parse_output("", (S5CMD / f"{name}.stderr").read_text())
    assert ("no object found" in failure.error) is empty_answer


# ---------------------------------------------------------------------------------------------
# Ultralytics 8.4 results.csv (record.py, job/train.py)
# ---------------------------------------------------------------------------------------------

RESULTS = [
    # name, epochs, best (epoch, map50_95): with every value 0 the last epoch is the best (a tie
    # goes to the later epoch: Ultralytics re-saves best.pt when an epoch equals the best fitness)
    ("results_3ep.csv", 3, (3, 0.0)),
    ("results_40ep.csv", 40, (40, 0.18988)),
]


@pytest.mark.parametrize("name, epochs, best", RESULTS)
def test_results_rows(name, epochs, best):
    path = ULTRALYTICS / name
    header = path.read_text().splitlines()[0].split(",")
    assert header[:2] == ["epoch", "time"] and all(c == c.strip() for c in header)  # 8.4: unpadded, time
    rows = rec.read_results_rows(path)
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    for r in rows:
        assert all(isinstance(r[k], float) for k in ("map50", "map50_95", "precision", "recall"))
    m = rec.read_metrics(path)
    assert m["epochs_done"] == epochs
    top = max(r["map50_95"] for r in rows)
    assert m["map50_95"] == top and m["epoch"] == max(r["epoch"] for r in rows if r["map50_95"] == top)
    assert (m["epoch"], m["map50_95"]) == best


@pytest.mark.parametrize("name, epochs, best", RESULTS)
def test_truncate_results(tmp_path, name, epochs, best):
    src = ULTRALYTICS / name
    lines = src.read_text().splitlines(keepends=True)
    assert [_epoch_of(row) for row in lines[1:]] == list(range(1, epochs + 1))
    assert _epoch_of(lines[0]) is None  # the header
    csv = tmp_path / "results.csv"
    shutil.copy(src, csv)
    assert truncate_results(csv, epochs) == epochs and csv.read_text() == src.read_text()  # nothing to drop
    assert truncate_results(csv, 2) == 2
    assert csv.read_text() == "".join(lines[:3])
    assert [r["epoch"] for r in rec.read_results_rows(csv)] == [1, 2]
