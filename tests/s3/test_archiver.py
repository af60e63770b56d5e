"""The archiver's steps without Slurm: an env dict, a run folder, a real S3 server.

A damaged run.json (missing, not JSON, huge, hostile, not a file) loses nothing: the folder
the marker names is archived under the same checks, the end state comes from Slurm's own
evidence, and the damaged file is kept as it was. Each attempt is archived once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from slurm_yolo.archive.layout import user_prefix
from slurm_yolo import runfolder
from slurm_yolo.epilog import archiver, ship, snapshot, spool
from slurm_yolo.site import SiteConfig
from slurm_yolo.names import MARKER_PREFIX

RUN_ID = "20261123_070000_abcdefgh"


def site_for(store, bucket: str, tmp_path: Path) -> SiteConfig:
    return SiteConfig(path="(test)", store=store, allowed_prefix=f"s3://{bucket}/runs/{{user}}/",
                      index_url=f"s3://{bucket}/index/", spool_dir=str(tmp_path / "spool"),
                      log_file=str(tmp_path / "epilog.log"), s5cmd_workers=8, scontrol=False,
                      claim_dir=str(tmp_path / "claims"))


def make_run(root: Path, record: bytes | None) -> Path:
    run = root / "runs" / RUN_ID
    (run / "weights").mkdir(parents=True)
    (run / "weights" / "last.pt").write_bytes(os.urandom(300_000))
    (run / "results.csv").write_text("epoch,time,metrics/mAP50(B),metrics/mAP50-95(B)\n1,2.0,0.5,0.25\n")
    (run / "train.log").write_text("[slurm-yolo] run attempt 1 on n1\n")
    if record is not None:
        (run / "run.json").write_bytes(record)
    return run


def env_for(run: Path, exit_code2: str = "0:0") -> dict[str, str]:
    return {"SLURM_JOB_ID": "77", "SLURM_JOB_UID": str(os.getuid()), "SLURM_JOB_GID": str(os.getgid()),
            "SLURM_JOB_COMMENT": MARKER_PREFIX + str(run), "SLURM_JOB_EXIT_CODE2": exit_code2,
            "SLURM_JOB_RESTART_COUNT": "0", "SLURMD_NODENAME": "n1"}


def read_back(store, url: str) -> tuple[dict, dict, dict[str, bytes]]:
    """run.json, MANIFEST.json and every manifest file, each sha256-checked."""
    s3 = store.boto3_client()
    bucket, _, prefix = url[len("s3://"):].partition("/")

    def get(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=prefix + key)["Body"].read()

    manifest = json.loads(get("MANIFEST.json"))
    files = {}
    for rel, meta in manifest["files"].items():
        files[rel] = get(rel)
        assert hashlib.sha256(files[rel]).hexdigest() == meta["sha256"], rel
    return json.loads(get("run.json")), manifest, files


def archive(env, site):
    import time

    return archiver.archive_job(env, site, deadline=time.monotonic() + 60, by="epilog_slurmd@n1")


@pytest.mark.parametrize("content, reason", [
    (None, "run.json is missing"),
    (b"\x00{garbage", "run.json is unreadable: "),
    (b"{\"run_id\": tru", "run.json is unreadable: JSONDecodeError"),
    (b"[1, 2, 3]", "run.json is not a record of this folder"),
    (json.dumps({"run_id": RUN_ID, "task": "detect", "project": "../../etc", "model_name": "m"}).encode(),
     "run.json is not a record of this folder"),
    (json.dumps({"run_id": "someone-elses", "task": "detect", "project": "p", "model_name": "m"}).encode(),
     "run.json is not a record of this folder"),
    (b'{"run_id": "' + b"x" * (snapshot.MAX_JSON_BYTES + 10) + b'"}', "run.json is unreadable: Refused"),
])
def test_damaged_record_still_archives_the_folder(store, bucket, tmp_path, content, reason):
    run = make_run(tmp_path, content)
    site = site_for(store, bucket, tmp_path)
    result = archive(env_for(run), site)
    assert result.shipped and result.claimed, result
    assert result.damaged.startswith(reason)
    prefix = user_prefix(site.allowed_prefix, pwd.getpwuid(os.getuid()).pw_name)
    assert result.dest == f"{prefix}unknown/unknown/unknown/{RUN_ID}/"
    record, manifest, files = read_back(store, result.dest)
    assert record["record_damaged"].startswith(reason) and record["run_id"] == RUN_ID
    # No record and no scontrol: Slurm's 0:0 alone does not tell success from a time-out.
    assert record["end_state"] == "UNKNOWN"
    assert {"weights/last.pt", "results.csv", "train.log"} <= set(manifest["files"])
    assert files["weights/last.pt"] == (run / "weights" / "last.pt").read_bytes()
    if content is not None:
        assert files[runfolder.DAMAGED_RECORD] == content  # kept as it was...
        assert (run / "run.json").read_bytes() == content  # ...and never rewritten in the folder
    assert record["metrics"]["map50"] == 0.5  # from the snapshot's results.csv


def placement(prefix: str, **over: str) -> dict[str, str]:
    names = {"run_id": RUN_ID, "task": "detect", "project": "pcb", "model_name": "yolov8n", **over}
    return {**names, "archive_url": f"{prefix}{names['task']}/{names['project']}/{names['model_name']}/{RUN_ID}/"}


def test_damaged_record_lands_at_the_url_submit_printed(store, bucket, tmp_path):
    """run.json overwritten with garbage mid-training: the placement the launcher wrote beside it
    at submit time still puts the run where `submit` said, with the layout's names."""
    from slurm_yolo.record import write_placement

    site = site_for(store, bucket, tmp_path)
    prefix = user_prefix(site.allowed_prefix, pwd.getpwuid(os.getuid()).pw_name)
    run = make_run(tmp_path, b"\x00garbage written over the record")
    printed = placement(prefix)
    write_placement(run, {**printed, "config": {"ignored": True}})
    assert json.loads((run / runfolder.PLACEMENT).read_text()) == printed
    result = archive(env_for(run), site)
    assert result.shipped and result.damaged.startswith("run.json is unreadable"), result
    assert result.dest == printed["archive_url"] and not result.note
    record, manifest, files = read_back(store, result.dest)
    assert (record["task"], record["project"], record["model_name"]) == ("detect", "pcb", "yolov8n")
    assert record["archive_url"] == printed["archive_url"] and record["record_damaged"]
    assert {"weights/last.pt", "results.csv", runfolder.DAMAGED_RECORD} <= set(manifest["files"])
    assert runfolder.PLACEMENT not in manifest["files"]  # what it says is in run.json


