"""Upload nothing twice: the epilog does not send again a file the store already holds under its
key, and sends everything else, on both real S3 servers with the real s5cmd.

"Already holds" is decided by the store's own ETag (computed by the server from the bytes it
received) against the ETag the epilog computes from the descriptor it hashes for the manifest:
nothing the user's process wrote is believed. What was sent is read from the store itself
(each object's LastModified, a second apart), and every archive is read back and checked
against its manifest, as ``runs fetch`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from slurm_yolo import runfolder
from slurm_yolo.archive import manifest, remote, s5cmd
from slurm_yolo.epilog import archiver
from slurm_yolo.names import MARKER_PREFIX
from slurm_yolo.site import SiteConfig
from slurm_yolo.store import split_url

RUN_ID = "20261203_170000_noreupl1"
# Over one part: the synced last.pt is a multipart upload, its ETag md5-of-md5s "-2".
MULTIPART = s5cmd.PART_SIZE + 4096


def site_for(store, bucket: str, tmp_path: Path) -> SiteConfig:
    return SiteConfig(path="(test)", store=store, allowed_prefix=f"s3://{bucket}/runs/{{user}}/",
                      index_url=f"s3://{bucket}/index/", spool_dir=str(tmp_path / "spool"),
                      log_file=str(tmp_path / "epilog.log"), s5cmd_workers=8, scontrol=False,
                      claim_dir=str(tmp_path / "claims"))


def make_run(root: Path) -> Path:
    """A run folder with large files (straight from the folder) and small ones (from the spool)."""
    run = root / RUN_ID
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "last.pt").write_bytes(os.urandom(MULTIPART))
    (run / "weights" / "best.pt").write_bytes(os.urandom(6 << 20))
    (run / "weights" / "epoch1.pt").write_bytes(os.urandom(5 << 20))
    (run / "results.csv").write_text("epoch,time,metrics/mAP50(B),metrics/mAP50-95(B)\n1,2.0,0.5,0.25\n")
    (run / "results.png").write_bytes(os.urandom(50_000))
    (run / "labels.jpg").write_bytes(os.urandom(40_000))
    (run / "train_batch[0]*.jpg").write_bytes(os.urandom(30_000))  # glob characters in a name
    record = {"run_id": RUN_ID, "task": "detect", "project": "p", "model_name": "yolov8n", "status": "running",
              "attempts": [{"attempt": 1, "slurm_job_id": "91", "status": "running"}]}
    (run / runfolder.RUN_JSON).write_text(json.dumps(record))
    return run


def env_for(run: Path, restarts: int = 0) -> dict[str, str]:
    return {"SLURM_JOB_ID": "91", "SLURM_JOB_UID": str(os.getuid()), "SLURM_JOB_GID": str(os.getgid()),
            "SLURM_JOB_COMMENT": MARKER_PREFIX + str(run), "SLURM_JOB_EXIT_CODE2": "0:0",
            "SLURM_JOB_RESTART_COUNT": str(restarts), "SLURMD_NODENAME": "n1"}


def archive(run: Path, site: SiteConfig, restarts: int = 0) -> archiver.ArchiveResult:
    result = archiver.archive_job(env_for(run, restarts), site, deadline=time.monotonic() + 120, by="epilog_slurmd@n1")
    assert result.shipped, result
    return result


def sync(store, run: Path, dest: str, part_mib: int = s5cmd.PART_SIZE_MIB) -> None:
    """What an in-training sync leaves in the store: the folder as it is now, run.json aside."""
    argv = s5cmd.base_argv(store, workers=8) + ["cp", "--part-size", str(part_mib), "--exclude", "run.json",
                                                 f"{run}/*", dest]
    result = s5cmd.run(argv, store)
    assert result.ok, result.summary()


def modified(client, url: str) -> dict[str, object]:
    """Archive path → LastModified of every object under ``url``."""
    bucket, prefix = split_url(url)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):]: o["LastModified"] for p in pages for o in p.get("Contents", [])}


def verify(store, url: str, tmp_path: Path) -> dict:
    """Download the archive as ``runs fetch`` does and check every file against its manifest."""
    dest = tmp_path / f"fetched-{time.monotonic_ns()}"
    result = s5cmd.run(s5cmd.base_argv(store) + ["cp", url + "*", f"{dest}/"], store)
    assert result.ok, result.summary()
    stored = json.loads((dest / manifest.MANIFEST).read_text())
    assert manifest.verify_tree(dest, stored) == []
    return stored


def flip_same_size(path: Path) -> None:
    """Other bytes, same size (and a time in the past, as a sync-time guess would allow)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def sent(before: dict, after: dict) -> set[str]:
    """The objects written again between two listings (a newer LastModified, or new)."""
    return {rel for rel, t in after.items() if rel not in before or t > before[rel]}


def test_a_synced_run_sends_only_what_changed(store, bucket, s3_client, tmp_path):
    run = make_run(tmp_path)
    site = site_for(store, bucket, tmp_path)
    dest = archiver.destination(json.loads((run / "run.json").read_text()), site,
                                archiver.Job(env_for(run), "t").user()[0])[0]
    sync(store, run, dest)
    # Changes after the last sync: a grown file, same-size other bytes in a large and a small
    # file, and an object replaced behind the epilog's back (other bytes at its key, same size).
    with (run / "results.csv").open("a") as f:
        f.write("2,4.0,0.6,0.3\n")
    flip_same_size(run / "weights" / "last.pt")
    flip_same_size(run / "labels.jpg")
    bkt, prefix = split_url(dest)
    s3_client.put_object(Bucket=bkt, Key=prefix + "weights/best.pt", Body=os.urandom(6 << 20))
    s3_client.put_object(Bucket=bkt, Key=prefix + "results.png", Body=os.urandom(50_000))
    before = modified(s3_client, dest)
    time.sleep(1.1)  # LastModified has one-second resolution

    result = archive(run, site)

    changed = {"results.csv", "weights/last.pt", "labels.jpg", "weights/best.pt", "results.png"}
    records = {"run.json", manifest.MANIFEST, "attempts/attempt-1.json"}
    assert sent(before, modified(s3_client, dest)) == changed | records
    assert "2 files already in the store, not sent again" in result.detail  # epoch1.pt, train_batch[0]*.jpg
    sizes = {rel: (run / rel).stat().st_size for rel in changed}
    assert sum(sizes.values()) <= result.bytes < sum(sizes.values()) + 100_000  # + the records
    stored = verify(store, dest, tmp_path)
    for rel in changed | {"weights/epoch1.pt", "train_batch[0]*.jpg"}:
        assert stored["files"][rel]["sha256"] == hashlib.sha256((run / rel).read_bytes()).hexdigest(), rel


