"""The job's in-training sync sends nothing twice: on both real S3 servers, with the real s5cmd,
through the monitor's own round (:meth:`slurm_yolo.job.monitor.RunMonitor.send`).

It uses the epilog's rule (:mod:`slurm_yolo.archive.remote`): a file goes up unless the store
holds an object of its size with the ETag this upload gives it. What was sent is read from the
store itself (each object's LastModified, rounds a second apart) and from the bytes the round
says it sent; what the store holds is read back and compared with the folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

from slurm_yolo.archive import s5cmd
from slurm_yolo.job.monitor import RunMonitor
from slurm_yolo.store import split_url

RUN_ID = "20261203_180000_syncone1"
# Over one part: a multipart upload, whose ETag is the md5 of the parts' md5s and "-2".
MULTIPART = s5cmd.PART_SIZE + 4096


def make_run(root: Path) -> Path:
    run = root / RUN_ID
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "last.pt").write_bytes(os.urandom(MULTIPART))
    (run / "weights" / "best.pt").write_bytes(os.urandom(6 << 20))
    (run / "weights" / "last.good.pt").write_bytes(os.urandom(1000))  # the monitor's spare: never synced
    (run / "results.csv").write_text("epoch,time\n1,2.0\n")
    (run / "results.png").write_bytes(os.urandom(50_000))
    (run / "train_batch[0]*.jpg").write_bytes(os.urandom(30_000))  # glob characters in a name
    (run / ".run.lock").write_bytes(b"")
    (run / "weights" / ".x.tmp").write_bytes(b"half")
    return run


def stored(s3_client, url: str) -> dict[str, tuple[float, int, str]]:
    """Archive path → (LastModified, size, sha256 of the bytes read back)."""
    bucket, prefix = split_url(url)
    out = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            body = s3_client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            out[o["Key"][len(prefix):]] = (o["LastModified"].timestamp(), o["Size"], hashlib.sha256(body).hexdigest())
    return out


def local(run: Path, rels) -> dict[str, str]:
    return {rel: hashlib.sha256((run / rel).read_bytes()).hexdigest() for rel in rels}


def changed(before: dict, after: dict) -> set[str]:
    return {rel for rel, v in after.items() if rel not in before or before[rel][0] != v[0]}


def test_a_sync_sends_what_changed_and_nothing_else(store, s3_client, bucket, tmp_path):
    run = make_run(tmp_path)
    url = f"s3://{bucket}/runs/u/{RUN_ID}/"
    monitor = RunMonitor(run, url, store, every_s=None, every_epochs=None)
    synced = {"weights/last.pt", "weights/best.pt", "results.csv", "results.png", "train_batch[0]*.jpg"}

    first = monitor.send(time.monotonic() + 120)
    assert first.ok and first.sent_files == len(synced) and first.unchanged == 0
    assert first.sent_bytes == sum((run / rel).stat().st_size for rel in synced)
    held = stored(s3_client, url)
    assert set(held) == synced  # no lock, temp file or spare checkpoint
    assert {rel: v[2] for rel, v in held.items()} == local(run, synced)

    time.sleep(1.1)  # LastModified has whole seconds
    again = monitor.send(time.monotonic() + 120)
    assert again.ok and again.sent_files == 0 and again.sent_bytes == 0 and again.unchanged == len(synced)
    assert changed(held, stored(s3_client, url)) == set()

    # Same size, other bytes (the multipart one and a small one); a grown file; a new file.
    (run / "weights" / "last.pt").write_bytes(os.urandom(MULTIPART))
    (run / "results.png").write_bytes(os.urandom(50_000))
    with open(run / "results.csv", "a") as f:
        f.write("2,4.0\n")
    (run / "val_batch0.jpg").write_bytes(os.urandom(20_000))
    time.sleep(1.1)
    third = monitor.send(time.monotonic() + 120)
    now = stored(s3_client, url)
    sent = {"weights/last.pt", "results.png", "results.csv", "val_batch0.jpg"}
    assert third.ok and third.sent_files == len(sent) and changed(held, now) == sent
    assert third.sent_bytes == sum((run / rel).stat().st_size for rel in sent)
    assert {rel: v[2] for rel, v in now.items()} == local(run, synced | sent)


def test_an_object_replaced_behind_the_sync_is_sent_again(store, s3_client, bucket, tmp_path):
    run = make_run(tmp_path)
    url = f"s3://{bucket}/runs/u/{RUN_ID}/"
    monitor = RunMonitor(run, url, store, every_s=None, every_epochs=None)
    assert monitor.send(time.monotonic() + 120).ok
    b, prefix = split_url(url)
    # Another writer puts other bytes of the same size at best.pt's key; the local file and its
    # cached ETag are unchanged, so only the store's ETag can tell.
    s3_client.put_object(Bucket=b, Key=prefix + "weights/best.pt", Body=os.urandom(6 << 20))
    before = stored(s3_client, url)
    time.sleep(1.1)
    round_ = monitor.send(time.monotonic() + 120)
    after = stored(s3_client, url)
    assert round_.ok and round_.sent_files == 1 and changed(before, after) == {"weights/best.pt"}
    assert after["weights/best.pt"][2] == local(run, ["weights/best.pt"])["weights/best.pt"]


def test_a_store_that_is_down_fails_the_round_and_the_next_catches_up(store, s3_client, bucket, tmp_path, capfd):
    run = make_run(tmp_path)
    url = f"s3://{bucket}/runs/u/{RUN_ID}/"
    down = RunMonitor(run, url, dataclasses.replace(store, endpoint_url="http://127.0.0.1:9"),
                      every_s=None, every_epochs=None)
    assert down.sync(1) is False and down.failures == 1 and down.sent_bytes == 0  # logged, not raised
    assert "will retry" in capfd.readouterr().err
    up = RunMonitor(run, url, store, every_s=None, every_epochs=None)
    assert up.sync(1) is True and up.failures == 0
    assert up.sent_bytes == sum(v[1] for v in stored(s3_client, url).values())
