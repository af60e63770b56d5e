"""The portal per task: runs of classify, segment, pose, semantic, depth and yolo26 detection
(their real results.csv headers, their plots) seeded into a real S3 server, built once, and
checked in headless Chromium: each run page shows its task's metric table, curves and plots,
the runs table filters by task with that task's columns, the home page ranks each project's
runs by their task's metric, and the compare view overlays it."""

from __future__ import annotations

import json
import uuid

import pytest

from slurm_yolo.catalog.index import Catalog
from slurm_yolo.report import build, pages
from tests.helpers.portal import served_portal
from tests.helpers.task_seed import allowed, seed_tasks, task_csv


@pytest.fixture(scope="module")
def site(moto_server, tmp_path_factory):
    """One built portal of task runs for the module, served on loopback (moto: the S3 side of
    the build is covered on both servers by test_build.py)."""
    with served_portal(moto_server, tmp_path_factory.mktemp("portal-tasks"), seed_tasks, allowed) as (
            url, records, out, result):
        assert result.errors == {} and result.rebuilt == len(records)
        yield url, records, out


def visit(browser, url: str, artifacts, shot: str):
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(url)
    browser.save_screenshot(str(artifacts / f"{shot}.png"))
    assert [m for m in browser.get_log("browser") if m.get("level") == "SEVERE"] == []


def metric_table(browser) -> dict[str, str]:
    return browser.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('#metrics tr'))"
        ".map(r => [r.cells[0].textContent, r.cells[1].textContent]))")


def series(browser) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#curves path.curve')).map(p => p.getAttribute('data-series'))")


def images_loaded(browser, section: str) -> list[str]:
    """The images of a page section that loaded (their file names). They load lazily: each is
    scrolled into view, then waited for."""
    from selenium.webdriver.support.ui import WebDriverWait

    script = ("const imgs = Array.from(document.querySelectorAll(arguments[0] + ' img'));"
              "imgs.forEach(i => i.scrollIntoView());"
              "return imgs.every(i => i.complete) ? imgs.filter(i => i.naturalWidth > 0).map(i => i.alt) : null")
    return WebDriverWait(browser, 5).until(lambda b: b.execute_script(script, f"#images-{section}"))


def test_classify_run_page_shows_top1_top5_and_its_curves(browser, site, artifacts):
    base, lines, _ = site
    visit(browser, base + f"run/{lines['cls_best']['run_id']}.html", artifacts, "task-classify")
    table = metric_table(browser)
    assert table["task"] == "classify" and table["top1"] == "0.9500" and table["top5"] == "0.9600"
    assert "map50_95" not in table  # a classify run has no box metrics to show
    fitness = browser.find_element("id", "fitness").text
    assert "Best epoch 3" in fitness and "metrics/accuracy_top1" in fitness and "top1 0.9500" in fitness
    drawn = series(browser)
    assert {"metrics/accuracy_top1", "metrics/accuracy_top5", "train/loss", "val/loss"} <= set(drawn)
    first_chart = browser.find_element("css selector", "#curves svg title").get_attribute("textContent")
    assert first_chart == "accuracy"  # the task's metric first, before the losses
    assert images_loaded(browser, "confusion") == ["confusion_matrix_normalized.png"]


def test_segment_run_page_shows_mask_metrics_and_mask_curves(browser, site, artifacts):
    base, lines, _ = site
    visit(browser, base + f"run/{lines['seg_mask']['run_id']}.html", artifacts, "task-segment")
    table = metric_table(browser)
    assert table["map50_95_mask"] == "0.3500" and table["map50_95"] == "0.4000"
    assert browser.find_element("css selector", "#metrics tr.fitness").get_attribute("data-field") == "map50_95_mask"
    assert "metrics/mAP50-95(M)" in series(browser) and "train/seg_loss" in series(browser)
    assert set(images_loaded(browser, "curves")) == {"MaskPR_curve.png", "BoxPR_curve.png", "MaskF1_curve.png"}


def test_other_tasks_show_their_own_metrics_plots_and_losses(browser, site, artifacts):
    base, lines, _ = site
    visit(browser, base + f"run/{lines['pose']['run_id']}.html", artifacts, "task-pose")
    assert metric_table(browser)["map50_95_pose"] == "0.4500"
    assert images_loaded(browser, "curves") == ["PosePR_curve.png"]
    visit(browser, base + f"run/{lines['sem']['run_id']}.html", artifacts, "task-semantic")
    assert metric_table(browser)["miou"] == "0.6000"
    assert "iou_bar_chart.png" in images_loaded(browser, "plots")
    visit(browser, base + f"run/{lines['depth']['run_id']}.html", artifacts, "task-depth")
    table = metric_table(browser)
    assert table["delta1"] == "0.8000" and table["abs_rel"] == "1.2000"  # the best epoch's error: the lowest
    titles = browser.execute_script(
        "return Array.from(document.querySelectorAll('#curves svg > title')).map(t => t.textContent)")
    assert titles[0] == "metrics" and "errors (lower is better)" in titles  # errors apart from delta1..3
    assert images_loaded(browser, "predictions") == ["val_batch0_calibrated.jpg"]
    visit(browser, base + f"run/{lines['y26']['run_id']}.html", artifacts, "task-yolo26")
    assert "train/l1_loss" in series(browser) and "train/dfl_loss" not in series(browser)


