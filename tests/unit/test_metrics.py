"""The Prometheus textfile: counting (pure), rendering, and the locked atomic write."""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone

from prometheus_client.parser import text_string_to_metric_families

from slurm_yolo.epilog import metrics as m


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_events_add_up_and_render_as_the_exposition_format():
    state = m.add(m.State(), m.archives_event([{"claimed": True, "shipped": True, "state": "COMPLETED", "bytes": 100},
                                               {"claimed": True, "shipped": False, "state": "TIMEOUT", "bytes": 0},
                                               {"claimed": False, "shipped": False},  # another archiver's
                                               {"refused": "marker outside the home"}],
                                              duration_s=3.0, now=1000.0))
    state = m.add(state, m.Event(duration_s=7200.0))  # above the last bucket: +Inf only
    text = m.render(state, m.SpoolGauges(entries=1, bytes=42, oldest_s=12.5, needs_attention=0))
    got = _samples(text)
    assert got[("slurm_yolo_archives_total", (("end_state", "COMPLETED"), ("result", "archived")))] == 1
    assert got[("slurm_yolo_archives_total", (("end_state", "TIMEOUT"), ("result", "spooled")))] == 1
    assert got[("slurm_yolo_archives_total", (("end_state", "none"), ("result", "refused")))] == 1
    assert sum(v for (name, _), v in got.items() if name == "slurm_yolo_archives_total") == 3
    assert got[("slurm_yolo_bytes_uploaded_total", ())] == 100
    assert got[("slurm_yolo_last_archive_timestamp_seconds", ())] == 1000.0
    assert got[("slurm_yolo_spool_bytes", ())] == 42 and got[("slurm_yolo_spool_oldest_seconds", ())] == 12.5
    assert got[("slurm_yolo_epilog_duration_seconds_bucket", (("le", "5.0"),))] == 1
    assert got[("slurm_yolo_epilog_duration_seconds_bucket", (("le", "3600.0"),))] == 1
    assert got[("slurm_yolo_epilog_duration_seconds_bucket", (("le", "+Inf"),))] == 2
    assert got[("slurm_yolo_epilog_duration_seconds_count", ())] == 2
    for name in ("archives", "drained", "bytes_uploaded", "spool_entries", "epilog_duration_seconds"):
        assert f"# HELP slurm_yolo_{name}" in text and f"# TYPE slurm_yolo_{name}" in text
    # no archive yet: no timestamp series (a 0 would read as "1970" in an alert)
    assert "last_archive" not in m.render(m.State(), m.SpoolGauges())


def test_drain_results_count_as_drained_not_as_new_archives():
    class R:  # the fields of ship.ShipResult the drain's event reads
        def __init__(self, ok, end_state, size):
            self.ok, self.end_state, self.bytes = ok, end_state, size

    event = m.drain_event([R(True, "COMPLETED", 10), R(False, "", 0)], now=5.0)
    assert event.archives == () and event.drained == (("shipped", "COMPLETED"), ("failed", "none"))
    assert event.bytes_uploaded == 10 and event.archived_at == 5.0


def _one(args):
    textfile, spool = args
    return m.record(textfile, spool, m.Event(archives=(("archived", "COMPLETED"),), bytes_uploaded=1, duration_s=1.0))


def test_record_keeps_counters_across_processes_and_writes_a_readable_file(tmp_path):
    textfile = tmp_path / "node-exporter" / "slurm-yolo.prom"
    spool = tmp_path / "spool"
    old = os.umask(0o077)  # the epilog's umask must not hide the file from node_exporter
    try:
        with ProcessPoolExecutor(4) as pool:
            assert all(pool.map(_one, [(str(textfile), str(spool))] * 24))
    finally:
        os.umask(old)
    got = _samples(textfile.read_text())
    assert got[("slurm_yolo_archives_total", (("end_state", "COMPLETED"), ("result", "archived")))] == 24
    assert got[("slurm_yolo_bytes_uploaded_total", ())] == 24
    assert got[("slurm_yolo_spool_entries", ())] == 0
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
    assert sorted(p.name for p in textfile.parent.iterdir()) == ["slurm-yolo.prom", "slurm-yolo.prom.lock",
                                                                  "slurm-yolo.prom.state"]  # no temp file left
    # a damaged state file starts again from zero (a counter reset), it does not stop the metrics
    (textfile.parent / "slurm-yolo.prom.state").write_text("{not json")
    assert m.record(str(textfile), str(spool), m.Event(bytes_uploaded=5))
    assert _samples(textfile.read_text())[("slurm_yolo_bytes_uploaded_total", ())] == 5
    assert json.loads((textfile.parent / "slurm-yolo.prom.state").read_text())["bytes_uploaded"] == 5


def test_metrics_off_or_unwritable_never_raise(tmp_path):
    assert m.record(None, str(tmp_path)) is False
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert m.record(str(blocker / "x.prom"), str(tmp_path)) is False


def test_spool_gauges_count_entries_bytes_age_and_those_needing_a_person(tmp_path):
    from slurm_yolo.archive import manifest
    from slurm_yolo.epilog import spool
    from slurm_yolo.epilog.entry import ENTRY_JSON, EntryInfo
    from slurm_yolo.runfolder import AttemptKey

    def stage(run_id, created, size, **info):
        entry = spool.entry_path(tmp_path, AttemptKey.of(0, "7", run_id, 1))
        entry.mkdir()
        spool.write_entry(entry, EntryInfo(run_id=run_id, attempt=1, job_id="7", uid=0, dest="s3://b/r/",
                                           created=created, **info),
                          {"run_id": run_id}, manifest.build(run_id, 1, {"a": {"size": size, "sha256": "x"}}), {})
        return entry

    assert m.spool_gauges(tmp_path / "none") == m.SpoolGauges()
    stage("20261101_000000_aaaaaaaa", "2026-11-01T00:00:00Z", 100)
    stage("20261101_000000_bbbbbbbb", "2026-11-01T00:10:00Z", 50, permanent=True, last_error="AccessDenied")
    broken = stage("20261101_000000_cccccccc", "2026-11-01T00:20:00Z", 7)
    (broken / ENTRY_JSON).write_text("{torn")
    now = datetime(2026, 11, 1, 1, 0, tzinfo=timezone.utc).timestamp()
    got = m.spool_gauges(tmp_path, now=now)
    # the unreadable entry counts as needing a person, and its size is unknown (not counted)
    assert got == m.SpoolGauges(entries=3, bytes=150, oldest_s=3600.0, needs_attention=2)
