"""`report build` against a real S3 server: pages, incremental rebuilds, prefixes, publishing."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers.report_seed import HOSTILE, allowed, seed, rewrite_index
from slurm_yolo.cli import main
from slurm_yolo.report import build, pages


@pytest.fixture
def seeded(cat, store):
    client = store.boto3_client()
    return client, seed(client, cat)


def test_build_writes_every_page_and_only_linkable_runs(cat, seeded, tmp_path):
    client, lines = seeded
    result = build.build_site(cat, tmp_path / "site", allowed_prefix=allowed(cat))
    site = tmp_path / "site"
    assert result.runs == 5 and result.rebuilt == 4 and not result.errors
    assert set(result.unlinked) == {lines["foreign"]["run_id"]}
    assert "outside" in result.unlinked[lines["foreign"]["run_id"]]
    for name in ("index.html", "runs.html", "compare.html", "data/runs.js", "static/portal.js", "static/portal.css"):
        assert (site / name).is_file(), name
    good = lines["good"]["run_id"]
    page = (site / f"run/{good}.html").read_text()
    # curves: one path per series, with a point per epoch
    paths = re.findall(r'<path class="curve" data-series="metrics/mAP50-95\(B\)" d="([^"]+)"', page)
    assert len(paths) == 1 and paths[0].count("L") == 4
    for img in ("train_batch0.jpg", "val_batch0_pred.jpg", "confusion_matrix.png"):
        assert f'src="{good}/files/{img}"' in page
        assert (site / f"run/{good}/files/{img}").stat().st_size > 0
    assert f"slurm-yolo runs fetch {good} --to ./{good}" in page and f"slurm-yolo reproduce {good}" in page
    assert "weights/best.pt" in page and f"{lines['good']['archive_url']}weights/best.pt" in page
    assert not (site / f"run/{good}/files/weights/best.pt").exists()  # weights are linked, never copied
    oom = (site / f"run/{lines['oom']['run_id']}.html").read_text()
    assert "USR2" in oom and "OUT_OF_MEMORY" in oom and "TIMEOUT" in oom and 'class="attempt state-TIMEOUT"' in oom
    assert not (site / f"run/{lines['foreign']['run_id']}.html").exists()
    rows = json.loads((site / "data/runs.js").read_text().removeprefix("window.PORTAL_RUNS = ").rstrip(";\n"))
    assert {r["run_id"]: r["link"] for r in rows}[lines["foreign"]["run_id"]] is False
    home = (site / "index.html").read_text()
    assert f'href="run/{good}.html"' in home  # best run of project pcb


def test_hostile_values_are_escaped_everywhere(cat, seeded, tmp_path):
    _, lines = seeded
    build.build_site(cat, tmp_path, allowed_prefix=allowed(cat))
    for path in tmp_path.rglob("*"):
        if path.suffix in (".html", ".js") and "static" not in path.parts:
            text = path.read_text()
            assert "<script>window" not in text and "<img src=x" not in text, path
    page = (tmp_path / f"run/{lines['hostile']['run_id']}.html").read_text()
    assert "&lt;/script&gt;&lt;script&gt;window.__pwned=1" in page


def test_rebuild_is_incremental(cat, seeded, tmp_path):
    client, lines = seeded
    first = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat))
    assert first.rebuilt == 4
    again = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat))
    assert again.rebuilt == 0 and again.removed == 0
    # the epilog updates one run (a requeued attempt ended), prune deletes another
    lines["oom"]["attempts"] = 3
    del lines["empty"]
    rewrite_index(client, cat, lines)
    third = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat))
    assert third.rebuilt == 1 and third.removed == 1
    assert not (tmp_path / "run/20261121_080000_empty005.html").exists()
    forced = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat), force=True)
    assert forced.rebuilt == 3


def test_unchanged_index_is_decided_from_its_listing_without_reading_runs(cat, seeded, tmp_path, store):
    client, lines = seeded
    first = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat))
    assert not first.unchanged and first.rebuilt == 4
    requests: list[str] = []
    counted = store.boto3_client()
    counted.meta.events.register("before-call.s3", lambda model, **_: requests.append(model.name))
    again = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat), client=counted)
    assert again.unchanged and again.rebuilt == 0 and again.runs == 5
    assert set(again.unlinked) == {lines["foreign"]["run_id"]}
    assert requests == ["ListObjectsV2", "ListObjectsV2"]  # pending/ and parquet/: no run, no quarter read
    # Another allowed prefix is another site: not skipped; the foreign run gets its page now.
    other = build.build_site(cat, tmp_path, allowed_prefix=None)
    assert not other.unchanged and other.rebuilt == 1 and not other.unlinked
    # A new pending update (an epilog indexed a run) changes the listing: the build reads the index.
    lines["oom"]["attempts"] = 4
    from slurm_yolo.catalog.index import add_to_index
    add_to_index(cat.store, cat.index_url, lines["oom"])
    after = build.build_site(cat, tmp_path, allowed_prefix=None)
    assert not after.unchanged and after.rebuilt == 1


def test_a_build_stopped_half_way_is_not_taken_for_a_complete_one(cat, seeded, tmp_path, store):
    build.build_site(cat, tmp_path, allowed_prefix=allowed(cat))
    assert build.build_site(cat, tmp_path, allowed_prefix=allowed(cat)).unchanged
    failing = store.boto3_client()

    def gone(**_):
        raise RuntimeError("the store went away")

    failing.meta.events.register("before-call.s3.GetObject", gone)
    with pytest.raises(Exception, match="went away"):  # a forced rebuild that stops after it began to write
        build.build_site(cat, tmp_path, allowed_prefix=allowed(cat), force=True, client=failing)
    again = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat))
    assert not again.unchanged and not again.errors
    assert build.build_site(cat, tmp_path, allowed_prefix=allowed(cat)).unchanged


@pytest.mark.parametrize("fetch", build.FETCHERS)
def test_images_beyond_the_budget_come_with_the_next_builds(cat, seeded, tmp_path, fetch):
    _, lines = seeded
    good = lines["good"]["run_id"]
    first = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat), max_images=2, fetch=fetch)
    # good has 5 images (the newest runs are first in line, hostile's one image fits): it waits.
    assert first.deferred == 1 and first.rebuilt == 4 and not first.errors
    page = (tmp_path / f"run/{good}.html").read_text()
    assert 'id="images-deferred"' in page and "<img" not in page and "train_batch0.jpg" in page
    assert not (tmp_path / f"run/{good}/files/train_batch0.jpg").exists()
    assert (tmp_path / f"run/{good}/files/results.csv").is_file()  # the text files came at once
    assert not build.build_site(cat, tmp_path, allowed_prefix=allowed(cat), max_images=2).unchanged
    done = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat), max_images=5, fetch=fetch)
    assert done.deferred == 0 and done.rebuilt == 1
    page = (tmp_path / f"run/{good}.html").read_text()
    assert 'id="images-deferred"' not in page and f'src="{good}/files/train_batch0.jpg"' in page
    assert (tmp_path / f"run/{good}/files/train_batch0.jpg").stat().st_size > 0
    assert build.build_site(cat, tmp_path, allowed_prefix=allowed(cat)).unchanged


@pytest.mark.parametrize("fetch", build.FETCHERS)
def test_details_beyond_the_budget_come_with_the_next_builds(cat, seeded, tmp_path, fetch, store):
    _, lines = seeded
    good, oom, hostile = (lines[k]["run_id"] for k in ("good", "oom", "hostile"))
    # The 2 newest linked runs (empty, hostile) get their details; good and oom are paged from
    # the index and their run.json only.
    first = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat), max_details=2, fetch=fetch)
    assert first.rebuilt == 4 and first.pending == 2 and first.deferred == 0 and not first.errors
    page = (tmp_path / f"run/{good}.html").read_text()
    assert 'id="details-pending"' in page and 'class="curve"' not in page and "<img" not in page
    assert "No results.csv in the archive" not in page and "No args.yaml" not in page  # pending, not "none"
    assert "0.6200" in page and f"slurm-yolo reproduce {good}" in page  # the index's metrics, the commands
    assert "lr0" in page  # the index's key hyper-parameters stand in for args.yaml meanwhile
    assert (tmp_path / f"run/{good}/files/run.json").is_file()
    assert not (tmp_path / f"run/{good}/files/results.csv").exists()
    assert "USR2" in (tmp_path / f"run/{oom}.html").read_text()  # the attempts come from run.json at once
    data = (tmp_path / f"run/{good}/data.js").read_text()
    assert '"pending": true' in data and '"curves": {}' in data
    assert 'id="details-pending"' not in (tmp_path / f"run/{hostile}.html").read_text()
    # The next build copies only what is missing: no run.json again, no file of the runs already done.
    requests: list[tuple[str, str]] = []
    counted = store.boto3_client()
    counted.meta.events.register("before-parameter-build.s3", lambda model, params, **_: requests.append(
        (model.name, params.get("Key", ""))))
    second = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat), max_details=2, fetch=fetch, client=counted)
    assert second.rebuilt == 2 and second.pending == 0 and second.deferred == 0 and not second.errors
    if fetch == "boto3":
        got = sorted(key.rsplit("/", 2)[-2] + "/" + key.rsplit("/", 1)[-1] for name, key in requests
                     if name == "GetObject" and key.startswith("runs/"))
        assert not [k for k in got if k.endswith("/run.json") or hostile in k], got
        assert f"{good}/results.csv" in got and f"{oom}/args.yaml" in got and f"{good}/train_batch0.jpg" in got
    page = (tmp_path / f"run/{good}.html").read_text()
    assert 'id="details-pending"' not in page and '<path class="curve" data-series="metrics/mAP50-95(B)"' in page
    assert f'src="{good}/files/train_batch0.jpg"' in page and "weights/best.pt" in page
    assert '"pending"' not in (tmp_path / f"run/{good}/data.js").read_text()
    assert build.build_site(cat, tmp_path, allowed_prefix=allowed(cat), max_details=2).unchanged


def test_a_changed_record_takes_its_details_again(cat, seeded, tmp_path):
    client, lines = seeded
    good = lines["good"]["run_id"]
    build.build_site(cat, tmp_path, allowed_prefix=allowed(cat))
    # A requeued attempt ended: new record, new results.csv. With no details budget left the page
    # must not keep the old curves as if current: it says they are pending.
    lines["good"]["attempts"] = 2
    rewrite_index(client, cat, lines)
    again = build.build_site(cat, tmp_path, allowed_prefix=allowed(cat), max_details=0)
    assert again.rebuilt == 1 and again.pending == 1
    page = (tmp_path / f"run/{good}.html").read_text()
    assert 'id="details-pending"' in page and 'class="curve"' not in page


def test_every_fetcher_builds_the_same_site(cat, seeded, tmp_path):
    for how in build.FETCHERS:
        build.build_site(cat, tmp_path / how, allowed_prefix=allowed(cat), fetch=how)
    state = [json.loads((tmp_path / how / build.STATE_FILE).read_text())["files"] for how in build.FETCHERS]
    # The same files with the same bytes (the pages' "built at" minute aside).
    assert set(state[0]) == set(state[1]) == set(state[2])
    copied = [{k: v for k, v in files.items() if "/files/" in k} for files in state]
    assert copied[0] == copied[1] == copied[2] and len(copied[0]) > 10


def test_presigned_gets_say_what_the_store_refused(cat, seeded, store, s3_server):
    from slurm_yolo.errors import StoreError
    from slurm_yolo.store import Store

    _, lines = seeded
    url = lines["good"]["archive_url"]
    get = build._PresignedGet(store.boto3_client(), 2)
    assert get(url + "results.csv").startswith(b"epoch,") and get(url + "no-such-file") is None
    wrong = Store(endpoint_url=store.endpoint_url, keys=(("AWS_ACCESS_KEY_ID", "SYWRONG0000000000000"),
                                                          ("AWS_SECRET_ACCESS_KEY", "0" * 48)))
    if s3_server.checks_keys:  # SeaweedFS does; moto accepts any key
        with pytest.raises(StoreError, match=r"HTTP 403.*credentials"):
            build._PresignedGet(wrong.boto3_client(), 2)(url + "results.csv")


def test_publish_uploads_only_what_changed(cat, seeded, tmp_path):
    client, lines = seeded
    build.build_site(cat, tmp_path, allowed_prefix=allowed(cat))
    url = build.default_publish_url(cat)
    uploaded, deleted = build.publish(cat, tmp_path, url)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=cat.bucket, Prefix="portal/")["Contents"]}
    assert uploaded == len(keys) and deleted == 0 and "portal/index.html" in keys
    assert "portal/.portal-state.json" not in keys
    head = client.head_object(Bucket=cat.bucket, Key="portal/index.html")
    assert head["ContentType"].startswith("text/html")
    assert client.head_object(Bucket=cat.bucket, Key="portal/static/portal.js")["ContentType"].startswith("text/javascript")
    build.build_site(cat, tmp_path, allowed_prefix=allowed(cat))
    again = build.publish(cat, tmp_path, url)
    assert again[1] == 0 and again[0] <= 3  # at most the cross-run pages, whose "built at" minute may change
    empty = [k for k in keys if "20261121_080000_empty005" in k]
    del lines["empty"]
    rewrite_index(client, cat, lines)
    build.build_site(cat, tmp_path, allowed_prefix=allowed(cat))
    uploaded, deleted = build.publish(cat, tmp_path, url)
    assert deleted == len(empty) == 4 and uploaded >= 2  # the run's page, data.js, 2 files went; runs.js changed
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=cat.bucket, Prefix="portal/")["Contents"]}
    assert not [k for k in keys if "20261121_080000_empty005" in k]
    with pytest.raises(Exception, match="apart from the index"):
        build.publish(cat, tmp_path, cat.index_url)


def test_cli_build_and_publish(cat, seeded, tmp_path, monkeypatch, store, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.endpoint_url)
    for k, v in store.keys:
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLURM_YOLO_INDEX", cat.index_url)
    out = tmp_path / "site"
    rc = main(["report", "build", "--out", str(out), "--publish", "--allowed-prefix", allowed(cat), "--json"])
    got = json.loads(capsys.readouterr().out)
    assert rc == 0 and got["runs"] == 5 and got["published"] > 10 and got["publish_url"].endswith("/portal/")
    assert got["pending"] == 0
    rc = main(["report", "build", "--out", str(tmp_path / "small"), "--max-details", "1", "--allowed-prefix",
               allowed(cat)])
    text = capsys.readouterr().out
    assert rc == 0 and "3 runs wait for their curves, parameters and files (--max-details 1)" in text


# --------------------------------------------------------------------------- pure parts

@pytest.mark.parametrize("value", ["</script><script>alert(1)</script>", "<!--", "a&b", "\u2028", {"k": "</SCRIPT>"}])
def test_script_json_cannot_close_a_script(value):
    text = pages.script_json(value)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == value


def test_script_json_turns_nan_into_null():
    assert pages.script_json({"x": float("nan"), "y": [float("inf")]}) == '{"x": null, "y": [null]}'


@pytest.mark.parametrize("rel, ok", [("weights/best.pt", True), ("../x", False), ("/etc/passwd", False),
                                     ("a//b", False), ("a\\b", False), ("x\n.png", False), (".", False),
                                     ('"><img>.png', True)])
def test_safe_rel(rel, ok):
    assert (pages.safe_rel(rel) is not None) is ok


def test_linkable_follows_the_users_prefix():
    line = {"run_id": "r1", "user": "ana", "archive_url": "s3://b/runs/ana/detect/p/m/r1/"}
    assert pages.linkable(line, "s3://b/runs/{user}/") is None
    assert "outside" in pages.linkable({**line, "user": "bo"}, "s3://b/runs/{user}/")
    assert pages.linkable({**line, "archive_url": "s3://b/runs/ana/../bo/r1/"}, None)
    assert pages.linkable({**line, "run_id": "../r1"}, None)
    assert pages.linkable({**line, "archive_url": "s3://b/"}, None)


def test_results_csv_as_ultralytics_writes_it():
    text = ("                  epoch,         train/box_loss,   metrics/mAP50(B),metrics/mAP50-95(B),lr/pg0\n"
            "                      1,                 3.1,            0.01,             0.002,  0.07\n"
            "                      2,                 2.5,            0.2,              nan,    0.05\n"
            "                      3,                 2.4,            0.3")  # torn last line
    cols = pages.parse_results_csv(text)
    assert cols["epoch"] == [1, 2, 3] and cols["metrics/mAP50-95(B)"] == [0.002, None, None]
    groups = dict(pages.curve_groups(cols))
    assert groups["mAP (box)"]["metrics/mAP50(B)"] == [(1, 0.01), (2, 0.2), (3, 0.3)]
    assert set(groups) == {"mAP (box)", "train losses", "learning rate"}
    assert pages.metric_curves(cols) == {"metrics/mAP50(B)": [[1, 0.01], [2, 0.2], [3, 0.3]],
                                         "metrics/mAP50-95(B)": [[1, 0.002]]}


@pytest.mark.parametrize("value", [
    {"run": {"task": "detect", "project": "pcb", "notes": None}, "train": {"lr0": 0.01, "epochs": 3, "amp": True,
                                                                        "imgsz": [640, 480], "extra": {}}},
    {"strings": ["yes", "No", "null", "~", "1e5", "0x1f", "2026-12-04", "1:20", ".inf", "-1", "a: b", "#c", "",
                 " lead", "quote'\"", "back\\slash", "tab\tnew\nline", "\u2028", "ünïcode", "data/x.yaml",
                 "/abs/path", "<script>", "@at", "s3://b/runs/"]},
    {"nested": [{"a": 1, "b": [1, 2]}, [3, [4]], {}], "floats": [1.5, -0.0, 1e-300, float("inf")], 7: "int key"},
])
def test_yaml_text_reads_back_as_the_value(value):
    import yaml

    text = pages.yaml_text(value)
    expected = {str(k): v for k, v in value.items()}
    assert yaml.safe_load(text) == expected
    if "run" in value:  # reads like PyYAML's block style
        assert "train:\n  lr0: 0.01\n  epochs: 3\n  amp: true\n  imgsz:\n  - 640\n  - 480\n  extra: {}" in text


def test_script_json_keeps_strings_that_look_non_finite():
    assert json.loads(pages.script_json({"s": "NaN Infinity", "x": float("nan")})) == {"s": "NaN Infinity", "x": None}


def test_line_chart_escapes_labels():
    svg = str(pages.line_chart("<b>", {HOSTILE: [(1, 0.1), (2, 0.2)]}))
    assert "<script>" not in svg and "&lt;b&gt;" in svg and svg.count("<circle") == 2


def test_serve_hides_the_build_state_and_refuses_an_unbuilt_folder(tmp_path):
    import threading
    import urllib.error
    import urllib.request

    from slurm_yolo.errors import ConfigError
    from slurm_yolo.report.serve import make_server

    with pytest.raises(ConfigError, match="report build"):
        make_server(tmp_path)
    (tmp_path / "index.html").write_text("<!doctype html><title>x</title>")
    (tmp_path / build.STATE_FILE).write_text("{}")
    server = make_server(tmp_path, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with urllib.request.urlopen(base + "index.html", timeout=5) as r:
            assert r.status == 200 and server.server_address[0] == "127.0.0.1"
        for hidden in (build.STATE_FILE, build.STATE_HEAD):
            (tmp_path / hidden).write_text("{}")
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(base + hidden, timeout=5)
    finally:
        server.shutdown()
        server.server_close()