def test_a_requeue_resends_only_what_changed(store, bucket, s3_client, tmp_path):
    run = make_run(tmp_path)
    site = site_for(store, bucket, tmp_path)
    first = archive(run, site)
    assert "not sent again" not in first.detail
    assert first.bytes >= sum(p.stat().st_size for p in run.rglob("*") if p.is_file() and p.name != "run.json")
    # The requeued attempt trains on: last.pt rewritten (same size), a new checkpoint, results grow.
    record = json.loads((run / "run.json").read_text())
    record["attempts"].append({"attempt": 2, "slurm_job_id": "91", "status": "running"})
    (run / "run.json").write_text(json.dumps(record))
    flip_same_size(run / "weights" / "last.pt")
    (run / "weights" / "epoch2.pt").write_bytes(os.urandom(5 << 20))
    with (run / "results.csv").open("a") as f:
        f.write("2,4.0,0.6,0.3\n")
    before = modified(s3_client, first.dest)
    time.sleep(1.1)

    second = archive(run, site, restarts=1)

    assert second.dest == first.dest
    assert sent(before, modified(s3_client, first.dest)) == {
        "weights/last.pt", "weights/epoch2.pt", "results.csv", "run.json", manifest.MANIFEST,
        "attempts/attempt-2.json"}
    assert second.bytes < MULTIPART + (5 << 20) + 100_000
    stored = verify(store, first.dest, tmp_path)
    assert stored["attempt"] == 2 and "weights/epoch2.pt" in stored["files"]


def test_another_part_size_is_not_taken_for_the_same_file(store, bucket, s3_client, tmp_path):
    """A sync that uploaded with another part size left other ETags: the files are sent again
    (a wasted upload, never a wrong skip)."""
    run = make_run(tmp_path)
    site = site_for(store, bucket, tmp_path)
    dest = archiver.destination(json.loads((run / "run.json").read_text()), site,
                                archiver.Job(env_for(run), "t").user()[0])[0]
    sync(store, run, dest, part_mib=5)
    held = remote.listing(store, dest)
    assert held["weights/best.pt"].etag.endswith("-2")  # 6 MiB in 5 MiB parts
    before = modified(s3_client, dest)
    time.sleep(1.1)

    result = archive(run, site)

    again = sent(before, modified(s3_client, dest))
    assert {"weights/best.pt", "weights/last.pt"} <= again  # multipart at 5 MiB, one PUT or other parts at 50
    # Single PUTs at either part size (epoch1.pt is exactly one 5 MiB part): the same ETag.
    assert {"weights/epoch1.pt", "results.csv", "labels.jpg"}.isdisjoint(again)
    verify(store, result.dest, tmp_path)


@pytest.mark.parametrize("size", [0, 1, s5cmd.PART_SIZE, MULTIPART, 2 * s5cmd.PART_SIZE])
def test_local_etag_is_the_stores(store, bucket, tmp_path, size):
    """The ETag hash_fd predicts is the one the store gives s5cmd's upload of the file, at the
    part-size boundaries (one part exactly; one byte more; two whole parts)."""
    path = tmp_path / "f.bin"
    with path.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
        f.write(os.urandom(size % (1 << 20)))
    fd = os.open(path, os.O_RDONLY)
    try:
        local = manifest.hash_fd(fd, part_size=s5cmd.PART_SIZE)
    finally:
        os.close(fd)
    url = f"s3://{bucket}/etag/"
    assert s5cmd.run(s5cmd.base_argv(store) + ["cp", *s5cmd.cp_flags(), str(path), url + "f.bin"], store).ok
    held = remote.listing(store, url)
    assert remote.unchanged(local, held["f.bin"]), (local, held)
    assert local["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_listing_of_a_missing_bucket_fails_and_the_epilog_sends_everything(store, bucket, tmp_path):
    from slurm_yolo.errors import StoreError

    with pytest.raises(StoreError):
        remote.listing(store, f"s3://no-such-{bucket}/x/")
    assert remote.listing(store, f"s3://{bucket}/nothing-here/") == {}


def test_the_synced_benchmark_shape_skips_the_bulk(store, bucket, s3_client, tmp_path):
    """s5cmd's own sync of the folder (what the benchmark uses to stand for the in-training sync)
    uploads with the default part size, the one the epilog assumes: nothing large goes twice."""
    run = make_run(tmp_path)
    site = site_for(store, bucket, tmp_path)
    dest = archiver.destination(json.loads((run / "run.json").read_text()), site,
                                archiver.Job(env_for(run), "t").user()[0])[0]
    out = subprocess.run(s5cmd.base_argv(store, workers=8) + ["sync", "--exclude", "run.json", f"{run}/", dest],
                         env=store.environment(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = archive(run, site)
    assert result.bytes < 100_000  # the records only
    verify(store, result.dest, tmp_path)
