"""`slurm-yolo doctor`'s pure parts: where a path is mounted, the check job's command line and
verdict, the mode lines (launcher/doctor.py). The real thing: tests/cluster/test_doctor.py."""

from __future__ import annotations

import pytest

from slurm_yolo import mode as modes
from slurm_yolo.launcher import doctor

MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
fs1:/export/home /home nfs4 rw,vers=4.2 0 0
lustre@tcp:/scratch /scratch lustre rw 0 0
/dev/vdb1 /scratch/local ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
/dev/vdc /mnt/with\\040space xfs rw 0 0
"""


@pytest.mark.parametrize("path, want", [
    ("/home/alice/runs", ("/home", "nfs4")),
    ("/scratch/alice", ("/scratch", "lustre")),
    ("/scratch/local/x", ("/scratch/local", "ext4")),   # the longest mount point wins
    ("/scratchy", ("/", "ext4")),                       # a prefix of the name is not a parent
    ("/tmp", ("/tmp", "tmpfs")),
    ("/mnt/with space/runs", ("/mnt/with space", "xfs")),
    ("/var/lib/x", ("/", "ext4")),
])
def test_mount_type(path, want):
    assert doctor.mount_type(path, MOUNTS) == want


def test_the_check_job_is_this_interpreter_importing_both_packages():
    argv = doctor.check_job_argv("/home/a/venv/bin/python", "/home/a/runs/.x.out", "/home/a/runs", "gpu")
    assert argv[:2] == ["sbatch", "--parsable"]
    assert argv[argv.index("-t") + 1] == "1" and argv[argv.index("-p") + 1] == "gpu"
    assert argv[-2] == "--wrap" and argv[-1].startswith("exec /home/a/venv/bin/python -c ")
    assert "import sys, slurm_yolo, ultralytics" in argv[-1]
    assert "-p" not in doctor.check_job_argv("/p", "/o", "/w", None)


@pytest.mark.parametrize("text, want", [("COMPLETED|n1\n", ("COMPLETED", "n1")), ("", ("", "")),
                                        ("FAILED|\n", ("FAILED", ""))])
def test_parse_job_state(text, want):
    assert doctor.parse_job_state(text) == want


def test_the_check_job_verdicts():
    ok = doctor.judge_check_job("COMPLETED", "n1", "slurm-yolo-doctor ok /v/bin/python /v/slurm_yolo/__init__.py 8.4.190\n",
                                "/v/bin/python", "/runs")
    assert ok.status == "ok" and "8.4.190" in ok.detail and "n1" in ok.detail
    missing = doctor.judge_check_job("FAILED", "gpu3", "Traceback (most recent call last):\n  File \"<string>\", "
                                     "line 1\nModuleNotFoundError: No module named 'slurm_yolo'\n", "/w/venv/bin/python",
                                     "/runs")
    assert missing.status == "FAIL" and "No module named 'slurm_yolo'" in missing.detail and "venv" in missing.fix
    gone = doctor.judge_check_job("FAILED", "s2411", "/var/spool/slurmd/job240001/slurm_script: line 4: "
                                  "/work/venv/bin/python: No such file or directory\n", "/work/venv/bin/python", "/runs")
    assert gone.status == "FAIL" and "does not exist or cannot run" in gone.detail
    unseen = doctor.judge_check_job("FAILED", "n2", None, "/v/bin/python", "/local/runs")
    assert unseen.status == "FAIL" and "cannot write your runs_root" in unseen.detail


def test_mode_and_reconciler_lines():
    assert doctor.check_mode(modes.Mode(None)).status == "FAIL"
    assert doctor.check_mode(modes.Mode(True)).status == "ok"
    assert "user mode" in doctor.check_mode(modes.Mode(False)).detail
    assert doctor.check_reconciler(modes.Mode(True)).status == "ok"
    assert doctor.check_reconciler(modes.Mode(False, "crontab")).detail == "installed (crontab)"
    missing = doctor.check_reconciler(modes.Mode(False, None))
    assert missing.status == "FAIL" and missing.fix == "slurm-yolo reconcile --user --install"