@pytest.mark.parametrize("hostile, lands", [
    # A URL outside the user's prefix is not followed: the checked names place it under the prefix.
    ({"archive_url": "s3://{bucket}/runs/someone-else/detect/pcb/yolov8n/" + RUN_ID + "/"}, "detect/pcb/yolov8n"),
    # Names that would leave the layout, or another run's placement: not used at all.
    ({"project": "../../etc"}, "unknown/unknown/unknown"),
    ({"run_id": "20261123_070000_zzzzzzzz"}, "unknown/unknown/unknown"),
    ({"task": "a/b"}, "unknown/unknown/unknown"),
])
def test_a_hostile_placement_is_not_followed(store, bucket, tmp_path, hostile, lands):
    site = site_for(store, bucket, tmp_path)
    prefix = user_prefix(site.allowed_prefix, pwd.getpwuid(os.getuid()).pw_name)
    run = make_run(tmp_path, b"not json")
    bad = {**placement(prefix), **{k: v.replace("{bucket}", bucket) for k, v in hostile.items()}}
    (run / runfolder.PLACEMENT).write_text(json.dumps(bad))
    result = archive(env_for(run), site)
    assert result.shipped, result
    assert result.dest == f"{prefix}{lands}/{RUN_ID}/"
    read_back(store, result.dest)


def test_a_placement_that_is_a_link_is_not_read(store, bucket, tmp_path):
    site = site_for(store, bucket, tmp_path)
    prefix = user_prefix(site.allowed_prefix, pwd.getpwuid(os.getuid()).pw_name)
    run = make_run(tmp_path, None)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(placement(prefix)))
    (run / runfolder.PLACEMENT).symlink_to(elsewhere)
    result = archive(env_for(run), site)
    assert result.shipped and result.dest == f"{prefix}unknown/unknown/unknown/{RUN_ID}/"


def test_damaged_record_end_state_from_slurm_exit_code(store, bucket, tmp_path):
    run = make_run(tmp_path, b"not json")
    result = archive(env_for(run, exit_code2="3:0"), site_for(store, bucket, tmp_path))
    assert result.state == "FAILED" and result.shipped


@pytest.mark.parametrize("plant", ["fifo", "symlink"])
def test_record_that_is_not_a_regular_file_never_blocks_nor_leaks(store, bucket, tmp_path, plant):
    run = make_run(tmp_path, None)
    secret = tmp_path / "secret"
    secret.write_text("root's secret")
    if plant == "fifo":
        os.mkfifo(run / "run.json")
    else:
        (run / "run.json").symlink_to(secret)
    result = archive(env_for(run), site_for(store, bucket, tmp_path))
    assert result.shipped and result.damaged
    _, manifest, files = read_back(store, result.dest)
    assert runfolder.DAMAGED_RECORD not in manifest["files"]
    assert all(b"root's secret" not in body for body in files.values())


