"""Classifying s5cmd --json output, from output captured from the real binary."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_yolo.archive import s5cmd
from slurm_yolo.store import Store

DATA = Path(__file__).resolve().parents[1] / "data" / "s5cmd"


def captured(name):
    return (DATA / f"{name}.stdout").read_text(), (DATA / f"{name}.stderr").read_text()


def test_partial_run_exit_1_with_successes_and_failures():
    outcomes = s5cmd.parse_output(*captured("run_partial"))
    ok = [o for o in outcomes if o.ok]
    bad = [o for o in outcomes if not o.ok]
    assert sorted(o.destination for o in ok) == ["s3://bk1/x/a.txt", "s3://bk1/x/sub/b.txt"]
    assert sorted(o.error_class for o in bad) == ["missing_source", "no_bucket"]
    result = s5cmd.Result(1, outcomes)
    assert not result.ok and not result.transient


def test_refused_connection_is_transient():
    result = s5cmd.Result(1, s5cmd.parse_output(*captured("refused")))
    assert not result.ok and result.transient
    assert result.failures[0].error_class == "unreachable"


@pytest.mark.parametrize("name", ["ls_missing", "cp_missing_key", "cp_missing_wildcard", "cp_upload_empty_wildcard"])
def test_missing_object_is_permanent(name):
    # "no object found", "NoSuchKey", "no match found": a retry cannot help.
    result = s5cmd.Result(1, s5cmd.parse_output(*captured(name)))
    assert not result.ok and not result.transient
    assert [o.error_class for o in result.failures] == ["missing_source"]


@pytest.mark.parametrize("line, ok, cls", [
    ('{"operation":"cp","success":true,"source":"a","destination":"s3://b/a","object":{"size":3}}', True, None),
    (captured("ls_recursive")[0].splitlines()[0], True, None),
    ('{"operation":"cp","error":"AccessDenied: Access Denied status code: 403"}', False, "denied"),
    ('{"operation":"cp","error":"SlowDown: reduce your request rate"}', False, "throttled"),
    ("panic: runtime error", False, "unknown"),
    ("", None, None),
])
def test_parse_line(line, ok, cls):
    o = s5cmd.parse_line(line)
    if ok is None:
        assert o is None
    else:
        assert o.ok is ok and o.error_class == cls


def test_timeout_is_reported_not_raised():
    r = s5cmd.run(["/bin/sleep", "5"], Store(), deadline=__import__("time").monotonic() + 0.2)
    assert r.timed_out and not r.ok and r.transient


def test_base_argv_always_json_and_absolute_binary():
    argv = s5cmd.base_argv(Store(endpoint_url="http://127.0.0.1:1", credentials_file="/etc/c", profile="p"))
    assert argv[0].startswith("/") and "--json" in argv
    assert argv[argv.index("--endpoint-url") + 1] == "http://127.0.0.1:1"


def test_store_environment_does_not_inherit(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    env = Store(keys=(("AWS_ACCESS_KEY_ID", "k"),)).environment()
    assert "LD_PRELOAD" not in env and env["AWS_ACCESS_KEY_ID"] == "k"


def test_a_failed_line_names_its_source_and_destination():
    # As s5cmd prints a `run` line it could not copy (quoted) and a plain `cp` (tests/data/s5cmd).
    quoted = s5cmd.parse_line('{"operation":"cp","command":"cp \\"/proc/self/fd/7\\" \\"s3://b/runs/u/x/weights/last.pt\\"",'
                              '"error":"RequestError: send request failed"}')
    assert (quoted.source, quoted.destination) == ("/proc/self/fd/7", "s3://b/runs/u/x/weights/last.pt")
    result = s5cmd.Result(1, s5cmd.parse_output(*captured("run_partial")))
    assert sorted(result.failed_destinations) == ["s3://bk1/x/m.txt", "s3://nobucket/x/a.txt"]
    listing = s5cmd.parse_line('{"operation":"ls","command":"ls s3://b/k","error":"no object found"}')
    assert (listing.source, listing.destination) == ("s3://b/k", None)
