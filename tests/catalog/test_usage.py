"""``store usage``: the per-group table (pure) and its bytes against a listing of a real store."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from slurm_yolo.catalog.usage import lifecycle_transitions, monthly_cost, storage_class, totals, usage_table


def _rec(run_id, project, user="alice", task="detect", *, size=None, objects=None, gpu=None, cpu=None,
         submitted="2026-11-01T10:00:00Z"):
    return {"run_id": run_id, "project": project, "user": user, "task": task, "submitted_at": submitted,
            "end": submitted, **({"bytes": size, "objects": objects} if size is not None else {}),
            **({"gpu_hours": gpu, "cpu_hours": cpu} if gpu is not None else {})}


RECORDS = [
    _rec("r1", "pcb", size=1000, objects=5, gpu=2.0, cpu=16.0),
    _rec("r2", "pcb", user="bob", size=500, objects=4, gpu=0.5, cpu=4.0, submitted="2026-11-20T00:00:00Z"),
    _rec("r3", "wafer", task="classify", size=3000, objects=7, gpu=0.0, cpu=1.0),
    _rec("r4", "wafer", task="classify"),  # indexed before sizes and hours were recorded
]


def test_groups_sum_runs_objects_bytes_and_hours_largest_first():
    rows = usage_table(RECORDS, by="project")
    assert [r["project"] for r in rows] == ["wafer", "pcb"]
    assert rows[1] == {"project": "pcb", "runs": 2, "objects": 9, "bytes": 1500, "gpu_hours": 2.5,
                       "cpu_hours": 20.0, "unsized": 0, "unmetered": 0}
    # the old record is a run, but its size and hours are not guessed: it is counted apart
    assert rows[0]["runs"] == 2 and rows[0]["bytes"] == 3000 and rows[0]["unsized"] == 1 and rows[0]["unmetered"] == 1
    assert totals(rows)["bytes"] == 4500 and totals(rows)["runs"] == 4


def test_by_user_and_task_and_since():
    assert {r["user"]: r["bytes"] for r in usage_table(RECORDS, by="user")} == {"alice": 4000, "bob": 500}
    assert {r["task"]: r["runs"] for r in usage_table(RECORDS, by="task")} == {"classify": 2, "detect": 2}
    since = datetime(2026, 11, 10, tzinfo=timezone.utc)
    assert usage_table(RECORDS, by="project", since=since) == [
        {"project": "pcb", "runs": 1, "objects": 4, "bytes": 500, "gpu_hours": 0.5, "cpu_hours": 4.0,
         "unsized": 0, "unmetered": 0}]
    with pytest.raises(ValueError, match="model"):
        usage_table(RECORDS, by="model")


def test_monthly_cost_follows_the_lifecycle_classes():
    rules = [{"Status": "Enabled", "Transitions": [{"Days": 30, "StorageClass": "STANDARD_IA"}]},
             {"Status": "Disabled", "Transitions": [{"Days": 1, "StorageClass": "GLACIER"}]}]
    transitions = lifecycle_transitions(rules)
    assert transitions == [(30, "STANDARD_IA")]
    assert storage_class(29.9, transitions) == "STANDARD" and storage_class(31, transitions) == "STANDARD_IA"
    now = datetime(2026, 11, 25, tzinfo=timezone.utc)  # r2 is 5 days old, the others 24
    records = [_rec("a", "p", size=2e9, objects=1, submitted="2026-10-01T00:00:00Z"),
               _rec("b", "p", size=1e9, objects=1, submitted="2026-11-20T00:00:00Z"), _rec("c", "q")]
    cost = monthly_cost(records, "project", {"STANDARD": 0.023, "STANDARD_IA": 0.0125}, transitions, now=now)
    assert cost == {"p": round(2 * 0.0125 + 0.023, 4), "q": 0.0}


# --- against a real store: runs archived by the epilog's archiver, then `store usage` ----------

def _archive_run(root, site, run_id, project, attempts, *, restart_count=0):
    """A run folder archived by the real archiver (as the node epilog does), attempt by attempt."""
    import os
    import time

    from slurm_yolo.epilog import archiver
    from slurm_yolo.names import MARKER_PREFIX

    run = root / run_id
    (run / "weights").mkdir(parents=True, exist_ok=True)
    (run / "weights" / "last.pt").write_bytes(os.urandom(200_000 + 1000 * len(attempts)))
    (run / "results.csv").write_text("epoch,time,metrics/mAP50(B),metrics/mAP50-95(B)\n1,2.0,0.5,0.25\n")
    record = {"schema": 1, "run_id": run_id, "task": "detect", "project": project, "model_name": "yolov8n",
              "user": "root", "submitted_at": "2026-11-01T09:59:00Z",
              "config": {"slurm": {"nodes": 2, "gpus": 4, "cpus_per_task": 8}}, "slurm": {"job_id": "77"},
              "attempts": attempts, "status": "COMPLETED"}
    (run / "run.json").write_text(json.dumps(record))
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_UID": str(os.getuid()), "SLURM_JOB_GID": str(os.getgid()),
           "SLURM_JOB_COMMENT": MARKER_PREFIX + str(run), "SLURM_JOB_EXIT_CODE2": "0:0",
           "SLURM_JOB_RESTART_COUNT": str(restart_count), "SLURMD_NODENAME": "n1"}
    result = archiver.archive_job(env, site, deadline=time.monotonic() + 60, by="epilog_slurmd@n1")
    assert result.shipped, result
    return result.dest


def _listing(client, url):
    bucket, _, prefix = url[len("s3://"):].partition("/")
    objs = [o for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    return sum(o["Size"] for o in objs), len(objs)


def test_store_usage_bytes_equal_a_listing_of_the_store(seaweedfs_server, tmp_path, monkeypatch, capsys):
    import uuid

    from slurm_yolo.archive.index_store import add_to_index
    from slurm_yolo.cli import main
    from slurm_yolo.site import SiteConfig
    from tests.fixtures.environment import NO_SITE_CONFIG

    store = seaweedfs_server.store()
    client = store.boto3_client()
    bucket = f"u-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    site = SiteConfig(path="(test)", store=store, allowed_prefix=f"s3://{bucket}/runs/{{user}}/",
                      index_url=f"s3://{bucket}/index/", spool_dir=str(tmp_path / "spool"),
                      log_file=str(tmp_path / "epilog.log"), s5cmd_workers=8, scontrol=False,
                      claim_dir=str(tmp_path / "claims"), metrics_textfile=None)
    one = {"attempt": 1, "start": "2026-11-01T10:00:00Z", "end": "2026-11-01T11:30:00Z", "status": "COMPLETED"}
    a = _archive_run(tmp_path, site, "20261101_100000_aaaaaaaa", "pcb", [one])
    # a requeued run: attempt 1 shipped, then attempt 2 (whose spool entry no longer has
    # attempt 1's record: the store still does, and the size counts it)
    first = {**one, "status": "REQUEUED"}
    b = _archive_run(tmp_path, site, "20261101_100000_bbbbbbbb", "pcb", [first])
    second = {"attempt": 2, "start": "2026-11-01T12:00:00Z", "end": "2026-11-01T12:30:00Z", "status": "COMPLETED"}
    assert _archive_run(tmp_path, site, "20261101_100000_bbbbbbbb", "pcb", [first, second], restart_count=1) == b
    c = _archive_run(tmp_path, site, "20261101_100000_cccccccc", "wafer", [one])
    # and a run indexed by an older epilog: no size, no hours
    add_to_index(store, site.index_url, {"run_id": "20261001_000000_oldoldol", "project": "pcb", "task": "detect",
                                         "submitted_at": "2026-10-01T00:00:00Z", "user": "root"})
    monkeypatch.setenv("AWS_ENDPOINT_URL", store.endpoint_url)
    for k, v in store.keys:
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("SLURM_YOLO_INDEX", site.index_url)
    monkeypatch.setenv("SLURM_YOLO_SITE_CONFIG", NO_SITE_CONFIG)

    assert main(["store", "usage", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    groups = {g["project"]: g for g in out["groups"]}
    listed = {name: [_listing(client, url) for url in urls] for name, urls in (("pcb", [a, b]), ("wafer", [c]))}
    for name, sizes in listed.items():
        assert groups[name]["bytes"] == sum(s for s, _ in sizes) > 200_000 * len(sizes)
        assert groups[name]["objects"] == sum(n for _, n in sizes)
    assert groups["pcb"]["runs"] == 3 and groups["pcb"]["unsized"] == 1 and groups["pcb"]["unmetered"] == 1
    assert any("attempts/attempt-1.json" in o["Key"] for o in client.list_objects_v2(
        Bucket=bucket, Prefix=b.split("/", 3)[3])["Contents"])
    # 2 nodes x 4 GPUs (8 CPUs) per node: a 1.5 h run, and a requeued one of 1.5 h + 0.5 h
    assert groups["pcb"]["gpu_hours"] == pytest.approx(2 * 4 * (1.5 + 2.0))
    assert groups["pcb"]["cpu_hours"] == pytest.approx(2 * 8 * (1.5 + 2.0))
    assert any("indexed before" in note for note in out["notes"])
    # the same sizes tell what pruning would free
    assert main(["store", "prune", "--keep-top", "0", "--older-than", "2026-11-30", "--project", "pcb",
                 "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["bytes"] == sum(s for s, _ in listed["pcb"]) and plan["unsized"] == 1
    assert main(["store", "usage", "--by", "user"]) == 0
    text = capsys.readouterr()
    assert "root" in text.out and "indexed before" in text.err
    # a rebuilt index sizes every run it finds from the listing it makes: its records
    # (runs/<run_id>.json) say what the archiver said (the old hand-added record has no
    # run.json in the store: --force drops it)
    assert main(["index", "rebuild", "--force", "--json"]) == 0
    capsys.readouterr()
    for url in (a, b, c):
        run_id = url.rstrip("/").rsplit("/", 1)[1]
        rebuilt = json.loads(client.get_object(Bucket=bucket, Key=f"index/runs/{run_id}.json")["Body"].read())
        assert (rebuilt["bytes"], rebuilt["objects"]) == _listing(client, url)
        assert rebuilt["gpu_hours"] == pytest.approx(2 * 4 * (2.0 if "bbbb" in run_id else 1.5))
    # with the site's rates, a monthly cost: these runs are in STANDARD (no lifecycle rule moved them)
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text("storage_cost_per_gb_month: {STANDARD: 0.023, standard_ia: 0.0125}\n")
    monkeypatch.setenv("SLURM_YOLO_SITE_CONFIG", str(site_yaml))
    assert main(["store", "usage", "--json", "--by", "task"]) == 0
    (detect,) = json.loads(capsys.readouterr().out)["groups"]
    assert detect["cost_per_month"] == pytest.approx(detect["bytes"] / 1e9 * 0.023, abs=1e-4)