def test_each_attempt_is_archived_once(store, bucket, tmp_path):
    record = {"run_id": RUN_ID, "task": "detect", "project": "p", "model_name": "m", "status": "COMPLETED",
              "attempts": [{"attempt": 1, "status": "COMPLETED", "signals": []}]}
    run = make_run(tmp_path, json.dumps(record).encode())
    site = site_for(store, bucket, tmp_path)
    first = archive(env_for(run), site)
    assert first.claimed and first.shipped and first.state == "COMPLETED" and first.damaged is None
    again = archive({**env_for(run), "SLURMD_NODENAME": "n2"}, site)  # the job's second node, or a retry
    assert not again.claimed and not again.shipped
    claim = json.loads((tmp_path / "claims" / f"{os.getuid()}.77.{RUN_ID}.a1").read_text())
    assert claim["state"] == "done" and claim["outcome"] == {"state": "COMPLETED", "shipped": True,
                                                             "entry": f"{os.getuid()}.77.{RUN_ID}.a1"}


def test_an_unusable_claims_folder_never_loses_the_run(store, bucket, tmp_path):
    record = {"run_id": RUN_ID, "task": "detect", "project": "p", "model_name": "m", "status": "COMPLETED",
              "attempts": [{"attempt": 1, "status": "COMPLETED", "signals": []}]}
    run = make_run(tmp_path, json.dumps(record).encode())
    (tmp_path / "not-a-dir").write_text("a file where the claims folder should be")
    site = site_for(store, bucket, tmp_path)
    site = SiteConfig(**{**site.__dict__, "claim_dir": str(tmp_path / "not-a-dir" / "claims")})
    result = archive(env_for(run), site)
    assert result.claimed and result.shipped and result.state == "COMPLETED"
    read_back(store, result.dest)


# --- large files: uploaded straight from the run folder, never copied into the spool -------

def good_record() -> bytes:
    return json.dumps({"run_id": RUN_ID, "task": "detect", "project": "p", "model_name": "m",
                       "status": "COMPLETED", "attempts": [{"attempt": 1, "status": "COMPLETED", "signals": []}]}
                      ).encode()


def stage_with_store_down(store, bucket, tmp_path, run):
    """Archive with the store unreachable: the entry stays in the spool; returns (site, entry)."""
    from slurm_yolo.store import Store

    down = Store(endpoint_url="http://127.0.0.1:9", keys=store.keys)
    site = site_for(store, bucket, tmp_path)
    result = archive(env_for(run), SiteConfig(**{**site.__dict__, "store": down}))
    assert result.claimed and not result.shipped
    (entry,) = spool.iter_entries(site.spool_dir)
    return site, entry


def test_large_files_stay_in_the_run_folder_until_they_land(store, bucket, tmp_path):
    run = make_run(tmp_path, good_record())
    big = os.urandom(snapshot.DIRECT_MIN_BYTES + 12345)
    (run / "weights" / "best.pt").write_bytes(big)
    site, entry = stage_with_store_down(store, bucket, tmp_path, run)
    assert not (entry / "files" / "weights" / "best.pt").exists()  # the spool holds small files only
    assert (entry / "files" / "results.csv").exists()
    assert json.loads((entry / spool.DIRECT_JSON).read_text())["weights/best.pt"]["size"] == len(big)
    [shipped] = ship.drain(site)
    assert shipped.ok, shipped.detail
    _, manifest, files = read_back(store, f"{user_prefix(site.allowed_prefix, pwd.getpwuid(os.getuid()).pw_name)}detect/p/m/{RUN_ID}/")
    assert files["weights/best.pt"] == big and manifest["files"]["weights/best.pt"]["size"] == len(big)


def test_a_large_file_changed_before_upload_is_hashed_again(store, bucket, tmp_path):
    run = make_run(tmp_path, good_record())
    (run / "weights" / "best.pt").write_bytes(os.urandom(snapshot.DIRECT_MIN_BYTES))
    site, _ = stage_with_store_down(store, bucket, tmp_path, run)
    newer = os.urandom(snapshot.DIRECT_MIN_BYTES + 7)
    (run / "weights" / "best.pt").write_bytes(newer)  # e.g. the next attempt rewrote it meanwhile
    assert [r.ok for r in ship.drain(site)] == [True]
    _, manifest, files = read_back(store, f"{user_prefix(site.allowed_prefix, pwd.getpwuid(os.getuid()).pw_name)}detect/p/m/{RUN_ID}/")
    assert files["weights/best.pt"] == newer  # read_back checked its sha256 against the manifest


