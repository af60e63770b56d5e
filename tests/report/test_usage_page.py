"""The portal's usage page: `store usage`'s table per project and each project's bytes over
time, for runs whose sizes the index recorded from a listing of the store, in headless Chromium."""

from __future__ import annotations


import pytest

from slurm_yolo.report import pages
from tests.helpers.portal import served_portal
from tests.helpers.report_seed import allowed, seed_usage


@pytest.fixture(scope="module")
def site(seaweedfs_server, tmp_path_factory):
    """On SeaweedFS: the sizes checked here are what a real S3 server lists."""
    with served_portal(seaweedfs_server, tmp_path_factory.mktemp("portal-usage"), seed_usage, allowed) as (
            url, records, out, result):
        yield url, records, seaweedfs_server


def listed(server, url: str) -> tuple[int, int]:
    """(bytes, objects) under a run's folder, listed from the store now."""
    bucket, prefix = url.split("/", 3)[2:]
    objs = server.store().boto3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    return sum(o["Size"] for o in objs), len(objs)


def test_usage_page_shows_each_projects_runs_bytes_and_hours(browser, site, artifacts):
    base, lines, server = site
    browser.get_log("browser")
    browser.get(base + "usage.html")
    browser.save_screenshot(str(artifacts / "usage.png"))
    assert [m for m in browser.get_log("browser") if m.get("level") == "SEVERE"] == []
    rows = browser.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('#usage tbody tr'))"
        ".map(r => [r.dataset.project, Array.from(r.cells).map(c => c.textContent)]))")
    pcb = [listed(server, lines[k]["archive_url"]) for k in ("pcb1", "pcb2")]
    weld = listed(server, lines["weld1"]["archive_url"])
    # project, runs, objects, bytes, size, gpu_hours, cpu_hours, unsized, unmetered
    assert rows["pcb"][:4] == ["pcb", "2", str(pcb[0][1] + pcb[1][1]), str(pcb[0][0] + pcb[1][0])]
    # 2 GPUs x 2 h; 1 GPU x (0.5 + 1) h. CPUs: 4 x 2 h; 8 x 1.5 h.
    assert rows["pcb"][5:] == ["5.50", "20.00", "0", "0"]
    # weld: one sized run (0 GPUs x 3 h, 2 CPUs), one indexed before sizes were recorded.
    assert rows["weld"][:4] == ["weld", "2", str(weld[1]), str(weld[0])]
    assert rows["weld"][5:] == ["1.00", "7.00", "1", "0"]
    assert pages.human_bytes(weld[0]) == rows["weld"][4]
    total = browser.find_element("id", "usage-total").text
    assert str(pcb[0][0] + pcb[1][0] + weld[0]) in total
    curves = browser.execute_script(
        "return Array.from(document.querySelectorAll('#usage-over-time path.curve')).map(p => p.dataset.series)")
    assert sorted(curves) == ["pcb", "weld"]
    browser.find_element("css selector", 'nav a[href="usage.html"]').click()  # linked from every page's nav
    assert browser.current_url.endswith("usage.html")


def test_bytes_over_time_is_cumulative_per_project_and_skips_unsized_runs():
    records = [{"project": "a", "bytes": 100, "end": "2026-11-01T10:00:00Z"},
               {"project": "a", "bytes": 50, "end": "2026-11-03T10:00:00Z"},
               {"project": "b", "bytes": 7, "end": "2026-11-02T23:00:00Z"},
               {"project": "b", "bytes": None, "end": "2026-11-02T23:00:00Z"}]
    unit, first, series = pages.bytes_over_time(records)
    assert (unit, first) == ("day", "2026-11-01")
    assert series == {"a": [(0.0, 100.0), (1.0, 100.0), (2.0, 150.0)], "b": [(1.0, 7.0), (2.0, 7.0)]}
    assert pages.bytes_over_time([{"project": "a", "bytes": None}]) == ("day", "", {})
    assert pages.human_bytes(1_500_000) == "1.5 MB" and pages.human_bytes(999) == "999 B"