def test_runs_table_filters_by_task_with_the_tasks_columns(browser, site, artifacts):
    from selenium.webdriver.support.ui import Select

    base, lines, _ = site
    visit(browser, base + "runs.html", artifacts, "task-runs")
    rows = lambda: browser.execute_script(  # noqa: E731
        "return Array.from(document.querySelectorAll('#runs-body tr')).map(r => r.getAttribute('data-run'))")
    heads = lambda: browser.execute_script(  # noqa: E731
        "return Array.from(document.querySelectorAll('#runs-head th')).map(t => t.getAttribute('data-key'))")
    assert len(rows()) == len(lines) and "map50_95" in heads() and "fitness" in heads()
    Select(browser.find_element("id", "f-task")).select_by_value("classify")
    assert set(rows()) == {lines["cls_best"]["run_id"], lines["cls_low"]["run_id"]}
    assert "metrics.top1" in heads() and "metrics.top5" in heads() and "map50_95" not in heads()
    browser.find_element("css selector", 'th[data-key="metrics.top5"]').click()  # descending first
    assert rows() == [lines["cls_low"]["run_id"], lines["cls_best"]["run_id"]]
    browser.find_element("css selector", 'th[data-key="fitness"]').click()
    assert rows() == [lines["cls_best"]["run_id"], lines["cls_low"]["run_id"]]
    Select(browser.find_element("id", "f-task")).select_by_value("segment")
    assert set(rows()) == {lines["seg_mask"]["run_id"], lines["seg_box"]["run_id"]}
    assert "metrics.map50_95_mask" in heads() and "metrics.map50_95" in heads()
    browser.save_screenshot(str(artifacts / "task-runs-segment.png"))
    # The home page's link to a project's task opens the table filtered so.
    visit(browser, base + "index.html", artifacts, "task-home-link")
    browser.find_element("css selector", '#projects a[href="runs.html#project=roads&task=depth"]').click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 5).until(lambda b: b.find_elements("css selector", "#runs-body tr"))
    assert rows() == [lines["depth"]["run_id"]] and "metrics.abs_rel" in heads()