def test_a_large_file_swapped_for_a_link_is_not_followed(store, bucket, tmp_path):
    run = make_run(tmp_path, good_record())
    (run / "weights" / "best.pt").write_bytes(os.urandom(snapshot.DIRECT_MIN_BYTES))
    site, _ = stage_with_store_down(store, bucket, tmp_path, run)
    secret = tmp_path / "secret"
    secret.write_bytes(b"root's secret" * 400_000)
    (run / "weights" / "best.pt").unlink()
    (run / "weights" / "best.pt").symlink_to(secret)
    assert [r.ok for r in ship.drain(site)] == [True]  # the rest of the run still arrives
    record, manifest, files = read_back(store, f"{user_prefix(site.allowed_prefix, pwd.getpwuid(os.getuid()).pw_name)}detect/p/m/{RUN_ID}/")
    assert "weights/best.pt" not in manifest["files"] and "weights/last.pt" in files
    assert any(s.startswith("weights/best.pt: not uploaded") for s in record["epilog"]["skipped"])
    assert all(b"root's secret" not in body for body in files.values())


def test_a_full_spool_logs_once_and_the_run_still_arrives(store, bucket, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a 1 MiB tmpfs as the spool (CI runs as root)")
    run = make_run(tmp_path, good_record())
    for i in range(30):  # 3 MB of small files: more than the spool holds
        (run / f"val_batch{i}.jpg").write_bytes(os.urandom(100_000))
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(spool_dir)], check=True)
    try:
        site = site_for(store, bucket, tmp_path)
        logs = []
        handler = logging.Handler()
        handler.emit = lambda record: logs.append(record.getMessage())
        logging.getLogger("slurm_yolo.epilog").addHandler(handler)
        try:
            result = archive(env_for(run), site)
        finally:
            logging.getLogger("slurm_yolo.epilog").removeHandler(handler)
        assert result.shipped and result.complete, result
        assert [m for m in logs if "is full" in m] == [f"job 77: spool {spool_dir} is full: every file of run "
                                                        f"{RUN_ID} goes straight from the run folder"]
        _, manifest, files = read_back(store, result.dest)
        assert all(files[f"val_batch{i}.jpg"] == (run / f"val_batch{i}.jpg").read_bytes() for i in range(30))
    finally:
        subprocess.run(["umount", str(spool_dir)], check=True)


# --- every task's own metric: from the snapshot's results.csv, by the column run.json names ----

@pytest.mark.parametrize("recorded, expected", [
    ("metrics/accuracy_top1", ("metrics/accuracy_top1", 0.9, 2)),
    ("metrics/no-such-column", ("metrics/accuracy_top1", 0.9, 2)),  # not in the file: the first metric column
    (None, ("metrics/accuracy_top1", 0.9, 2)),
])
def test_a_classify_run_is_archived_and_indexed_with_its_accuracy(store, bucket, tmp_path, recorded, expected):
    from slurm_yolo.archive.index_location import IndexLocation
    from slurm_yolo.catalog import scan

    record = {"run_id": RUN_ID, "task": "classify", "project": "p", "model_name": "m", "status": "COMPLETED",
              "fitness_metric": recorded, "attempts": [{"attempt": 1, "status": "COMPLETED", "signals": []}]}
    run = make_run(tmp_path, json.dumps(record).encode())
    (run / "results.csv").write_text("epoch,time,train/loss,metrics/accuracy_top1,metrics/accuracy_top5,val/loss\n"
                                     "1,1.0,0.9,0.5,1.0,0.8\n2,2.0,0.7,0.9,1.0,0.6\n3,3.0,0.6,0.7,1.0,0.5\n")
    site = site_for(store, bucket, tmp_path)
    result = archive(env_for(run), site)
    assert result.shipped
    archived, _, _ = read_back(store, result.dest)
    m = archived["metrics"]
    assert (m["fitness_metric"], m["fitness"], m["best_epoch"]) == expected
    assert (m["top1"], m["top5"], m["map50_95"]) == (0.9, 1.0, None)
    (indexed,) = scan.load_records(IndexLocation.at(store, site.index_url))
    assert (indexed["fitness_metric"], indexed["fitness"]) == expected[:2]
    assert indexed["metrics"] == {"top1": 0.9, "top5": 1.0}
