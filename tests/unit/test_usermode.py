"""epilog/usermode.py's pure parts: the crontab/scrontab line it adds and removes, the exit
status of srun as the epilog's SLURM_JOB_EXIT_CODE2, the job's own environment, and the
test of whether an epilog already archived an attempt (from the run folder's record)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_yolo import mode
from slurm_yolo.epilog import usermode
from slurm_yolo.store import Store

COMMAND = "/venv/bin/python -m slurm_yolo.cli reconcile --user --env-file /h/.slurm-yolo/reconcile.env " \
          ">> /h/.slurm-yolo/reconcile.log 2>&1 " + mode.RECONCILER_TAG


def test_the_crontab_line_is_added_once_and_removed_exactly():
    mine = "MAILTO=me\n17 3 * * * backup --all\n"
    once = usermode.with_line(mine, mode.CRONTAB, COMMAND)
    assert once.startswith(mine) and once.count(mode.RECONCILER_TAG) == 1
    assert usermode.with_line(once, mode.CRONTAB, COMMAND) == once  # idempotent
    assert mode.has_reconciler_line(once)
    assert usermode.without_line(once) == mine
    assert usermode.without_line(mine) == mine
    assert usermode.without_line("") == ""


def test_the_scrontab_entry_carries_its_options_and_leaves_with_them():
    mine = "#SCRON --time=5\n0 * * * * my-job\n"
    once = usermode.with_line(mine, mode.SCRONTAB, COMMAND)
    lines = once.splitlines()
    assert lines[-2].startswith("#SCRON") and "slurm-yolo-reconcile" in lines[-2]
    assert lines[-1] == f"{usermode.SCHEDULE} {COMMAND}"
    assert usermode.without_line(once) == mine  # the user's own #SCRON line stays with their job


@pytest.mark.parametrize("code, want", [(0, "0:0"), (1, "1:0"), (3, "3:0"), (137, "0:9"), (143, "0:15"),
                                        (None, None), (-1, None)])
def test_step_exit_code2(code, want):
    assert usermode.step_exit_code2(code) == want


def test_job_env_is_what_the_epilog_is_given():
    env = usermode.job_env("/runs/r1", {"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1",
                                        "SLURM_JOB_NODELIST": "vm"}, 1)
    assert env["SLURM_JOB_COMMENT"] == "slurm-yolo:v1:/runs/r1" and env["SLURM_JOB_EXIT_CODE2"] == "1:0"
    assert env["SLURM_JOB_RESTART_COUNT"] == "1" and env["SLURM_SCRIPT_CONTEXT"] == "job"
    assert "SLURM_JOB_EXIT_CODE2" not in usermode.job_env("/runs/r1", {"SLURM_JOB_ID": "77"}, None)


def test_run_folder_of_a_sweep_element(tmp_path):
    (tmp_path / "array.json").write_text(json.dumps({"runs": {"0": "/runs/a", "1": "/runs/b"}}))
    assert usermode.run_folder_of(str(tmp_path), {"SLURM_ARRAY_TASK_ID": "1"}) == Path("/runs/b")
    assert usermode.run_folder_of(str(tmp_path), {}) is None
    assert usermode.run_folder_of("/runs/a", {}) == Path("/runs/a")


def test_an_attempt_the_epilog_recorded_is_not_archived_again():
    done = {"attempts": [{"attempt": 1, "end_state": "COMPLETED", "epilog": {"node": "epilog_slurmd@vm"}},
                         {"attempt": 2, "end_state": None}]}
    # No archive URL: only the record is asked (no store request).
    assert usermode.epilog_archived(done, 1, Store(), None)
    assert not usermode.epilog_archived(done, 2, Store(), None)
    assert not usermode.epilog_archived({"attempts": []}, 1, Store(), None)


def test_user_site_keeps_everything_in_the_users_folder(tmp_path):
    env = {"HOME": str(tmp_path), "SLURM_YOLO_INDEX": "s3://b/index", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "SLURM_YOLO_SITE_CONFIG": str(tmp_path / "none.yaml"), "PATH": str(tmp_path)}
    site = usermode.user_site(env)
    root = tmp_path / ".slurm-yolo"
    assert (site.claim_dir, site.spool_dir) == (str(root / "claims"), str(root / "spool"))
    assert site.index_url == "s3://b/index/" and site.allowed_prefix == "s3://"
    assert dict(site.store.keys)["AWS_ACCESS_KEY_ID"] == "k" and site.metrics_textfile is None
    # The runs_roots the user submitted to are what the round walks without accounting.
    usermode.mode.remember_runs_root("/shared/runs", env)
    usermode.mode.remember_runs_root("/shared/runs", env)
    assert usermode.user_site(env).runs_roots == ("/shared/runs",)
    with pytest.raises(usermode.ConfigError, match="SLURM_YOLO_INDEX"):
        usermode.user_site({k: v for k, v in env.items() if k != "SLURM_YOLO_INDEX"})
