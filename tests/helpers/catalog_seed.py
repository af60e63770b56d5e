"""Seed archived runs and index records straight into the loopback store (boto3 puts, as an epilog would)."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import datetime, timedelta, timezone

from slurm_yolo import runfolder
from slurm_yolo.archive import index_format, index_store, layout
from slurm_yolo.catalog.index import Catalog

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
RESULTS_HEADER = "epoch,train/box_loss,metrics/precision(B),metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B)\n"


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_record(i: int, rng: random.Random, now: datetime = NOW, bucket: str = "b") -> dict:
    """A plausible index line; run i was submitted 2i+1 hours before ``now`` (never on a whole-day boundary)."""
    submitted = now - timedelta(hours=2 * i + 1)
    project = rng.choice(["pcb", "weld", "solder"])
    task = rng.choice(["detect", "segment"])
    model = rng.choice(["yolov8n", "yolov8s"])
    run_id = f"{submitted:%Y%m%d_%H%M%S}_{i:06d}"
    return {
        "run_id": run_id, "sweep_id": f"sw{i % 7}" if i % 3 == 0 else None, "task": task, "project": project,
        "model_name": model, "dataset_version": rng.choice(["v1", "v2", None]), "dataset_fingerprint": None,
        "user": rng.choice(["ana", "bo", "cy"]), "gpu": "H100", "submitted_at": iso(submitted),
        "start": iso(submitted + timedelta(minutes=5)), "end": iso(submitted + timedelta(hours=1)), "attempts": 1,
        "end_state": rng.choice(["COMPLETED", "COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT"]),
        "job_id": str(1000 + i), "map50": round(rng.random(), 4),
        "map50_95": None if i % 17 == 0 else round(rng.random(), 4), "precision": None, "recall": None,
        "epochs_done": rng.randint(1, 100),
        "hparams": {"lr0": rng.choice([0.01, 0.001, 0.0001]), "batch": rng.choice([8, 16, 32]), "epochs": 100},
        "archive_url": f"s3://{bucket}/runs/{task}/{project}/{model}/{run_id}/", "reproduces": None,
    }


def write_index(client, cat: Catalog, lines: list[dict]) -> None:
    """Lines as a compacted index: one Parquet file per quarter, in the real format."""
    by_quarter: dict[str, list[dict]] = {}
    for x in lines:
        by_quarter.setdefault(index_format.quarter_of(x), []).append(x)
    for quarter, recs in by_quarter.items():
        client.put_object(Bucket=cat.bucket, Key=cat.key(index_format.part_rel(quarter)),
                          Body=index_format.encode(index_format.to_table(recs)))


def write_legacy_index(client, cat: Catalog, lines: list[dict]) -> None:
    """Lines as the old single ``INDEX.jsonl`` (before ``index migrate``)."""
    body = "".join(json.dumps(x) + "\n" for x in lines).encode()
    client.put_object(Bucket=cat.bucket, Key=cat.key(index_store.LEGACY_JSONL), Body=body)


def archive_run(client, bucket: str, record: dict, files: dict[str, bytes], index_url: str) -> dict:
    """Write a run's folder, its manifest, its record and its index record as the epilog would."""
    base = record["archive_url"].split("/", 3)[3]
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=base + rel, Body=data)
    manifest = {"version": 1, "files": {rel: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                        for rel, d in files.items()}}
    client.put_object(Bucket=bucket, Key=base + layout.MANIFEST, Body=json.dumps(manifest).encode())
    client.put_object(Bucket=bucket, Key=base + runfolder.RUN_JSON, Body=json.dumps(record).encode())
    line = layout.index_record(record)
    ib, ip = index_url.split("/", 3)[2:]
    client.put_object(Bucket=ib, Key=ip + layout.index_key(record["run_id"]), Body=json.dumps(line).encode())
    return line


def run_json(run_id: str, bucket: str, *, project="pcb", data="/nonexistent/data.yaml", lr0=0.01, map50_95=0.5,
             end: datetime = NOW, model="yolov8n") -> dict:
    """A complete run record, as the launcher and the epilog leave it, for a run that ended at ``end``."""
    return {
        "schema": 1, "run_id": run_id, "sweep_id": None, "reproduces": None, "task": "detect", "project": project,
        "model_name": model, "user": "ana", "host": "login1", "submitted_at": iso(end - timedelta(hours=2)),
        "config": {"run": {"task": "detect", "project": project, "model_name": model, "dataset_version": None,
                           "notes": None},
                   "train": {"model": "yolov8n.yaml", "data": data, "epochs": 3, "lr0": lr0, "imgsz": 64},
                   "slurm": {"partition": None, "gpus": 0, "cpus_per_task": 1, "mem": "4G", "time": "01:00:00",
                             "account": None, "qos": None, "extra": {}, "signal_delay_s": 120, "max_requeues": 3},
                   "archive": {"url": f"s3://{bucket}/runs", "endpoint_url": None, "sync_every": "10m",
                               "sync_every_epochs": None},
                   "runs_root": "/tmp/runs"},
        "code": {"repo": "/nonexistent/repo", "commit": "a" * 40, "dirty": False},
        "dataset": {"path": data, "version": "v1", "fingerprint": "f" * 16, "files": 10},
        "archive_url": f"s3://{bucket}/runs/detect/{project}/{model}/{run_id}/",
        "slurm": {"job_id": "42"}, "environment": {"python": "3.8.0", "torch": "1.13.0", "ultralytics": "8.0.0",
                                                   "gpu": "H100"},
        "attempts": [{"attempt": 0, "node": "n1", "start": iso(end - timedelta(hours=1)), "end": iso(end),
                      "end_state": "COMPLETED"}],
        "status": "COMPLETED", "end_state": "COMPLETED",
        "metrics": {"epoch": 3, "map50": 0.7, "map50_95": map50_95, "precision": 0.8, "recall": 0.6, "epochs_done": 3},
    }


def results_csv(curve: list[float]) -> bytes:
    """A detection ``results.csv`` with one row per value of ``curve`` (its mAP50-95)."""
    rows = "".join(f"{e},0.5,0.8,0.6,{v + 0.1:.4f},{v:.4f}\n" for e, v in enumerate(curve, 1))
    return (RESULTS_HEADER + rows).encode()
