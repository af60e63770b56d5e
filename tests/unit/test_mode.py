"""mode.py: is a slurm-yolo epilog configured, is the user's reconciler installed, the line
submit prints. Parsed from real ``scontrol show config`` outputs of both dev clusters
(tests/data/slurm*/show_config*.txt); files are read through an injected reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_yolo import mode

DATA = Path(__file__).resolve().parents[1] / "data"
SHIM = b"#!/bin/sh\n# slurm-yolo node epilog shim\n\"$PYTHON\" -I -m slurm_yolo.epilog.main </dev/null\n"
RECORD_ENV = b"#!/bin/sh\n# Records the environment of each slurm-yolo job's epilog\n/usr/bin/env | sort\n"


def _text(name: str) -> str:
    return (DATA / name).read_text()


def reader(files: dict[str, bytes | None]):
    """An epilog reader over a dict (path -> content, None: unreadable; missing: no such file)."""
    def read(pattern: str):
        if pattern.endswith("*"):
            return [(p, c) for p, c in sorted(files.items()) if p.startswith(pattern[:-1])]
        return [(pattern, files.get(pattern))]
    return read


def test_parse_2205_one_line_per_key():
    setup = mode.slurm_setup(_text("slurm/show_config.txt"))
    assert setup.epilogs == ("/var/lib/slurm-yolo-dev/epilog",)
    assert setup.controller_epilogs == ("/var/lib/slurm-yolo-dev/epilog",)
    assert setup.kill_wait_s == 5 and not setup.scron_enabled and not setup.accounting


def test_parse_2411_indexed_entries():
    setup = mode.slurm_setup(_text("slurm-24.11/show_config.txt"))
    assert setup.epilogs == ("/var/lib/slurm-yolo-dev-24.11/epilog.d/10-record-env",
                             "/var/lib/slurm-yolo-dev-24.11/epilog")
    assert len(setup.controller_epilogs) == 2 and setup.kill_wait_s == 5


def test_the_shim_is_recognised_by_content_on_both_clusters():
    files = {"/var/lib/slurm-yolo-dev/epilog": SHIM, "/var/lib/slurm-yolo-dev-24.11/epilog": SHIM,
             "/var/lib/slurm-yolo-dev-24.11/epilog.d/10-record-env": RECORD_ENV}
    assert mode.epilog_installed(_text("slurm/show_config.txt"), read=reader(files))
    assert mode.epilog_installed(_text("slurm-24.11/show_config.txt"), read=reader(files))


def test_another_script_in_a_slurm_yolo_folder_is_not_ours():
    # Readable content decides; the folder's name does not.
    text = _text("slurm-24.11/show_config.txt").replace("Epilog[1]", "Ignored[1]")
    files = {"/var/lib/slurm-yolo-dev-24.11/epilog.d/10-record-env": RECORD_ENV}
    assert not mode.epilog_installed(text, read=reader(files))


@pytest.mark.parametrize("entry, files, ours", [
    ("/usr/local/sbin/slurm-yolo-epilog", {}, True),                      # unreadable here: by name
    ("/etc/slurm/epilog.sh", {"/etc/slurm/epilog.sh": None}, False),      # unreadable, other name
    ("/etc/slurm/epilog.sh", {"/etc/slurm/epilog.sh": b"#!/bin/sh\n/usr/local/sbin/slurm-yolo-epilog\n"}, True),
    ("/etc/slurm/epilog.d/*", {"/etc/slurm/epilog.d/10-a": b"#!/bin/sh\n", "/etc/slurm/epilog.d/50-b": SHIM}, True),
    ("/etc/slurm/epilog.d/*", {"/etc/slurm/epilog.d/10-a": b"#!/bin/sh\n"}, False),
    ("/opt/site/epilog", {"/opt/site/epilog": b"#!/bin/sh\nexit 0\n"}, False),
])
def test_entries(entry, files, ours):
    text = f"Epilog                  = {entry}\nKillWait                = 30 sec\n"
    assert mode.epilog_installed(text, read=reader(files)) is ours


def test_no_epilog_is_user_mode():
    # The 22.05 cluster after `scripts/dev-cluster.sh epilog off` (and ScronParameters=enable).
    text = _text("slurm/show_config_no_epilog.txt")
    setup = mode.slurm_setup(text)
    assert setup.epilogs == () and setup.controller_epilogs == () and setup.scron_enabled
    assert not mode.epilog_installed(text, read=reader({}))


def test_a_controller_epilog_alone_is_still_user_mode():
    # EpilogSlurmctld archives only the runs whose node died.
    text = _text("slurm/show_config_no_epilog.txt").replace(
        "EpilogSlurmctld         = (null)", "EpilogSlurmctld         = /usr/local/sbin/slurm-yolo-epilog")
    assert mode.slurm_setup(text).controller_epilogs
    assert not mode.epilog_installed(text, read=reader({}))


def test_scron_and_accounting():
    text = "ScronParameters         = enable,explicit_scancel\nAccountingStorageType   = accounting_storage/slurmdbd\n"
    setup = mode.slurm_setup(text)
    assert setup.scron_enabled and setup.accounting and setup.kill_wait_s == mode.DEFAULT_KILL_WAIT_S


def test_reconciler_line():
    line = f"*/5 * * * * /venv/bin/python -m slurm_yolo.cli reconcile --user {mode.RECONCILER_TAG}"
    assert mode.has_reconciler_line(f"MAILTO=me\n{line}\n")
    assert not mode.has_reconciler_line("0 * * * * backup\n")
    assert not mode.has_reconciler_line(f"# {line}\n")  # commented out: not installed


def test_mode_line():
    assert mode.Mode(True).line() is None and mode.Mode(None).line() is None
    off = mode.Mode(False).line()
    assert "no slurm-yolo epilog" in off and "reconcile --user --install" in off
    assert "installed (crontab)" in mode.Mode(False, "crontab").line()


def test_detect_without_slurm_asks_nothing(tmp_path):
    assert mode.detect({"PATH": str(tmp_path)}) == mode.Mode(None)
