"""The compaction lease and the ownership checks of compaction, against real loopback S3 servers.

Many drains at once (SeaweedFS: its conditional writes are atomic, as AWS's): one compacts,
the others skip at one or two small requests, and the index ends with every run once. A
holder that dies mid-round loses nothing; its lease expires by the store's clock. A pending
update may speak only for the user whose part of ``pending/`` holds it, for runs that are
not someone else's, and for archives under that user's prefix.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from slurm_yolo.archive import index_compact, index_format, index_lease, index_store
from slurm_yolo.archive.index_location import IndexLocation
from slurm_yolo.catalog import scan
from tests.helpers.catalog_seed import make_record
from tests.helpers.s3_requests import RequestLog

DRAINS = 50  # 200 in benchmarks/bench_index.py; 50 threads keep this test short on 2 cores
PENDING = 300


KINDS = ("lease/", "pending/", "parquet/", "refused/")


def seed(cat, client, n: int, rng: random.Random) -> list[dict]:
    records = [{**make_record(i, rng), "user": "ana"} for i in range(n)]
    for rec in records:
        rec["archive_url"] = f"s3://{cat.bucket}/runs/ana/{rec['task']}/{rec['run_id']}/"
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda r: index_store.add_to_index(cat.store, cat.index_url, r, client=client), records))
    return records


def quarter_ids(cat, client) -> list[str]:
    ids = []
    for quarter in index_compact.quarters(cat, client):
        ids += index_compact.read_quarter(cat, client, quarter)[0]["run_id"].to_pylist()
    return ids


def pending_keys(cat, client) -> list[str]:
    return [o["Key"] for o in index_store.list_keys(client, cat.bucket, cat.key(index_store.PENDING))]


@pytest.fixture
def weed_cat(seaweedfs_server):
    client = seaweedfs_server.store().boto3_client()
    name = f"t-{random.getrandbits(48):012x}"
    client.create_bucket(Bucket=name)
    return IndexLocation.at(seaweedfs_server.store(), f"s3://{name}/index/", f"s3://{name}/runs/{{user}}/"), client


def test_fifty_drains_at_once_do_the_work_of_one_compaction(weed_cat):
    cat, client = weed_cat
    records = seed(cat, client, PENDING, random.Random(3))
    # What one compaction alone costs, on a copy of the same pending updates in another index.
    solo_cat = IndexLocation.at(cat.store, f"s3://{cat.bucket}/solo/", cat.allowed_prefix)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda r: index_store.add_to_index(cat.store, solo_cat.index_url, r, client=client), records))
    solo = RequestLog(cat.store.boto3_client())
    assert index_compact.compact(solo_cat, client=solo).updates == PENDING
    solo_calls = solo.by_kind(KINDS)

    drains = [RequestLog(cat.store.boto3_client()) for _ in range(DRAINS)]
    start = threading.Barrier(DRAINS)

    def drain(counted):
        start.wait()
        return index_compact.compact(cat, client=counted)

    with ThreadPoolExecutor(DRAINS) as pool:
        results = list(pool.map(drain, drains))

    workers = [(r, d) for r, d in zip(results, drains) if not r.skipped]
    skippers = [d for r, d in zip(results, drains) if r.skipped]
    # Exactly one drain read and folded the pending updates; any other that got the lease
    # after it was released found nothing left to do.
    assert [r.updates for r, _ in workers if r.updates] == [PENDING] and len(skippers) >= DRAINS - 3
    assert all(r.lease in ("held", "free") for r, _ in workers)  # free: came after the round, nothing pending
    # Together they read each pending update once and each quarter once, as one compaction does.
    total = sum((d.by_kind(KINDS) for d in drains), Counter())
    assert total[("GET", "pending/")] == solo_calls[("GET", "pending/")] == PENDING
    assert total[("GET", "parquet/")] == solo_calls[("GET", "parquet/")]
    assert total[("PUT", "parquet/")] == solo_calls[("PUT", "parquet/")]
    # A skipping drain costs one GET of the lease; one that found it free also listed pending/
    # (one key) and lost the race for it (a conditional PUT).
    for d in skippers:
        assert set(d.by_kind(KINDS)) <= {("GET", "lease/"), ("GET", "other"), ("PUT", "lease/")}, d.requests
        assert d.total <= 3, d.requests
        assert d.bytes < 2_000
    extra = sum(d.bytes for d in skippers)
    assert extra < 0.05 * solo.bytes + 2_000 * len(skippers)
    # Nothing lost, nothing twice, nothing left pending.
    ids = quarter_ids(cat, client)
    assert sorted(ids) == sorted(r["run_id"] for r in records) and len(ids) == len(set(ids))
    assert pending_keys(cat, client) == []


def test_a_holder_that_dies_mid_round_loses_nothing_and_its_lease_expires(weed_cat):
    cat, client = weed_cat
    records = seed(cat, client, 40, random.Random(5))
    dead = index_lease.acquire(cat, client, holder="node7:123:dead", ttl_s=3)
    assert isinstance(dead, index_lease.Lease)
    # It folded part of the updates into their quarter, then died before deleting any.
    index_compact.fold(cat, client, [rec for _, rec in index_store.read_pending(cat, client)][:15])

    counted = RequestLog(cat.store.boto3_client())
    skipped = index_compact.compact(cat, client=counted)
    assert "node7:123:dead" in skipped.skipped and skipped.updates == 0
    assert dict(counted.by_kind(KINDS)) == {("GET", "lease/"): 1}  # a skipping drain: one request
    assert len(pending_keys(cat, client)) == 40  # nothing lost meanwhile: still visible to readers
    assert {r["run_id"] for r in scan.load_records(cat)} == {r["run_id"] for r in records}

    time.sleep(4.5)  # past its ttl by the store's clock (LastModified and Date: 1 s resolution)
    done = index_compact.compact(cat)
    assert done.lease == "held" and done.updates == 40 and done.left == 0
    ids = quarter_ids(cat, client)
    assert sorted(ids) == sorted(r["run_id"] for r in records) and len(ids) == len(set(ids))
    # The dead holder, back from the dead, can neither renew nor release the lease it lost.
    late = index_lease.acquire(cat, client, holder="node8:1:live")
    assert isinstance(late, index_lease.Lease)  # released by the round above: free again
    assert index_lease.renew(cat, client, dead) is None and not index_lease.release(cat, client, dead)
    assert isinstance(index_lease.acquire(cat, client), index_lease.Busy)  # still node8's


def test_a_store_that_refuses_the_lease_still_gets_compacted(weed_cat):
    """Where the lease cannot be written (a store without conditional writes, a user without
    the right to write ``lease/``), compaction runs without it and says so: it is only a saving."""
    cat, client = weed_cat
    seed(cat, client, 5, random.Random(6))

    class NoConditionalPuts:
        def __init__(self, real):
            self.real = real

        def put_object(self, **kw):
            if kw["Key"].endswith(index_lease.LEASE_KEY):
                raise client.exceptions.ClientError({"Error": {"Code": "NotImplemented"}}, "PutObject")
            return self.real.put_object(**kw)

        def __getattr__(self, name):
            return getattr(self.real, name)

    result = index_compact.compact(cat, client=NoConditionalPuts(cat.store.boto3_client()))
    assert result.updates == 5 and result.left == 0 and "NotImplemented" in result.lease
    assert "without the lease" in result.summary()


def put_pending(client, cat, run_id: str, writer: str | None, rec: dict) -> str:
    key = index_store.pending_key(cat, run_id, user=writer)
    client.put_object(Bucket=cat.bucket, Key=key, Body=json.dumps({**rec, "indexed_at": index_store.stamp()}))
    return key


def test_compaction_refuses_updates_that_speak_for_someone_else(store, bucket, s3_client, monkeypatch, tmp_path, capsys):
    """Ana's run is in the index. Bo's update claims its run ID; an update in bo's part of
    ``pending/`` names ana; ana's update points at an archive in bo's prefix; another ana update
    has a run ID in its key that is not its own. All four are refused, reported and moved to
    ``refused/``; ana's own new run is folded in; the index still shows ana's run as she wrote it."""
    client = s3_client
    prefix = f"s3://{bucket}/runs/{{user}}/"
    cat = IndexLocation.at(store, f"s3://{bucket}/index/", prefix)
    rng = random.Random(8)
    ana = {**make_record(1, rng), "user": "ana", "map50": 0.5}
    ana["archive_url"] = f"s3://{bucket}/runs/ana/{ana['run_id']}/"
    index_store.add_to_index(store, cat.index_url, ana, client=client)
    assert index_compact.compact(cat, client=client, grace_s=0).runs_changed == 1  # moto: no grace needed here

    mine = {**make_record(2, rng), "user": "ana"}
    mine["archive_url"] = f"s3://{bucket}/runs/ana/{mine['run_id']}/"
    put_pending(client, cat, mine["run_id"], "ana", mine)
    squat = {**ana, "user": "bo", "map50": 0.99, "archive_url": f"s3://{bucket}/runs/bo/{ana['run_id']}/"}
    put_pending(client, cat, ana["run_id"], "bo", squat)
    forged = {**ana, "map50": 0.01}  # names ana, written where only bo may write
    put_pending(client, cat, ana["run_id"], "bo", forged)
    outside = {**make_record(3, rng), "user": "ana", "archive_url": f"s3://{bucket}/runs/bo/stolen/"}
    put_pending(client, cat, outside["run_id"], "ana", outside)
    elsewhere = {**make_record(4, rng), "user": "ana"}
    elsewhere["archive_url"] = f"s3://{bucket}/runs/ana/{elsewhere['run_id']}/"
    put_pending(client, cat, ana["run_id"], "ana", elsewhere)

    # Readers already ignore the update that names someone other than its writer.
    seen = {r["run_id"]: r for r in scan.load_records(cat)}
    assert seen[ana["run_id"]]["map50"] == 0.5

    result = index_compact.compact(cat, client=client, grace_s=0)
    assert result.updates == 5 and result.runs_changed == 1 and result.left == 0
    reasons = "\n".join(result.refused)
    assert len(result.refused) == 4, reasons
    assert f"run ID {ana['run_id']} belongs to ana in the index, not to bo" in reasons
    assert "written under bo's part of pending/ but names user ana" in reasons
    assert f"outside ana's prefix s3://{bucket}/runs/ana/" in reasons
    assert f"is for run {elsewhere['run_id']}" in reasons
    assert "REFUSED 4" in result.summary()
    rows = {r["run_id"]: r for r in index_format.from_table(index_compact.read_quarter(
        cat, client, index_format.quarter_of(ana))[0])}
    assert rows[ana["run_id"]]["map50"] == 0.5 and rows[ana["run_id"]]["user"] == "ana"
    assert mine["run_id"] in rows and outside["run_id"] not in rows and elsewhere["run_id"] not in rows
    assert pending_keys(cat, client) == []
    kept = index_store.list_keys(client, bucket, cat.key(index_compact.REFUSED))
    assert len(kept) == 4

    # The same through `slurm-yolo index compact`, which takes allowed_prefix from the site config.
    put_pending(client, cat, outside["run_id"], "ana", outside)
    site = tmp_path / "site.yaml"
    site.write_text(f"index_url: {cat.index_url}\nallowed_prefix: '{prefix}'\n")
    monkeypatch.setenv("SLURM_YOLO_SITE_CONFIG", str(site))
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.endpoint_url)
    for k, v in store.keys:
        monkeypatch.setenv(k, v)
    for k in ("SLURM_YOLO_INDEX", "S3_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    from slurm_yolo.cli import main

    assert main(["index", "compact"]) == 0
    out = capsys.readouterr().out
    assert "REFUSED 1" in out and "lies outside ana's prefix" in out
