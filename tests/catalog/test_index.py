"""The run index against real loopback S3 servers (SeaweedFS: atomic conditional writes; moto:
racy ones): epilog updates, compaction into quarterly Parquet files, concurrent writers and
compactors, readers that open only the quarters they need, migration from INDEX.jsonl, rebuild."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from tests.helpers.catalog_seed import NOW, archive_run, make_record, run_json, write_index, write_legacy_index
from tests.helpers.s3_requests import RequestLog
from slurm_yolo.archive import index_compact, index_format, index_store, layout
from slurm_yolo.catalog import index, query, scan
from slurm_yolo.catalog.index import Catalog
from slurm_yolo.errors import ConfigError, StoreError


def strip(rec: dict) -> dict:
    """A record as written (``indexed_at`` is the index's stamp)."""
    return {k: v for k, v in rec.items() if k != "indexed_at"}


def quarter_rows(client, cat) -> list[dict]:
    """Every row of every quarterly file, as compacted (pending updates not included)."""
    rows = []
    for quarter in sorted(index_compact.quarters(cat, client)):
        rows += index_format.from_table(index_compact.read_quarter(cat, client, quarter)[0])
    return rows


def index_lines(client, cat) -> list[dict]:
    return [strip(x) for x in quarter_rows(client, cat)]


def pending_keys(client, cat) -> list[str]:
    return [o["Key"] for o in index_store.list_keys(client, cat.bucket, cat.key(index_store.PENDING))]


def full(line: dict) -> dict:
    """A line as the index returns it: every column present."""
    return strip(index_format.from_table(index_format.to_table([line]))[0])


def test_twenty_epilogs_and_three_compactions_at_once_lose_and_duplicate_nothing(s3_server, cat, client):
    rng = random.Random(1)
    old = [make_record(i, rng) for i in range(100, 130)]
    write_index(client, cat, old)  # an existing index to keep
    lines = [{**make_record(i, rng), "user": "ana"} for i in range(20)]
    start = threading.Barrier(23)

    def writer(line):
        start.wait()
        assert index_store.index_run(cat.store, cat.index_url, line) is None

    def compactor(_):
        start.wait()  # compactions race each other and the writers for the same quarters
        for _ in range(3):
            index_compact.compact(cat, grace_s=0)

    with ThreadPoolExecutor(23) as pool:
        list(pool.map(lambda job: job[0](job[1]), [(writer, x) for x in lines] + [(compactor, i) for i in range(3)]))

    new = {y["run_id"]: full(y) for y in lines}
    seen = index.load_records(cat)  # what every reader sees right away
    assert len(seen) == len({x["run_id"] for x in seen}) == 50
    assert {x["run_id"]: strip(x) for x in seen if x["run_id"] in new} == new
    # One more compaction past the grace period folds whatever arrived after the last one.
    index_compact.compact(cat, grace_s=0)
    rows = quarter_rows(client, cat)
    assert len(rows) == 50 and {x["run_id"] for x in rows} == {x["run_id"] for x in old + lines}
    assert {x["run_id"]: strip(x) for x in rows if x["run_id"] in new} == new
    assert pending_keys(client, cat) == []
    for quarter in index_compact.quarters(cat, client):  # one file per quarter, sorted by run ID
        ids = index_compact.read_quarter(cat, client, quarter)[0]["run_id"].to_pylist()
        assert ids == sorted(ids)


def racy_scenario(cat, client):
    """Two compactions both win the same If-Match (moto's server can do that; S3 cannot): B reads
    the quarter, then A's run arrives and A compacts it, then B writes its stale quarter, its
    If-Match not checked. Returns A's line."""
    rng = random.Random(6)
    write_index(client, cat, [make_record(100, rng)])
    a_line, b_line = make_record(1, rng), make_record(2, rng)
    quarter = index_format.quarter_of(a_line)
    assert index_format.quarter_of(b_line) == quarter

    class RacyStore:  # If-Match accepted whatever the ETag: the second writer also "wins"
        def __getattr__(self, name):
            return getattr(client, name)

        def put_object(self, **kw):
            kw.pop("IfMatch", None)
            return client.put_object(**kw)

    index_store.add_to_index(cat.store, cat.index_url, b_line)
    b_pending = index_store.read_pending(cat, client)
    table, _ = index_compact.read_quarter(cat, client, quarter)
    stale, _ = index_format.apply_updates(table, [r for _, r in b_pending])
    index_store.add_to_index(cat.store, cat.index_url, a_line)
    index_compact.compact(cat)  # A folds its run in (and B's), and deletes what its store lets it
    index_compact.commit_quarter(cat, RacyStore(), quarter, lambda _current: stale)  # B's unchecked overwrite
    assert a_line["run_id"] not in {x["run_id"] for x in index_lines(client, cat)}  # B overwrote A's version
    return a_line


def test_a_store_whose_conditional_writes_race_loses_no_update(cat, client):
    """On a store declared non-atomic (moto's default), A deleted nothing it could not prove
    committed: its update stays pending (visible) until a compaction past the grace period."""
    racy = Catalog(dataclasses.replace(cat.store, atomic_conditional_writes=False), cat.index_url)
    a_line = racy_scenario(racy, client)
    assert a_line["run_id"] in {x["run_id"] for x in index.load_records(racy)}  # A's update is still there
    index_compact.compact(racy, grace_s=0)
    assert a_line["run_id"] in {x["run_id"] for x in index_lines(client, racy)}
    assert len(index_lines(client, racy)) == 3


def test_declaring_a_racy_store_atomic_would_lose_updates(cat, client):
    """Why the setting must be true only of stores whose conditional writes really are atomic:
    without the grace period, A deletes its pending update as soon as it wins, and B's
    unchecked overwrite then drops A's run from the catalog."""
    atomic = Catalog(dataclasses.replace(cat.store, atomic_conditional_writes=True), cat.index_url)
    a_line = racy_scenario(atomic, client)
    assert a_line["run_id"] not in {x["run_id"] for x in index.load_records(atomic)}


def test_no_grace_on_a_store_whose_conditional_writes_are_atomic(s3_server, cat, client):
    """SeaweedFS: a compaction deletes the updates it folded in at once. moto: they stay
    pending (still visible) until a compaction past the grace period."""
    line = make_record(4, random.Random(10))
    index_store.add_to_index(cat.store, cat.index_url, line)
    assert index_lines(client, cat) == [] and len(pending_keys(client, cat)) == 1  # the epilog compacts nothing
    assert [x["run_id"] for x in index.load_records(cat)] == [line["run_id"]]
    result = index_compact.compact(cat)
    assert [x["run_id"] for x in index_lines(client, cat)] == [line["run_id"]]
    atomic = s3_server.atomic_conditional_writes
    assert index_store.pending_grace_s(cat.store) == (0 if atomic else index_store.PENDING_GRACE_S)
    assert len(pending_keys(client, cat)) == result.left == (0 if atomic else 1)


def test_quarter_deleted_between_read_and_write_is_a_conflict(s3_server, cat, client):
    """If-Match on a key deleted since it was read: 404 on AWS and moto, 412 on SeaweedFS.
    Both are "someone else changed it": start over, and create the quarter afresh."""
    rng = random.Random(12)
    first = make_record(1, rng)
    write_index(client, cat, [first])
    quarter = index_format.quarter_of(first)
    deleted = []

    def transform(table):
        if not deleted:  # first attempt: the quarter goes away after we read it
            client.delete_object(Bucket=cat.bucket, Key=cat.key(index_format.part_rel(quarter)))
            deleted.append(True)
        return index_format.apply_updates(table, [make_record(1, random.Random(99)) | {"run_id": "x2"}])[0]

    sleeps = []
    index_compact.commit_quarter(cat, client, quarter, transform, sleep=sleeps.append)
    assert len(sleeps) == 1  # exactly one conflict, whatever the server called it
    assert [x["run_id"] for x in index_lines(client, cat)] == ["x2"]


def test_a_reader_never_misses_a_run_a_compaction_folds_in_while_it_reads(cat, client):
    """A compaction commits the quarter and deletes the pending update between a reader's
    listing of ``pending/`` and its GET of that update: the reader reads the quarters after,
    so it finds the run there."""
    line = make_record(5, random.Random(13))
    index_store.add_to_index(cat.store, cat.index_url, line)

    class CompactsAfterListing:
        compacted = False

        def __getattr__(self, name):
            return getattr(client, name)

        def get_object(self, **kw):
            if "/pending/" in kw["Key"] and not self.compacted:
                index_compact.compact(cat, grace_s=0)
                self.compacted = True
            return client.get_object(**kw)

    reader = CompactsAfterListing()
    assert [x["run_id"] for x in index.load_records(cat, reader)] == [line["run_id"]]
    assert reader.compacted and pending_keys(client, cat) == []


def test_the_later_version_of_a_run_wins_whatever_order_it_is_compacted_in(cat, client):
    line = {**make_record(1, random.Random(2)), "user": "ana"}
    t0 = datetime(2026, 11, 22, 12, tzinfo=timezone.utc)
    index_store.add_to_index(cat.store, cat.index_url, line, now=t0)
    newer = {**line, "end_state": "FAILED", "attempts": 2}
    index_store.add_to_index(cat.store, cat.index_url, newer, now=t0 + timedelta(minutes=5))
    (only,) = index.load_records(cat)
    assert (only["end_state"], only["attempts"]) == ("FAILED", 2)
    index_compact.compact(cat, grace_s=0)
    # A straggler of the older version (a retried epilog upload) arrives after: it loses.
    index_store.add_to_index(cat.store, cat.index_url, line, now=t0 + timedelta(minutes=1))
    assert [(x["end_state"], x["attempts"]) for x in index.load_records(cat)] == [("FAILED", 2)]
    index_compact.compact(cat, grace_s=0)
    assert [(x["end_state"], x["attempts"]) for x in index_lines(client, cat)] == [("FAILED", 2)]


def test_a_pending_update_is_visible_before_compaction(cat, client):
    rng = random.Random(3)
    lines = [make_record(i, rng) for i in range(5)]
    write_index(client, cat, lines)
    newer = {**make_record(2, random.Random(4)), "run_id": lines[2]["run_id"], "user": lines[2]["user"],
             "submitted_at": lines[2]["submitted_at"], "map50_95": 0.99}
    new_run = make_record(7, rng)
    for line in (newer, new_run):  # what epilogs leave behind until the drain compacts
        index_store.add_to_index(cat.store, cat.index_url, line)
    records = {x["run_id"]: x for x in index.load_records(cat)}
    assert len(records) == 6
    assert records[newer["run_id"]]["map50_95"] == 0.99 and new_run["run_id"] in records
    assert index_compact.compact(cat, grace_s=index_store.PENDING_GRACE_S).left == 2  # too young: kept, harmlessly
    assert len(index_lines(client, cat)) == 6
    assert {x["run_id"]: x["map50_95"] for x in index_lines(client, cat)}[newer["run_id"]] == 0.99
    assert index_compact.compact(cat, grace_s=0).left == 0 and pending_keys(client, cat) == []


def test_another_users_update_never_replaces_a_run(cat, client):
    # Two users picked the same --run-id: the run stays the first user's, in readers and in
    # the compacted index.
    rng = random.Random(5)
    mine = {**make_record(1, rng), "user": "alice", "map50_95": 0.5}
    write_index(client, cat, [mine])
    squat = {**mine, "user": "bob", "map50_95": 0.99, "archive_url": "s3://elsewhere/"}
    update = {**mine, "map50_95": 0.6}
    for line in (squat, update):
        index_store.add_to_index(cat.store, cat.index_url, line)
    assert [(x["user"], x["map50_95"]) for x in index.load_records(cat)] == [("alice", 0.6)]
    # Also through a filtered read, where alice's row itself does not match: bob's must not show.
    assert scan.select(cat, query.Query(where=(query.parse_where("map50_95>0.9"),))) == []
    index_compact.compact(cat)
    assert [(x["user"], x["map50_95"]) for x in index_lines(client, cat)] == [("alice", 0.6)]


def test_conflicts_retry_then_give_up_with_a_fix(cat, client):
    """A store that always answers 412 (someone else always wins): bounded retries, then StoreError."""
    real = cat.store.boto3_client()

    class AlwaysConflict:
        def __getattr__(self, name):
            return getattr(real, name)

        def put_object(self, **kw):
            if "IfMatch" in kw or "IfNoneMatch" in kw:
                raise real.exceptions.ClientError({"Error": {"Code": "PreconditionFailed"}}, "PutObject")
            return real.put_object(**kw)

    index_store.add_to_index(cat.store, cat.index_url, make_record(1, random.Random(7)))
    sleeps = []
    with pytest.raises(StoreError, match="index compact"):
        index_compact.compact(cat, client=AlwaysConflict(), sleep=sleeps.append, lease=False)  # the quarters, not the lease
    assert len(sleeps) == index_compact.MAX_ATTEMPTS and max(sleeps) <= 2.0
    assert len(index.load_records(cat)) == 1  # still pending, still visible


def test_the_epilogs_index_step_costs_the_same_at_any_index_size(cat, client):
    """Requests and bytes of one epilog's index step, on an empty index and on one of 3,000 runs
    over 18 quarters (plus 50 pending updates): the same requests, the same bytes within a few
    dozen (the run IDs and stamps differ), all well under the 20 KB goal."""
    def cost(i):
        line = {**make_record(i, random.Random(i)), "user": "ana"}
        rec = RequestLog(cat.store.boto3_client())
        store = dataclasses.replace(cat.store)
        object.__setattr__(store, "boto3_client", lambda: rec)  # the same client, recorded
        assert index_store.index_run(store, cat.index_url, line) is None
        return [m for m, _ in rec.requests], rec.bytes

    empty = cost(1)
    rng = random.Random(11)
    write_index(client, cat, [make_record(i, rng) for i in range(3000)])
    for i in range(3000, 3050):
        index_store.add_to_index(cat.store, cat.index_url, make_record(i, rng))
    big = cost(2)
    assert empty[0] == big[0] == ["GET", "PUT", "PUT"]
    assert abs(empty[1] - big[1]) < 100 and big[1] < 20_000, (empty, big)


def test_a_since_query_opens_only_the_quarters_it_needs(cat, client):
    """3,000 runs, one every 2 hours back from NOW (8 months: 2026-Q1 to Q4): --since 60d reads
    the pending updates and 2 quarterly files, and finds exactly what a full read filtered in
    Python finds."""
    rng = random.Random(14)
    lines = [make_record(i, rng) for i in range(3000)]
    write_index(client, cat, lines[5:])
    for x in lines[:5]:
        index_store.add_to_index(cat.store, cat.index_url, x)
    rec = RequestLog(cat.store.boto3_client())
    q = query.Query(since=NOW - timedelta(days=60), where=(query.parse_where("map50_95>0.5"),), sort=("run_id",))
    got = scan.select(cat, q, rec)
    quarters_read = sorted(k[0] for m, k in rec.tails() if m == "GET" and k[1] == index_format.PART_FILE)
    assert quarters_read == ["quarter=2026-Q3", "quarter=2026-Q4"]
    expected = query.select([full(x) for x in lines], q)
    assert [strip(x) for x in got] == expected and len(expected) > 100


WHERES = [
    [], ["map50_95>0.5"], ["map50_95<=0.25", "project==pcb"], ["end_state!=COMPLETED"], ["hparams.lr0==0.01"],
    ["hparams.batch>=16", "map50>0.3"], ["user>bo"], ["job_id>1500"], ["job_id>'1500'"], ["sweep_id==sw3"],
    ["epochs_done<10"], ["dataset_version!=v1"], ["run_id<'20261001'"], ["attempts==1"],
    # the task metrics: a map lookup in Arrow (null where a run lacks the field), a typed fitness column
    ["metrics.map50_95>0.5"], ["metrics.map50<=0.3", "fitness>0.2"], ["metrics.top1>0.1"], ["metrics.map50=='x'"],
    ["fitness_metric=='metrics/mAP50-95(B)'"], ["metrics.map50_95>=0.4", "task==segment"],
]
SORTS = [(("-map50_95", "run_id"), None), (("end_state", "-epochs_done"), 25), (("-hparams.lr0", "run_id"), 10), ((), None),
         (("-metrics.map50_95", "run_id"), 7), (("-fitness",), None)]


def test_pushdown_finds_exactly_what_the_python_query_finds(cat, client):
    """Over 600 runs with nulls, mixed kinds and pending updates: the Arrow pushdown drops only
    what :func:`query.select` drops, for number and text conditions, nulls, and conditions it
    cannot push down (hparams, a number against a text column); and Arrow's sort (nulls last,
    stable, both directions) and limit give the same order as the Python sort."""
    rng = random.Random(15)
    lines = [make_record(i, rng) for i in range(600)]
    write_index(client, cat, lines[20:])
    for x in lines[:20]:
        index_store.add_to_index(cat.store, cat.index_url, x)
    index_order = sorted((full(x) for x in lines), key=lambda x: x["run_id"])  # ties keep this order
    table = scan.read_table(cat)  # every query below on it in memory; a few through the store at the end
    for where in WHERES:
        for project in (None, "pcb"):
            for since in (None, NOW - timedelta(days=20)):
                for sort, limit in SORTS:
                    q = query.Query(project=project, since=since, where=tuple(query.parse_where(w) for w in where),
                                    sort=sort, limit=limit)
                    got = [strip(x) for x in scan.query_table(table, q)]
                    assert got == query.select(index_order, q), (where, project, since, sort, limit)
    for where in WHERES[:4]:
        q = query.Query(since=NOW - timedelta(days=20), where=tuple(query.parse_where(w) for w in where),
                        sort=SORTS[0][0])
        assert [strip(x) for x in scan.select(cat, q)] == query.select(index_order, q), where


def test_a_damaged_quarterly_file_is_a_clear_error_and_rebuild_fixes_it(cat, client, bucket):
    rec = run_json("20261101_000000_dmg001", bucket)
    archive_run(client, bucket, rec, {"a.txt": b"a"}, cat.index_url)
    index.rebuild(cat)
    client.put_object(Bucket=bucket, Key=cat.key(index_format.part_rel("2026-Q4")), Body=b"not parquet")
    with pytest.raises(StoreError, match=r"quarter=2026-Q4/runs.parquet is not a readable index file.*index rebuild"):
        index.load_records(cat)
    assert index.rebuild(cat) == 1
    assert [x["run_id"] for x in index.load_records(cat)] == [rec["run_id"]]


def test_migrate_converts_index_jsonl_and_readers_see_the_same_runs_before_and_after(cli_env, client, capsys):
    from slurm_yolo.cli import main

    rng = random.Random(16)
    lines = [make_record(i, rng) for i in range(400)]
    write_legacy_index(client, cli_env, lines[10:])
    for x in lines[:10]:  # updates an epilog of either version left pending
        client.put_object(Bucket=cli_env.bucket, Key=index_store.pending_key(cli_env, x["run_id"]),
                          Body=json.dumps(x).encode())
    before = sorted(index.load_records(cli_env), key=lambda x: x["run_id"])  # not migrated yet: still readable
    assert len(before) == 400
    assert main(["index", "compact"]) == 2  # would hide INDEX.jsonl's runs: refused, with the fix
    assert "slurm-yolo index migrate" in capsys.readouterr().err
    assert main(["index", "migrate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["migrated_runs"] == 390 and out["updates"] == 10
    assert sorted(index.load_records(cli_env), key=lambda x: x["run_id"]) == before
    assert len(quarter_rows(client, cli_env)) == 400
    keys = [o["Key"] for o in index_store.list_keys(client, cli_env.bucket, cli_env.key(""))]
    assert cli_env.key(index_store.LEGACY_JSONL) not in keys
    assert any(k.startswith(cli_env.key("legacy/INDEX-")) for k in keys)  # kept aside, not lost
    assert main(["index", "migrate"]) == 0 and "no INDEX.jsonl left" in capsys.readouterr().out  # idempotent
    assert main(["index", "compact"]) == 0


def test_rebuild_from_run_json_files(cat, client, bucket):
    recs = [run_json(f"20261101_00000{i}_abcdef", bucket, lr0=0.01 * (i + 1), map50_95=0.1 * i) for i in range(3)]
    for r in recs:
        archive_run(client, bucket, r, {"results.csv": b"epoch\n"}, cat.index_url)
    client.put_object(Bucket=bucket, Key="runs/detect/pcb/yolov8n/junk/run.json", Body=b"{not json")
    client.put_object(Bucket=bucket, Key="runs/detect/pcb/yolov8n/evil/run.json", Body=b'{"run_id": "../../INDEX"}')
    write_index(client, cat, [make_record(1, random.Random(5))])  # a stale line whose run.json is gone
    client.delete_object(Bucket=bucket, Key=cat.key(layout.index_key(recs[0]["run_id"])))

    with pytest.raises(ConfigError, match="rebuild would drop 1 of the 1 runs"):
        index.rebuild(cat)
    assert index.rebuild(cat, force=True) == 3

    def sized(r):  # rebuild also records what the store holds under each run (store usage)
        listed = index_store.list_keys(client, bucket, r["archive_url"].split("/", 3)[3])
        return {**layout.index_record(r), **layout.stored_totals(listed)}

    assert index_lines(client, cat) == [full(sized(r)) for r in recs]
    got = client.get_object(Bucket=bucket, Key=cat.key(layout.index_key(recs[0]["run_id"])))["Body"].read()
    assert json.loads(got) == sized(recs[0])


def test_rebuild_of_an_empty_root_gives_an_empty_index(cat, client):
    assert index.rebuild(cat, [f"s3://{cat.bucket}/nothing-here/"]) == 0
    assert index_lines(client, cat) == []


def test_rebuild_from_a_wrong_root_refuses_to_empty_the_catalog(cat, client):
    lines = [make_record(i, random.Random(8)) for i in range(3)]
    write_index(client, cat, lines)
    with pytest.raises(ConfigError, match=r"rebuild would drop 3 of the 3 runs .* pass --force"):
        index.rebuild(cat, [f"s3://{cat.bucket}/typo/"])
    assert sorted(x["run_id"] for x in index_lines(client, cat)) == sorted(x["run_id"] for x in lines)  # untouched
    assert index.rebuild(cat, [f"s3://{cat.bucket}/typo/"], force=True) == 0
    assert index_lines(client, cat) == []


def test_locate_order_flag_env_site(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("index_url: s3://site-bucket/idx\nstore: {endpoint_url: 'http://minio:9000'}\n")
    env = {"SLURM_YOLO_SITE_CONFIG": str(site)}
    assert index.locate(None, env).index_url == "s3://site-bucket/idx/"
    assert index.locate(None, env).store.endpoint_url == "http://minio:9000"
    env["SLURM_YOLO_INDEX"] = "s3://env-bucket/i/"
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:1"
    assert index.locate(None, env).index_url == "s3://env-bucket/i/"
    assert index.locate(None, env).store.endpoint_url == "http://127.0.0.1:1"
    assert index.locate("s3://flag/x", env).index_url == "s3://flag/x/"
    with pytest.raises(ConfigError, match="--index"):
        index.locate(None, {"SLURM_YOLO_SITE_CONFIG": str(tmp_path / "none.yaml")})
    with pytest.raises(ConfigError, match="s3://"):
        index.locate("/local/path", {})


def test_cli_compact_and_rebuild(cli_env, client, bucket, capsys):
    from slurm_yolo.cli import main

    rec = run_json("20261101_000000_cliabc", bucket)
    archive_run(client, bucket, rec, {"a.txt": b"a"}, cli_env.index_url)
    assert main(["index", "rebuild", "--root", f"s3://{bucket}/runs/", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"index_url": cli_env.index_url, "runs": 1}
    index_store.add_to_index(cli_env.store, cli_env.index_url, {"run_id": "x1"})
    assert main(["index", "compact"]) == 0
    assert "1 pending updates folded into 1 quarters" in capsys.readouterr().out
    assert [x["run_id"] for x in index_lines(client, cli_env)] == ["20261101_000000_cliabc", "x1"]


def test_an_s5cmd_failure_without_json_output_is_an_error():
    # "Incorrect Usage" and crashes print no JSON line: the exit code alone says it failed.
    from slurm_yolo.archive.s5cmd import Result
    from slurm_yolo.errors import StoreError

    with pytest.raises(StoreError, match="listing runs"):
        index.check_s5cmd(Result(returncode=1, outcomes=(), stderr_text="Incorrect Usage"), "listing runs")
    index.check_s5cmd(Result(returncode=0, outcomes=()), "listing runs")  # nothing to do is fine


def test_locate_takes_atomic_conditional_writes_from_the_site_for_its_store_only(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("index_url: s3://site-bucket/idx\n"
                    "store: {endpoint_url: 'http://seaweed:8333', atomic_conditional_writes: true}\n")
    env = {"SLURM_YOLO_SITE_CONFIG": str(site)}
    assert index.locate(None, env).store.atomic_conditional_writes
    assert index.locate(None, {**env, "AWS_ENDPOINT_URL": "http://seaweed:8333"}).store.atomic_conditional_writes
    # Another endpoint is not the store the admin vouched for: the safe default, with the grace period.
    other = index.locate(None, {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9555"}).store
    assert not other.atomic_conditional_writes and index_store.pending_grace_s(other) == index_store.PENDING_GRACE_S
