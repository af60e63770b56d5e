"""The claim that decides who archives an attempt: one winner, whatever races, and a dead
holder's claim is taken over exactly once."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

from slurm_yolo.epilog import claim

ENV = {"SLURM_JOB_ID": "42", "SLURM_JOB_UID": "1000", "SLURM_JOB_COMMENT": "slurm-yolo:v1:/runs/r1",
       "SLURM_JOB_EXIT_CODE2": "0:0", "USER_SET": "not kept"}
KEY = "1000.42.r1.a1"


def _race(claim_dir: str, who: int, start: float, stale_after: float, out) -> None:
    while time.time() < start:  # all racers leave the gate together
        pass
    held = claim.try_claim(claim_dir, KEY, ENV, by=f"racer{who}", stale_after_s=stale_after)
    out.put(who if held else None)


def _run_racers(claim_dir: Path, n: int, stale_after: float) -> list[int]:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_race, args=(str(claim_dir), i, start, stale_after, out)) for i in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
    return [r for r in results if r is not None]


def test_sixteen_racers_one_winner(tmp_path):
    for round_ in range(5):
        d = tmp_path / f"round{round_}"
        winners = _run_racers(d, 16, stale_after=300)
        assert len(winners) == 1
        data = json.loads((d / KEY).read_text())
        assert data["by"] == f"racer{winners[0]}" and data["state"] == claim.CLAIMED


def test_claim_keeps_only_the_jobs_slurm_identity(tmp_path):
    held = claim.try_claim(tmp_path, KEY, ENV, by="epilog_slurmd@n1", stale_after_s=300)
    assert held is not None
    assert held.data["job"] == {k: v for k, v in ENV.items() if k != "USER_SET"}
    assert oct(os.stat(held.path).st_mode & 0o777) == "0o600"


def test_done_claim_is_never_taken_again_even_when_old(tmp_path):
    held = claim.try_claim(tmp_path, KEY, ENV, by="a", stale_after_s=10, now=1000.0)
    claim.mark_done(held, {"state": "COMPLETED", "shipped": True})
    assert claim.try_claim(tmp_path, KEY, ENV, by="b", stale_after_s=10, now=1_000_000.0) is None
    assert claim.stale_claims(tmp_path, stale_after_s=10, now=1_000_000.0) == []


def test_a_fresh_claim_is_respected_a_stale_one_taken_over(tmp_path):
    first = claim.try_claim(tmp_path, KEY, ENV, by="dead node", stale_after_s=100, now=1000.0)
    assert first is not None
    assert claim.try_claim(tmp_path, KEY, ENV, by="too early", stale_after_s=100, now=1050.0) is None
    assert claim.stale_claims(tmp_path, stale_after_s=100, now=1050.0) == []
    assert claim.stale_claims(tmp_path, stale_after_s=100, now=1200.0) == [tmp_path / KEY]
    taker = claim.try_claim(tmp_path, KEY, ENV, by="reconciler", stale_after_s=100, now=1200.0)
    assert taker is not None and taker.data["took_over"]["by"] == "dead node"
    assert json.loads((tmp_path / KEY).read_text())["by"] == "reconciler"


def test_a_requeued_job_takes_over_its_own_earlier_attempts_fresh_claim_only(tmp_path):
    """The pre-emption's SIGTERM archive, cut short by SIGKILL, leaves a fresh claim; the job's
    next attempt may take it at once (Slurm starts it only once that attempt's processes are
    gone), but nobody else may, and never a done claim."""
    from slurm_yolo.epilog.usermode import previous_attempt_gone

    attempt1 = {**ENV, "SLURM_JOB_RESTART_COUNT": "0"}
    claim.try_claim(tmp_path, KEY, attempt1, by="job@n1", stale_after_s=100, now=1000.0)
    other_job = previous_attempt_gone("43", 1)
    same_attempt = previous_attempt_gone("42", 0)
    assert claim.try_claim(tmp_path, KEY, ENV, by="job@n2", stale_after_s=100, now=1001.0, holder_gone=other_job) is None
    assert claim.try_claim(tmp_path, KEY, ENV, by="job@n2", stale_after_s=100, now=1001.0,
                           holder_gone=same_attempt) is None
    taker = claim.try_claim(tmp_path, KEY, ENV, by="job@n2", stale_after_s=100, now=1001.0,
                            holder_gone=previous_attempt_gone("42", 1))
    assert taker is not None and taker.data["took_over"]["by"] == "job@n1"
    claim.mark_done(taker, {"state": "REQUEUED"})
    assert claim.try_claim(tmp_path, KEY, ENV, by="job@n3", stale_after_s=100, now=1002.0,
                           holder_gone=lambda held: True) is None
    # A reconciler's claim is never judged dead by the job: it may still be archiving.
    key2 = "1000.42.r1.a2"
    claim.try_claim(tmp_path, key2, attempt1, by="reconciler@login", stale_after_s=100, now=1000.0)
    assert claim.try_claim(tmp_path, key2, ENV, by="job@n2", stale_after_s=100, now=1001.0,
                           holder_gone=previous_attempt_gone("42", 1)) is None


def test_racing_takers_of_a_stale_claim_one_winner(tmp_path):
    for round_ in range(5):
        d = tmp_path / f"round{round_}"
        # The dead holder's claim is 100 s old; the window (30 s) stays longer than a slow racer's
        # start on a loaded machine, or the winner's own new claim would look stale to it.
        assert claim.try_claim(d, KEY, ENV, by="dead", stale_after_s=30, now=time.time() - 100)
        winners = _run_racers(d, 12, stale_after=30)
        assert len(winners) == 1, winners
        assert json.loads((d / KEY).read_text())["by"] == f"racer{winners[0]}"


def test_torn_claim_file_counts_as_stale(tmp_path):
    (tmp_path / KEY).write_text('{"state": "cla')  # a holder killed mid-write...
    assert claim.try_claim(tmp_path, KEY, ENV, by="too early", stale_after_s=100) is None  # ...or still writing
    os.utime(tmp_path / KEY, (time.time() - 500, time.time() - 500))
    assert claim.stale_claims(tmp_path, stale_after_s=100) == [tmp_path / KEY]
    assert claim.try_claim(tmp_path, KEY, ENV, by="reconciler", stale_after_s=100) is not None


def test_prune_deletes_old_done_claims_only(tmp_path):
    old_done = claim.try_claim(tmp_path, "1.1.r.a1", ENV, by="a", stale_after_s=10)
    claim.mark_done(old_done, {})
    old_dead = claim.try_claim(tmp_path, "1.2.r.a1", ENV, by="b", stale_after_s=10)
    new_done = claim.try_claim(tmp_path, "1.3.r.a1", ENV, by="c", stale_after_s=10)
    claim.mark_done(new_done, {})
    week_ago = time.time() - claim.KEEP_S - 60
    for c in (old_done, old_dead):
        os.utime(c.path, (week_ago, week_ago))
    assert claim.prune(tmp_path) == 1
    assert not old_done.path.exists()
    assert old_dead.path.exists()  # still waiting for the reconciler to take it over
    assert new_done.path.exists()


# Refused markers (epilog/refusals.py): remembered apart from the claims, never retried.


def NO_ACCOUNTING(site, since, uid):  # noqa: N802 - a stand-in for list_accounted: the cluster keeps none
    return None

def _reconcile_site(tmp_path: Path):
    from slurm_yolo.site import SiteConfig
    from slurm_yolo.store import Store

    return SiteConfig(path="(test)", store=Store(), allowed_prefix="s3://b/runs/{user}/", index_url="s3://b/index/",
                      spool_dir=str(tmp_path / "spool"), claim_dir=str(tmp_path / "claims"), scontrol=False,
                      time_budget_s=120)


def test_a_refused_marker_is_opened_once_however_many_rounds(tmp_path):
    """A hostile marker (a symlink on the way to the run folder) is refused by the first round
    that opens it; no later round opens it again, not even past the claims' stale window, and
    a week later its record is pruned."""
    from datetime import datetime, timedelta

    from slurm_yolo import budget
    from slurm_yolo.epilog import refusals
    from slurm_yolo.epilog.reconcile import reconcile
    from slurm_yolo.epilog.slurm_parse import QueuedJob

    (tmp_path / "elsewhere" / "20261123_070000_abcdefgh").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    marker = f"slurm-yolo:v1:{tmp_path}/link/20261123_070000_abcdefgh"
    site = _reconcile_site(tmp_path)
    start = datetime.now().astimezone()
    ended = (start - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    queued = [QueuedJob("501", "COMPLETED", os.getuid(), ended, marker)]
    said: list[str] = []
    window = budget.stale_after_s(site.time_budget_s)
    for offset in (0.0, 60.0, window + 1, 10 * window, 86400.0):
        results = reconcile(site, now=start + timedelta(seconds=offset), say=said.append, jobs=lambda s: queued, accounted=NO_ACCOUNTING)
        assert all("error" not in r for r in results), results
    refused = [line for line in said if "refused" in line]
    assert len(refused) == 1 and refused[0].startswith("job 501: refused: "), said
    assert [r.job_id for r in refusals.listing(site.claim_dir)] == ["501"]
    assert claim.stale_claims(site.claim_dir, stale_after_s=window, now=time.time() + 10 * window) == []

    said.clear()
    listed = reconcile(site, dry_run=True, now=start, say=said.append, jobs=lambda s: queued, accounted=NO_ACCOUNTING)
    assert listed == [{"job": "501", "uid": os.getuid(), "refused": listed[0]["refused"],
                       "since": listed[0]["since"], "remembered": True}]
    assert len(said) == 1 and said[0].startswith("job 501: refused since ") and "not retried" in said[0]

    # A week later slurmctld has long forgotten the job, and the record goes.
    reconcile(site, now=start + timedelta(seconds=refusals.KEEP_S + 60), say=said.append, jobs=lambda s: [], accounted=NO_ACCOUNTING)
    assert refusals.listing(site.claim_dir) == []


def test_a_refusal_kept_as_a_claim_by_an_older_version_is_not_retried_either(tmp_path):
    from datetime import datetime, timedelta

    from slurm_yolo.epilog import refusals
    from slurm_yolo.epilog.reconcile import reconcile
    from slurm_yolo.epilog.slurm_parse import QueuedJob

    site = _reconcile_site(tmp_path)
    uid = os.getuid()
    marker = f"slurm-yolo:v1:{tmp_path}/nowhere/r1"
    env = {**ENV, "SLURM_JOB_ID": "502", "SLURM_JOB_UID": str(uid), "SLURM_JOB_COMMENT": marker}
    old = claim.try_claim(site.claim_dir, f"{uid}.502.refused", env, by="reconciler", stale_after_s=float("inf"),
                          now=time.time() - 3600)
    assert old is not None
    start = datetime.now().astimezone()
    ended = (start - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    said: list[str] = []
    assert reconcile(site, now=start, say=said.append,
                     jobs=lambda s: [QueuedJob("502", "FAILED", uid, ended, marker)], accounted=NO_ACCOUNTING) == []
    assert said == []
    week = time.time() - refusals.KEEP_S - 60
    os.utime(old.path, (week, week))
    assert refusals.prune(site.claim_dir) == 1 and not old.path.exists()


def test_claims_prune_leaves_the_refusals_folder_alone(tmp_path):
    from slurm_yolo.epilog import refusals

    env = {**ENV, "SLURM_JOB_UID": "1000", "SLURM_JOB_ID": "42"}
    assert refusals.remember(tmp_path, env, "marker is a symlink", by="reconciler@h")
    assert not refusals.remember(tmp_path, env, "again", by="reconciler@h")  # the first one is kept
    week_ago = time.time() - claim.KEEP_S - 60
    os.utime(refusals.folder(tmp_path), (week_ago, week_ago))
    assert claim.prune(tmp_path) == 0
    assert refusals.is_refused(tmp_path, env)
    assert [r.reason for r in refusals.listing(tmp_path)] == ["marker is a symlink"]
