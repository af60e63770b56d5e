"""INDEX.jsonl against the real loopback S3 server: concurrent writers, pending updates, rebuild."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from catalog_seed import archive_run, make_line, run_json, write_index
from slurm_yolo.archive import layout
from slurm_yolo.archive import index_store
from slurm_yolo.catalog import index
from slurm_yolo.catalog.index import Catalog
from slurm_yolo.errors import ConfigError, StoreError


def index_lines(client, cat) -> list[dict]:
    body = client.get_object(Bucket=cat.bucket, Key=cat.key(layout.INDEX_JSONL))["Body"].read()
    return [json.loads(x) for x in body.splitlines()]


def pending_keys(client, cat) -> list[str]:
    return [o["Key"] for o in index_store.list_keys(client, cat.bucket, cat.key(index_store.PENDING))]


def test_twenty_concurrent_writers_lose_and_duplicate_nothing(s3_server, cat, client):
    rng = random.Random(1)
    write_index(client, cat, [make_line(i, rng) for i in range(100, 130)])  # an existing index to keep
    lines = [make_line(i, rng) for i in range(20)]
    start = threading.Barrier(20)

    def writer(line):
        start.wait()  # all 20 race for the same ETag
        index_store.add_to_index(cat.store, cat.index_url, line)

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(writer, lines))

    new = {y["run_id"]: y for y in lines}
    seen = index.load_records(cat)  # what every reader sees right away
    assert len(seen) == len({x["run_id"] for x in seen}) == 50
    assert {x["run_id"]: x for x in seen if x["run_id"] in new} == new
    if s3_server.atomic_conditional_writes:
        # Each writer's won compare-and-swap is final: its update is in INDEX.jsonl, pending/ is empty.
        assert pending_keys(client, cat) == []
        assert {x["run_id"]: x for x in index_lines(client, cat) if x["run_id"] in new} == new
    else:
        # Fresh updates stay pending for the grace period.
        assert len(pending_keys(client, cat)) == 20
    # Past it, one compaction folds them all into INDEX.jsonl and cleans up.
    assert index_store.compact(cat, grace_s=0) == 50
    got = index_lines(client, cat)
    ids = [x["run_id"] for x in got]
    assert {x["run_id"]: x for x in got if x["run_id"] in new} == new
    assert len(ids) == 50 and ids == sorted(ids)
    assert pending_keys(client, cat) == []


def racy_scenario(cat, client):
    """Two writers both win the same If-Match (moto's server can do that; S3 cannot): B reads
    INDEX.jsonl and the pending list, then A adds its run and compacts, then B writes
    INDEX.jsonl from its stale listing, its If-Match not checked. Returns A's index line."""
    rng = random.Random(6)
    write_index(client, cat, [make_line(100, rng)])
    a_line, b_line = make_line(1, rng), make_line(2, rng)

    class RacyStore:  # If-Match accepted whatever the ETag: the second writer also "wins"
        def __getattr__(self, name):
            return getattr(client, name)

        def put_object(self, **kw):
            kw.pop("IfMatch", None)
            return client.put_object(**kw)

    def b_transform(current, pending):
        index_store.add_to_index(cat.store, cat.index_url, a_line)
        return index_store.merge(current, pending)

    client.put_object(Bucket=cat.bucket, Key=index_store.pending_key(cat, b_line["run_id"]), Body=json.dumps(b_line))
    index_store.update_index(cat, b_transform, client=RacyStore())
    assert a_line["run_id"] not in {x["run_id"] for x in index_lines(client, cat)}  # B overwrote A's version
    return a_line


def test_a_store_whose_conditional_writes_race_loses_no_update(cat, client):
    """On a store declared non-atomic (moto's default) the update survives B's overwrite: it
    stays pending (visible) until a compaction past the grace period."""
    racy = Catalog(dataclasses.replace(cat.store, atomic_conditional_writes=False), cat.index_url)
    a_line = racy_scenario(racy, client)
    assert a_line["run_id"] in {x["run_id"] for x in index.load_records(racy)}  # A's update is still there
    assert index_store.compact(racy, grace_s=0) == 3
    rng = random.Random(6)
    expected = {make_line(100, rng)["run_id"], make_line(1, rng)["run_id"], make_line(2, rng)["run_id"]}
    assert a_line["run_id"] in expected and {x["run_id"] for x in index_lines(client, racy)} == expected


def test_declaring_a_racy_store_atomic_would_lose_updates(cat, client):
    """Why the setting must be true only of stores whose conditional writes really are atomic:
    without the grace period, A deletes its pending update as soon as it wins, and B's
    unchecked overwrite then drops A's run from the catalog."""
    atomic = Catalog(dataclasses.replace(cat.store, atomic_conditional_writes=True), cat.index_url)
    a_line = racy_scenario(atomic, client)
    assert a_line["run_id"] not in {x["run_id"] for x in index.load_records(atomic)}


def test_no_grace_on_a_store_whose_conditional_writes_are_atomic(s3_server, cat, client):
    """SeaweedFS: an update is folded in and its pending entry deleted by the writer itself.
    moto: it stays pending (still visible) until a compaction past the grace period."""
    line = make_line(4, random.Random(10))
    index_store.add_to_index(cat.store, cat.index_url, line)
    assert [x["run_id"] for x in index_lines(client, cat)] == [line["run_id"]]
    assert [x["run_id"] for x in index.load_records(cat)] == [line["run_id"]]
    index_store.compact(cat)
    left = pending_keys(client, cat)
    assert index_store.pending_grace_s(cat.store) == (0 if s3_server.atomic_conditional_writes else index_store.PENDING_GRACE_S)
    assert len(left) == (0 if s3_server.atomic_conditional_writes else 1)


def test_index_deleted_between_read_and_write_is_a_conflict(s3_server, cat, client):
    """If-Match on a key deleted since it was read: 404 on AWS and moto, 412 on SeaweedFS.
    Both are "someone else changed it": start over, and create INDEX.jsonl afresh."""
    rng = random.Random(12)
    write_index(client, cat, [make_line(1, rng)])
    line = make_line(2, rng)
    client.put_object(Bucket=cat.bucket, Key=index_store.pending_key(cat, line["run_id"]), Body=json.dumps(line))
    deleted = []

    def transform(current, pending):
        if not deleted:  # first attempt: the index goes away after we read it
            client.delete_object(Bucket=cat.bucket, Key=cat.key(layout.INDEX_JSONL))
            deleted.append(True)
        return index_store.merge(current, pending)

    sleeps = []
    assert index_store.update_index(cat, transform, sleep=sleeps.append) == 1
    assert len(sleeps) == 1  # exactly one conflict, whatever the server called it
    assert [x["run_id"] for x in index_lines(client, cat)] == [line["run_id"]]


def test_a_reader_never_misses_a_run_a_compaction_just_folded_in(cat, client):
    """A compaction commits INDEX.jsonl and deletes the pending update between a reader's read
    of the one and its listing of the other: the reader notices the new ETag and reads again."""
    line = make_line(5, random.Random(13))
    client.put_object(Bucket=cat.bucket, Key=index_store.pending_key(cat, line["run_id"]), Body=json.dumps(line))

    class CompactsDuringListing:
        listed = 0

        def __getattr__(self, name):
            return getattr(client, name)

        def get_paginator(self, name):
            if not self.listed:  # the first listing of pending/ starts after a compaction finished
                index_store.compact(cat, grace_s=0)
            self.listed += 1
            return client.get_paginator(name)

    reader = CompactsDuringListing()
    assert [x["run_id"] for x in index.load_records(cat, reader)] == [line["run_id"]]
    assert reader.listed == 2


def test_update_of_a_run_replaces_its_line(cat, client):
    line = make_line(1, random.Random(2))
    index_store.add_to_index(cat.store, cat.index_url, line)
    index_store.add_to_index(cat.store, cat.index_url, {**line, "end_state": "FAILED", "attempts": 2})
    (only,) = index_lines(client, cat)
    assert (only["end_state"], only["attempts"]) == ("FAILED", 2)


def test_a_pending_update_is_visible_before_compaction(cat, client):
    rng = random.Random(3)
    lines = [make_line(i, rng) for i in range(5)]
    write_index(client, cat, lines)
    newer = {**make_line(2, random.Random(4)), "run_id": lines[2]["run_id"], "user": lines[2]["user"], "map50_95": 0.99}
    new_run = make_line(7, rng)
    for line in (newer, new_run):  # what add_to_index leaves behind when compaction never ran
        client.put_object(Bucket=cat.bucket, Key=index_store.pending_key(cat, line["run_id"]), Body=json.dumps(line))
    records = {x["run_id"]: x for x in index.load_records(cat)}
    assert len(records) == 6
    assert records[newer["run_id"]]["map50_95"] == 0.99 and new_run["run_id"] in records
    assert index_store.compact(cat, grace_s=index_store.PENDING_GRACE_S) == 6
    assert len(index_lines(client, cat)) == 6
    assert len(pending_keys(client, cat)) == 2  # younger than the grace period: kept, harmlessly
    assert index_store.compact(cat, grace_s=0) == 6 and pending_keys(client, cat) == []


def test_another_users_update_never_replaces_a_run(cat, client):
    # Two users picked the same --run-id: the run stays the first user's, in readers and in
    # the compacted index.
    rng = random.Random(5)
    mine = {**make_line(1, rng), "user": "alice", "map50_95": 0.5}
    write_index(client, cat, [mine])
    squat = {**mine, "user": "bob", "map50_95": 0.99, "archive_url": "s3://elsewhere/"}
    update = {**mine, "map50_95": 0.6}
    for line in (squat, update):
        client.put_object(Bucket=cat.bucket, Key=index_store.pending_key(cat, line["run_id"]), Body=json.dumps(line))
    assert [(x["user"], x["map50_95"]) for x in index.load_records(cat)] == [("alice", 0.6)]
    assert index_store.compact(cat) == 1
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

    sleeps = []
    with pytest.raises(StoreError, match="index compact"):
        index_store.update_index(cat, index_store.merge, client=AlwaysConflict(), sleep=sleeps.append)
    assert len(sleeps) == index_store.MAX_ATTEMPTS and max(sleeps) <= 2.0


def test_rebuild_from_run_json_files(cat, client, bucket):
    recs = [run_json(f"20261101_00000{i}_abcdef", bucket, lr0=0.01 * (i + 1), map50_95=0.1 * i) for i in range(3)]
    for r in recs:
        archive_run(client, bucket, r, {"results.csv": b"epoch\n"}, cat.index_url)
    client.put_object(Bucket=bucket, Key="runs/detect/pcb/yolov8n/junk/run.json", Body=b"{not json")
    client.put_object(Bucket=bucket, Key="runs/detect/pcb/yolov8n/evil/run.json", Body=b'{"run_id": "../../INDEX"}')
    write_index(client, cat, [make_line(1, random.Random(5))])  # a stale line whose run.json is gone
    client.delete_object(Bucket=bucket, Key=cat.key(layout.index_key(recs[0]["run_id"])))

    with pytest.raises(ConfigError, match="rebuild would drop 1 of the 1 runs"):
        index.rebuild(cat)
    assert index.rebuild(cat, force=True) == 3
    assert index_lines(client, cat) == [layout.index_record(r) for r in recs]
    got = client.get_object(Bucket=bucket, Key=cat.key(layout.index_key(recs[0]["run_id"])))["Body"].read()
    assert json.loads(got) == layout.index_record(recs[0])


def test_rebuild_of_an_empty_root_gives_an_empty_index(cat, client):
    assert index.rebuild(cat, [f"s3://{cat.bucket}/nothing-here/"]) == 0
    assert index_lines(client, cat) == []


def test_rebuild_from_a_wrong_root_refuses_to_empty_the_catalog(cat, client):
    lines = [make_line(i, random.Random(8)) for i in range(3)]
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
    client.put_object(Bucket=bucket, Key=index_store.pending_key(cli_env, "x1"), Body=json.dumps({"run_id": "x1"}))
    assert main(["index", "compact"]) == 0
    assert "2 runs" in capsys.readouterr().out
    assert [x["run_id"] for x in index_lines(client, cli_env)] == ["20261101_000000_cliabc", "x1"]


def test_deadline_leaves_the_update_pending_and_visible(cat, client):
    import time

    line = make_line(3, random.Random(9))
    with pytest.raises(StoreError, match="pending and visible"):
        index_store.add_to_index(cat.store, cat.index_url, line, deadline=time.monotonic() - 1)
    assert [x["run_id"] for x in index.load_records(cat)] == [line["run_id"]]
    assert len(pending_keys(client, cat)) == 1


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
