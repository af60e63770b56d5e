"""The index's pure rules: whom a pending key speaks for, what compaction refuses, and when the
compaction lease has expired by the store's clock. No server: table tests."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from slurm_yolo.archive import index_lease, index_store

PREFIX = "s3://b/runs/{user}/"
P = "index/pending/"
ANA = {"run_id": "R1", "user": "ana", "archive_url": "s3://b/runs/ana/detect/p/m/R1/"}


@pytest.mark.parametrize("key, rec, expect", [
    (P + "R1/ana/20261203T000000.000000Z-ab.json", ANA, None),
    (P + "R1/20261203T000000.000000Z-ab.json", ANA, None),  # an older epilog's key: no user part
    (P + "R1/bo/20261203T000000.000000Z-ab.json", ANA, "written under bo's part of pending/ but names user ana"),
    (P + "R2/ana/f.json", ANA, "lies under pending/R2/ but is for run R1"),
    (P + "R1/ana/x/f.json", ANA, "not pending/<run_id>/<user>/<file>"),  # bo cannot hide ana inside a deeper key
    (P + "R1//f.json", ANA, "not pending/<run_id>/<user>/<file>"),
    (P + "R1/ana/f.json", {**ANA, "archive_url": "s3://b/runs/bo/R1/"}, "outside ana's prefix s3://b/runs/ana/"),
    (P + "R1/ana/f.json", {**ANA, "archive_url": "s3://b/runs/ana/../bo/R1/"}, "outside ana's prefix"),
    (P + "R1/ana/f.json", {**ANA, "archive_url": "s3://b/runs/anabel/R1/"}, "outside ana's prefix"),
    (P + "R1/f.json", {**ANA, "user": None}, "names no valid user"),
    (P + "R1/f.json", {"run_id": "R1"}, None),  # nothing to check it against, nothing claimed
])
def test_refusal(key, rec, expect):
    got = index_store.refusal(key, rec, PREFIX, P)
    assert (got is None) if expect is None else (got is not None and expect in got), got


def test_without_a_site_config_the_archive_url_is_not_judged():
    assert index_store.refusal(P + "R1/ana/f.json", {**ANA, "archive_url": "s3://elsewhere/x/"}, None, P) is None


def test_readers_skip_an_update_that_names_someone_other_than_its_writer():
    body = b'{"run_id": "R1", "user": "ana"}'
    keys = [P + "R1/ana/a.json", P + "R1/bo/b.json", P + "R1/c.json"]
    assert [k for k, _ in index_store.parse_pending(keys, [(body, "")] * 3)] == [keys[0], keys[2]]
    assert len(index_store.parse_pending(keys, [(body, "")] * 3, writers_checked=False)) == 3


def test_pending_keys_carry_a_valid_user_only():
    from slurm_yolo.archive.index_location import IndexLocation
    from slurm_yolo.store import Store

    cat = IndexLocation.at(Store(), "s3://b/index")
    assert index_store.key_user(index_store.pending_key(cat, "R1", user="ana"), cat.key("pending/")) == "ana"
    assert index_store.key_user(index_store.pending_key(cat, "R1", user="../x"), cat.key("pending/")) is None
    assert index_store.key_user(index_store.pending_key(cat, "R1"), cat.key("pending/")) is None


T = datetime(2026, 12, 3, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("date, ttl, left", [
    ("Thu, 03 Dec 2026 12:00:30 GMT", 120, 90),   # the store's clock: 30 s after the write
    ("Thu, 03 Dec 2026 12:02:00 GMT", 120, 0),    # expired exactly
    ("Thu, 03 Dec 2026 12:05:00 GMT", 120, -180),
])
def test_lease_time_left_is_judged_by_the_stores_clock(date, ttl, left):
    assert index_lease.left_s(T, ttl, date, now=datetime(2030, 1, 1, tzinfo=timezone.utc)) == left  # local clock ignored


def test_without_a_date_header_the_local_clock_counts_with_the_skew_allowed():
    assert index_lease.left_s(T, 120, None, now=T) == 120 + index_lease.MAX_SKEW_S
    assert index_lease.left_s(T, 120, "garbage", now=T.replace(minute=3)) == 120 + index_lease.MAX_SKEW_S - 180


@pytest.mark.parametrize("body, expect", [
    (index_lease.body("n1:2:ab", 120), ("n1:2:ab", 120.0, False)),
    (index_lease.body("n1:2:ab", 120, released=True), ("n1:2:ab", 120.0, True)),
    (b"not json", ("", 0.0, True)),  # a broken lease is a free one
    (b'{"holder": "x"}', ("", 0.0, True)),
])
def test_lease_body(body, expect):
    assert index_lease.parse(body) == expect
