"""The epilog's entry points: the no-op path, Python isolation, --check, multi-node, write-back."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_yolo.epilog import main as epilog
from slurm_yolo.epilog.check import main as check_main
from slurm_yolo.site import load_site_config
from slurm_yolo.errors import SiteConfigError

REPO = Path(__file__).resolve().parents[2]
SHIM = REPO / "scripts" / "slurm-yolo-epilog.sh"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def shim_copy(tmp_path: Path, python: str, site: str = "/nonexistent/site.yaml") -> Path:
    text = SHIM.read_text().replace("PYTHON=/opt/slurm-yolo/venv/bin/python", f"PYTHON={python}")
    text = text.replace("SITE_CONFIG=/etc/slurm-yolo/site.yaml", f"SITE_CONFIG={site}")
    shim = tmp_path / "epilog"
    shim.write_text(text)
    shim.chmod(0o755)
    return shim


def test_shim_noop_path_never_starts_python(tmp_path):
    marker = tmp_path / "python-started"
    fake = tmp_path / "fakepython"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    shim = shim_copy(tmp_path, str(fake))
    for env in ({"SLURM_JOB_ID": "1"}, {"SLURM_JOB_ID": "1", "SLURM_JOB_COMMENT": "some user comment"}):
        assert subprocess.run([str(shim)], env=env, timeout=10).returncode == 0  # slurmd's env: no PATH
        assert not marker.exists()
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_COMMENT": "slurm-yolo:v1:/tmp/x"}
    assert subprocess.run([str(shim)], env=env, timeout=10).returncode == 0
    assert marker.exists()


def test_python_runs_isolated_from_planted_modules(tmp_path):
    """-I: a PYTHONPATH with a sitecustomize and a fake slurm_yolo package must have no effect."""
    evil = tmp_path / "evil"
    (evil / "slurm_yolo" / "epilog").mkdir(parents=True)
    pwned = tmp_path / "pwned"
    payload = f"open({str(pwned)!r}, 'w').write('x')\n"
    (evil / "sitecustomize.py").write_text(payload)
    (evil / "usercustomize.py").write_text(payload)
    (evil / "slurm_yolo" / "__init__.py").write_text(payload)
    (evil / "slurm_yolo" / "epilog" / "__init__.py").write_text(payload)
    (evil / "slurm_yolo" / "epilog" / "main.py").write_text(payload)
    shim = shim_copy(tmp_path, sys.executable)
    env = {"SLURM_JOB_ID": "1", "SLURM_JOB_COMMENT": "slurm-yolo:v1:/tmp/x", "PYTHONPATH": str(evil),
           "PYTHONSTARTUP": str(evil / "sitecustomize.py"), "PYTHONHOME": "/nonexistent-ignored-by-I"}
    env.pop("PYTHONHOME")  # PYTHONHOME is ignored by -I too, but a wrong one would break the interpreter
    result = subprocess.run([str(shim)], env=env, timeout=30, cwd=str(evil))
    assert result.returncode == 0
    assert not pwned.exists()


@pytest.mark.parametrize("comment", [None, "", "someone else's comment", "slurm-yolo:v0:/old/format"])
def test_python_noop_for_jobs_not_ours_returns_zero_and_loads_nothing(comment):
    # How fast it is lives in benchmarks/bench_epilog.py; here: 0, and none of the work's
    # modules imported (no site config read, no s5cmd, no boto3).
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_COMMENT"}
    if comment is not None:
        env["SLURM_JOB_COMMENT"] = comment
    code = ("import sys; from slurm_yolo.epilog import main as m; rc = m.main([]); "
            "heavy = [k for k in ('boto3', 'yaml', 'slurm_yolo.site', 'slurm_yolo.epilog.snapshot', "
            "'slurm_yolo.archive.s5cmd') if k in sys.modules]; print(rc, heavy)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "0 []", out.stdout + out.stderr


def _site(tmp_path: Path, creds_mode: int = 0o600, site_mode: int = 0o644, **over) -> Path:
    creds = tmp_path / "credentials"
    creds.write_text("[default]\naws_access_key_id = k\naws_secret_access_key = s\n")
    creds.chmod(creds_mode)
    body = {"store": {"endpoint_url": "http://127.0.0.1:9", "credentials_file": str(creds)},
            "allowed_prefix": "s3://bkt/runs/{user}/", "index_url": "s3://bkt/index/",
            "spool_dir": str(tmp_path / "spool"), "time_budget_s": 10, **over}
    import yaml

    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(body))
    site.chmod(site_mode)
    return site


@root_only
@pytest.mark.parametrize("kwargs, fragment", [
    ({"site_mode": 0o666}, "writable by group/others: chmod go-w"),
    ({"creds_mode": 0o644}, "readable by group/others: chmod 600"),
    ({"allowed_prefix": "s3://bkt/runs/"}, "must contain {user}"),
    ({"spool_dir": "relative"}, "must be an absolute path"),
    ({"bogus": 1}, "unknown keys ['bogus']"),
])
def test_unsafe_site_configs_are_refused(tmp_path, kwargs, fragment):
    with pytest.raises(SiteConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]").replace("{", r"\{")
                       .replace("}", r"\}")):
        load_site_config(str(_site(tmp_path, **kwargs)))


@root_only
def test_check_reports_unreachable_store(tmp_path, capsys):
    assert check_main(["--check", "--site-config", str(_site(tmp_path))]) == 1
    out = capsys.readouterr().out
    assert "ok   site config" in out and "FAIL store http://127.0.0.1:9 bucket bkt: not reachable" in out


def test_check_probes_the_runs_bucket_and_the_index_bucket(tmp_path, capsys, s3_endpoint):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="k", aws_secret_access_key="s",
                 region_name="us-east-1").create_bucket(Bucket="idx-ok")
    site = _site(tmp_path, store={"endpoint_url": s3_endpoint, "credentials_file": str(tmp_path / "credentials")},
                 allowed_prefix="s3://runs-missing/runs/{user}/", index_url="s3://idx-ok/index/")
    assert check_main(["--check", "--site-config", str(site)]) == 1
    out = capsys.readouterr().out
    assert f"ok   store {s3_endpoint} bucket idx-ok: reachable" in out
    assert f"FAIL store {s3_endpoint} bucket runs-missing: not reachable" in out


@root_only
def test_writeback_runs_with_the_users_privileges():
    import shutil
    import tempfile

    from slurm_yolo.epilog.writeback import update_as_user
    from slurm_yolo.record import read_record, write_record

    nobody = pwd.getpwnam("nobody")
    tmp_path = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp tree is 0700: nobody could not enter it
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for d in (mine, theirs):
        d.mkdir()
        write_record(d, {"end_state": None})
    os.chown(mine, nobody.pw_uid, nobody.pw_gid)
    os.chown(mine / "run.json", nobody.pw_uid, nobody.pw_gid)
    tmp_path.chmod(0o755)

    verdict = {"state": "COMPLETED", "exit_code": 0, "rule": "r", "dest": "s3://b/x/", "user": "nobody",
               "uid": nobody.pw_uid, "metrics": None, "node": "epilog_slurmd@n1", "now": "2026-11-23T07:00:00Z"}
    assert update_as_user(str(mine), nobody.pw_uid, nobody.pw_gid, verdict) == "ok"
    assert read_record(mine)["end_state"] == "COMPLETED"
    assert (mine / "run.json").stat().st_uid == nobody.pw_uid
    # A root-owned folder: the dropped-privilege child cannot write there.
    assert update_as_user(str(theirs), nobody.pw_uid, nobody.pw_gid, verdict).startswith("failed")
    assert read_record(theirs)["end_state"] is None
    shutil.rmtree(tmp_path)


def test_shim_and_python_agree_on_the_marker():
    from slurm_yolo.names import MARKER_PREFIX

    assert f"  {MARKER_PREFIX}*) ;;" in SHIM.read_text()


def test_the_admin_guide_shows_the_site_defaults():
    """The defaults are written once (site.DEFAULTS, SiteConfig's own); docs/admin.md's table of
    site settings says the same."""
    import re

    from slurm_yolo.site import BOUNDS, DEFAULTS

    rows = dict(re.findall(r"^\| `([a-z_0-9.]+)` \| ([^|]+) \|", (REPO / "docs" / "admin.md").read_text(), re.M))
    shown = {
        "claim_dir": "`<spool_dir>/.claims`",  # "" means: inside the spool (SiteConfig.__post_init__)
        "slurm_conf": "—",
        "storage_cost_per_gb_month": "—",
        "runs_roots": "—",
    }
    for key, value in DEFAULTS.items():
        want = shown.get(key) or (f"`{str(value).lower()}`" if isinstance(value, bool) else
                                  f"{value:g}" if isinstance(value, (int, float)) else f"`{value}`")
        assert rows[key].strip() == want, key
    low, high = BOUNDS["time_budget_s"]
    assert f"({low:g}–{high:g})" in (REPO / "docs" / "admin.md").read_text()