def test_home_ranks_each_projects_runs_by_their_tasks_metric(browser, site, artifacts):
    base, lines, _ = site
    visit(browser, base + "index.html", artifacts, "task-home")
    best = browser.execute_script(
        "return Array.from(document.querySelectorAll('#projects tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
    by = {(r[0], r[1]): (r[5], r[6], r[7]) for r in best}
    assert by[("parts", "classify")] == (lines["cls_best"]["run_id"], "top1", "0.9500")
    # The better masks win, not the better boxes.
    assert by[("parts", "segment")] == (lines["seg_mask"]["run_id"], "map50_95_mask", "0.3500")
    assert by[("roads", "depth")] == (lines["depth"]["run_id"], "delta1", "0.8000")
    assert by[("roads", "semantic")][1:] == ("miou", "0.6000")


def test_compare_view_overlays_the_task_metric_first(browser, site, artifacts):
    base, lines, _ = site
    ids = f"{lines['cls_best']['run_id']},{lines['cls_low']['run_id']}"
    visit(browser, base + f"compare.html?runs={ids}", artifacts, "task-compare")
    browser.implicitly_wait(5)
    browser.find_element("css selector", "#compare-charts svg")
    titles = browser.execute_script(
        "return Array.from(document.querySelectorAll('#compare-charts svg .chart-title')).map(t => t.textContent)")
    assert titles[0] == "metrics/accuracy_top1" and "metrics/accuracy_top5" in titles
    assert browser.execute_script("return document.querySelector('#compare-charts svg')"
                                  ".querySelectorAll('path.curve').length") == 2  # one curve per run
    table = browser.execute_script(
        "return Object.fromEntries(Array.from(document.querySelectorAll('#compare-body tr'))"
        ".map(r => [r.cells[0].textContent, Array.from(r.cells).slice(1).map(c => c.textContent)]))")
    assert table["task metric"] == ["top1", "top1"] and table["top1"] == ["0.9500", "0.6000"]
    assert table["top5"] == ["0.9600", "0.9900"]


def test_run_data_and_table_rows_name_the_task_metric(site):
    _, lines, out = site
    data = (out / f"run/{lines['seg_mask']['run_id']}/data.js").read_text()
    data = json.loads(data.removeprefix("window.portalRunData(").rstrip(");\n"))
    assert data["fitness_metric"] == "map50_95_mask" and data["fitness_column"] == "metrics/mAP50-95(M)"
    assert data["fitness"] == 0.35 and ["map50_95_mask", 0.35] in data["metrics"]
    assert set(data["curves"]) == {c for c in pages.parse_results_csv(task_csv("segment", [0.1]).decode())
                                   if c.startswith("metrics/")}
    fields = json.loads((out / "data/tasks.js").read_text().removeprefix("window.PORTAL_METRIC_FIELDS = ")
                        .rstrip(";\n"))
    assert fields["classify"] == ["top1", "top5"]
    assert fields["segment"][:5] == ["map50_95", "map50", "precision", "recall", "map50_95_mask"]


# --------------------------------------------------------------------------- pure parts

def test_an_index_record_without_task_metrics_is_ranked_as_before():
    """A record of an older epilog (box columns only): a detect run by box mAP50-95; a segment
    run's box mAP is not what it is chosen by, so it gets no rank rather than a wrong one."""
    old = {"task": "detect", "map50_95": 0.5, "map50": 0.7}
    assert pages.fitness(old) == ("map50_95", 0.5)
    assert pages.fitness({"task": "segment", "map50_95": 0.5}) == (None, None)
    assert pages.record_metrics(old) == {"map50_95": 0.5, "map50": 0.7}
    new = {"task": "classify", "fitness_metric": "metrics/accuracy_top1", "fitness": 0.9,
           "metrics": {"top1": 0.9, "top5": None}, "map50_95": None}
    assert pages.fitness(new) == ("top1", 0.9) and pages.record_metrics(new) == {"top1": 0.9}


def test_run_page_metrics_come_from_results_csv_when_the_record_lacks_them():
    csv = task_csv("classify", [0.4, 0.8, 0.7])
    cols = pages.parse_results_csv(csv.decode())
    indexed = {"task": "classify", "run_id": "r"}
    column = pages.fitness_column(indexed, list(cols), {"classify": "metrics/accuracy_top1"})
    got = pages.task_metrics(indexed, cols, build._best_epoch(csv.decode(), column))
    assert (got.column, got.field, got.value, got.best_epoch) == ("metrics/accuracy_top1", "top1", 0.8, 2)
    assert [f for f, _, _ in got.rows] == ["top1", "top5"]


def test_portal_over_an_index_quarter_of_the_previous_version(moto_server, tmp_path):
    """A quarter written before the index had task metrics (box columns only, no schema
    version): its detect run is still ranked by box mAP50-95 and shows it; its segment run's
    box mAP is not what segment runs are chosen by, so it is listed unranked, and its page takes
    its mask metrics from the archived results.csv."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from slurm_yolo.archive import index_format, layout
    from tests.helpers.catalog_seed import archive_run, results_csv, run_json
    from tests.helpers.task_seed import task_record

    store = moto_server.store()
    client = store.boto3_client()
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    cat = Catalog(store, f"s3://{bucket}/index/")
    det = run_json("20261119_090000_olddet01", bucket, map50_95=0.55)
    det["archive_url"] = f"s3://{bucket}/runs/ana/detect/pcb/yolov8n/{det['run_id']}/"
    seg = task_record(bucket, "20261119_100000_oldseg02", "segment",
                      task_csv("segment", [0.1, 0.3], {"metrics/mAP50-95(B)": [0.2, 0.45]}),
                      project="pcb", model="yolov8n-seg")
    old = []
    for rec, csv in ((det, results_csv([0.3, 0.55])), (seg, task_csv("segment", [0.1, 0.3],
                                                                      {"metrics/mAP50-95(B)": [0.2, 0.45]}))):
        line = archive_run(client, bucket, rec, {"results.csv": csv}, cat.index_url)
        client.delete_object(Bucket=bucket, Key=cat.key(layout.index_key(rec["run_id"])))
        old.append({k: v for k, v in line.items() if k not in ("fitness_metric", "fitness", "metrics")})
    # The previous version's file: its columns, no schema version in the metadata.
    table = index_format.to_table(old)
    table = table.drop_columns(["fitness_metric", "fitness", "metrics"]).replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    client.put_object(Bucket=bucket, Key=cat.key(index_format.part_rel(index_format.quarter_of(old[0]))),
                      Body=sink.getvalue().to_pybytes())

    out = tmp_path / "site"
    result = build.build_site(cat, out, allowed_prefix=allowed(cat))
    assert result.runs == 2 and result.errors == {}
    home = (out / "index.html").read_text()
    assert f'href="run/{det["run_id"]}.html"' in home and "0.5500" in home
    assert f'href="run/{seg["run_id"]}.html"' not in home and "no metrics yet" in home
    page = (out / f"run/{seg['run_id']}.html").read_text()
    assert 'data-field="map50_95_mask"' in page and "<td>0.3000</td>" in page
