"""Spool shipping against the real S3 server: idempotent, resumable, safe to run twice at once."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

from slurm_yolo.archive.store import Store
from slurm_yolo.epilog import spool
from slurm_yolo.epilog.site import SiteConfig


def site_for(store: Store, bucket: str, tmp_path: Path) -> SiteConfig:
    return SiteConfig(path="(test)", store=store, allowed_prefix=f"s3://{bucket}/runs/{{user}}/",
                      index_url=f"s3://{bucket}/index/", spool_dir=str(tmp_path / "spool"), s5cmd_workers=8)


def stage(site: SiteConfig, run_id: str, files: dict[str, bytes], attempt: int = 1) -> Path:
    entry = Path(site.spool_dir) / spool.entry_name(run_id, attempt)
    for rel, data in files.items():
        (entry / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
        (entry / "files" / rel).write_bytes(data)
    manifest = {"files": {rel: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for rel, d in files.items()}}
    dest = f"{site.allowed_prefix.replace('{user}', 'u')}detect/p/m/{run_id}/"
    record = {"run_id": run_id, "end_state": "COMPLETED", "archive_url": dest}
    spool.write_entry(entry, {"run_id": run_id, "attempt": attempt, "dest": dest},
                      record, manifest, {"run_id": run_id, "archive_url": dest, "end_state": "COMPLETED"})
    return entry


def keys(client, bucket, prefix=""):
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_ship_uploads_files_then_commit_marker_then_index(store, bucket, tmp_path):
    site = site_for(store, bucket, tmp_path)
    entry = stage(site, "r1", {"weights/best.pt": b"w" * 5000, "results.csv": b"epoch\n1\n"})
    result = spool.ship(entry, site, deadline=time.monotonic() + 60)
    assert result.ok, result.detail
    assert not entry.exists()
    c = store.boto3_client()
    run = "runs/u/detect/p/m/r1/"
    assert keys(c, bucket, run) == [run + k for k in ("MANIFEST.json", "attempts/attempt-1.json", "results.csv",
                                                     "run.json", "weights/best.pt")]
    assert json.loads(c.get_object(Bucket=bucket, Key="index/runs/r1.json")["Body"].read())["run_id"] == "r1"
    index = c.get_object(Bucket=bucket, Key="index/INDEX.jsonl")["Body"].read().decode()
    assert [json.loads(x)["run_id"] for x in index.splitlines()] == ["r1"]


def test_unreachable_store_keeps_entry_with_error(tmp_path):
    site = site_for(Store(endpoint_url="http://127.0.0.1:9", keys=(("AWS_ACCESS_KEY_ID", "k"),
                                                                    ("AWS_SECRET_ACCESS_KEY", "s"))), "b1x", tmp_path)
    entry = stage(site, "r2", {"a.txt": b"a"})
    result = spool.ship(entry, site, deadline=time.monotonic() + 30)
    assert not result.ok and "unreachable" in result.detail
    info = json.loads((entry / spool.ENTRY_JSON).read_text())
    assert info["attempts"] == 1 and "unreachable" in info["last_error"]


def test_two_drains_at_once_ship_each_run_once(store, bucket, tmp_path):
    site = site_for(store, bucket, tmp_path)
    for i in range(6):
        stage(site, f"run{i}", {f"f{j}.bin": bytes([i]) * 20000 for j in range(5)})
    results: list = []
    threads = [threading.Thread(target=lambda: results.extend(spool.drain(site, lock_timeout=0.0))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shipped = [r.entry for r in results if r.ok]
    assert sorted(shipped) == [f"run{i}.a1" for i in range(6)]  # each once, none failed
    assert not [r for r in results if not r.ok]
    assert list(spool.iter_entries(site.spool_dir)) == []
    assert len(keys(store.boto3_client(), bucket, "runs/")) == 6 * (5 + 3)
    assert spool.drain(site) == []  # idempotent: nothing left to do


def test_newer_attempt_supersedes_older_entry(store, bucket, tmp_path):
    site = site_for(store, bucket, tmp_path)
    stage(site, "r3", {"a": b"1"}, attempt=1)
    stage(site, "r3", {"a": b"2"}, attempt=2)
    assert spool.supersede_older(site.spool_dir, "r3", 2) == ["r3.a1"]
    assert [p.name for p in spool.iter_entries(site.spool_dir)] == ["r3.a2"]
