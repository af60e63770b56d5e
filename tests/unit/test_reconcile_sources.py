"""Where a reconcile round learns of ended jobs besides squeue (epilog/reconcile.py): sacct's
real output (tests/data/slurm/sacct_ended.txt), the window since the last completed round, the
end-state verdicts from what accounting recorded, and the walk of the runs roots for runs
whose job slurmctld forgot. A round end to end: tests/cluster/test_reconcile_accounting.py."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from slurm_yolo.epilog import endstate, reconcile, slurm_parse
from slurm_yolo.states import EndState

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"


def accounted() -> dict[str, slurm_parse.AccountedJob]:
    return {j.job_id: j for j in slurm_parse.parse_sacct((DATA / "sacct_ended.txt").read_text())}


def test_parse_sacct_real_output():
    jobs = accounted()
    assert len(jobs) == 38
    assert {k: jobs[k].state for k in ("1058", "1060", "1073", "1074", "1076")} == {
        "1058": "NODE_FAIL", "1060": "OUT_OF_MEMORY", "1073": "FAILED", "1074": "CANCELLED", "1076": "TIMEOUT"}
    assert jobs["1074"].scontrol()["StateText"] == "CANCELLED by 0"
    assert jobs["1060"].scontrol()["ExitCode"] == "0:125" and jobs["1058"].scontrol()["NodeList"] == "n1"
    assert jobs["1072"].comment == "slurm-yolo:v1:/nonexistent/run|with|bars"  # the separator in the comment
    assert jobs["1064"].uid == 1001 and jobs["1060"].end == "2026-12-03T17:13:17"
    element = jobs["1078"].scontrol()
    assert (element["ArrayJobId"], element["ArrayTaskId"]) == ("1077", "0") and jobs["1078"].ids() == {"1078", "1077_0"}
    assert jobs["1058"].ids() == {"1058"} and "ArrayTaskId" not in jobs["1058"].scontrol()
    assert jobs["1058"].scontrol()["source"] == "sacct"


def test_sacct_argv():
    argv = slurm_parse.sacct_argv("/usr/bin/sacct", "2026-12-03T17:00:00")
    assert argv[:5] == ["/usr/bin/sacct", "-X", "-n", "-P", "-a"]
    assert argv[argv.index("-S") + 1] == "2026-12-03T17:00:00" and argv[argv.index("-o") + 1].endswith(",Comment")
    assert slurm_parse.sacct_argv("/s", "2026-12-03T17:00:00", uid=1001)[4:6] == ["-u", "1001"]
    with pytest.raises(ValueError):
        slurm_parse.sacct_argv("/s", "now; rm -rf /")


@pytest.mark.parametrize("name", ["slurm/sacct_no_accounting.stderr", "slurm-24.11/sacct_no_accounting.stderr"])
def test_no_accounting_is_recognised(name):
    assert slurm_parse.NO_ACCOUNTING.search((DATA.parent / name).read_text())
    assert not slurm_parse.NO_ACCOUNTING.search((DATA / "sacct_ended.txt").read_text())


@pytest.mark.parametrize("job_id, record_status, want", [
    ("1058", "RUNNING", EndState.NODE_FAIL),      # the node died mid-run: the job recorded nothing more
    ("1060", "RUNNING", EndState.OUT_OF_MEMORY),  # the cgroup killed the whole job
    ("1073", "RUNNING", EndState.FAILED),
    ("1074", "RUNNING", EndState.CANCELLED),      # "CANCELLED by 0", exit 0:0
    ("1076", "RUNNING", EndState.TIMEOUT),
    ("1072", "COMPLETED", EndState.COMPLETED),
])
def test_the_end_state_accounting_recorded_decides(job_id, record_status, want):
    job = accounted()[job_id]
    env = reconcile.job_env(job, job.scontrol())
    verdict = endstate.decide(endstate.Evidence(exit_code2=env["SLURM_JOB_EXIT_CODE2"], job_status=record_status,
                                                scontrol=job.scontrol()))
    assert verdict.state == want, verdict.rule


def test_the_window_starts_at_the_last_completed_round_less_the_margin(tmp_path):
    now = 1_800_000_000.0
    assert reconcile.sacct_since(None, now) == now - reconcile.SACCT_LOOKBACK_S
    assert reconcile.sacct_since(now - 3600, now) == now - 3600 - reconcile.SACCT_MARGIN_S
    assert reconcile.sacct_since(now - 30 * 86400, now) == now - reconcile.SACCT_LOOKBACK_S  # never beyond
    path = tmp_path / "claims" / reconcile.STATE_DIR / "all.json"
    assert reconcile.last_completed(path) is None
    reconcile.record_completed(path, now)
    assert reconcile.last_completed(path) == now and oct(path.parent.stat().st_mode)[-3:] == "700"
    path.write_text("{not json")
    assert reconcile.last_completed(path) is None


def test_due_jobs_from_sacct_wait_for_the_epilogs_but_node_failures_do_not():
    jobs = [j for j in accounted().values() if j.comment.startswith("slurm-yolo:v1:")]
    at = datetime.strptime("2026-12-03T17:15:30", "%Y-%m-%dT%H:%M:%S").astimezone()
    due = {j.job_id for j in reconcile.due(jobs, 60.0, at)}
    assert {"1058", "1059", "1060"} <= due          # long ended
    assert "1073" not in due and "1072" not in due  # not 60 s ended yet: their epilogs may still run


def _run(root: Path, run_id: str, attempts: list[dict], executor: str = "slurm", job_id: str = "") -> Path:
    run = root / run_id
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": run_id, "slurm": {"executor": executor, "job_id": job_id},
                                              "attempts": attempts}))
    return run


def test_the_walk_finds_runs_whose_last_attempt_was_never_archived_and_whose_job_is_forgotten(tmp_path):
    root = tmp_path / "runs"
    uid = os.getuid()
    forgotten = _run(root, "20261203_100000_aaaaaaaa", [{"attempt": 1, "slurm_job_id": "41", "node": "n1",
                                                          "status": "RUNNING"}], job_id="41")
    _run(root, "20261203_100000_bbbbbbbb", [{"attempt": 1, "slurm_job_id": "42", "end_state": "COMPLETED"}])
    _run(root, "20261203_100000_cccccccc", [{"attempt": 1, "slurm_job_id": "43"}], job_id="43")  # squeue lists it
    _run(root, "20261203_100000_dddddddd", [{"attempt": 1, "slurm_job_id": "44"}], executor="local")
    _run(root, "20261203_100000_eeeeeeee", [])                                    # never started
    requeued = _run(root, "20261203_100000_ffffffff", [{"attempt": 1, "slurm_job_id": "46", "end_state": "PREEMPTED"},
                                                        {"attempt": 2, "slurm_job_id": "46", "node": "n2"}])
    (root / "20261203_100000_gggggggg").symlink_to(forgotten)                     # a link is not a run folder
    (root / "_sweeps").mkdir()
    envs = reconcile.forgotten_runs([str(root), str(tmp_path / "missing")], uid, known={"43"})
    assert [(e["SLURM_JOB_ID"], e["SLURM_JOB_COMMENT"], e["SLURM_JOB_RESTART_COUNT"], e["SLURM_JOB_NODELIST"])
            for e in envs] == [("41", f"slurm-yolo:v1:{forgotten}", "0", "n1"),
                               ("46", f"slurm-yolo:v1:{requeued}", "1", "n2")]
    assert all(e["SLURM_JOB_UID"] == str(uid) for e in envs)
    assert reconcile.forgotten_runs([str(root)], uid + 1, known=set()) == []     # another user's round


def test_a_round_asks_sacct_from_its_last_completed_round_and_records_it(tmp_path):
    from datetime import timedelta

    from slurm_yolo.errors import CommandError
    from slurm_yolo.site import SiteConfig
    from slurm_yolo.store import Store

    site = SiteConfig(path="(test)", store=Store(), allowed_prefix="s3://b/runs/{user}/", index_url="s3://b/index/",
                      spool_dir=str(tmp_path / "spool"), claim_dir=str(tmp_path / "claims"), scontrol=False)
    asked: list[tuple[float, int | None]] = []
    answer: list[slurm_parse.AccountedJob] = []

    def sacct(s, since, uid):
        asked.append((since, uid))
        return list(answer)

    def state() -> float | None:
        return reconcile.last_completed(reconcile.state_path(site, 1001))

    start = datetime.now().astimezone()
    one = start.timestamp()
    reconcile.reconcile(site, uid=1001, now=start, jobs=lambda s: [], accounted=sacct)
    assert asked[-1] == (one - reconcile.SACCT_LOOKBACK_S, 1001) and state() == one
    assert reconcile.last_completed(reconcile.state_path(site, None)) is None  # another scope's state
    later = start + timedelta(minutes=5)
    reconcile.reconcile(site, uid=1001, now=later, jobs=lambda s: [], accounted=sacct, dry_run=True)
    assert asked[-1][0] == one - reconcile.SACCT_MARGIN_S and state() == one  # a dry run is no round
    # A job sacct lists whose marker cannot be followed: refused once, remembered, and the round counts.
    ended = (start - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    answer.append(slurm_parse.AccountedJob("77", "NODE_FAIL", 1001, ended, f"slurm-yolo:v1:{tmp_path}/gone/r1",
                                           (("JobId", "77"), ("JobState", "NODE_FAIL"), ("ExitCode", "0:0"))))
    results = reconcile.reconcile(site, uid=1001, now=later, jobs=lambda s: [], accounted=sacct)
    assert [(r["job"], "refused" in r) for r in results] == [("77", True)] and state() == later.timestamp()
    assert reconcile.reconcile(site, uid=1001, now=later, jobs=lambda s: [], accounted=sacct) == []
    # Another user's job is not this round's, whatever sacct says.
    answer[:] = [slurm_parse.AccountedJob("78", "NODE_FAIL", 1002, ended, "slurm-yolo:v1:/x/r", ())]
    assert reconcile.reconcile(site, uid=1001, now=later, jobs=lambda s: [], accounted=sacct) == []

    # sacct failing (slurmdbd down): squeue only, and the round is not counted.
    def failing(s, since, uid):
        raise CommandError("reconcile", ["sacct"], "slurmdbd unreachable")

    reconcile.reconcile(site, uid=1001, now=later + timedelta(minutes=5), jobs=lambda s: [], accounted=failing)
    assert state() == later.timestamp()
