"""Seed archived runs into the loopback store the way the epilog leaves them (with
:mod:`tests.helpers.catalog_seed`): run folder files, MANIFEST.json, run.json, the runs/ record,
and the index. Includes hostile values: the portal must show them as text."""

from __future__ import annotations

import io
import json
from datetime import timedelta

from slurm_yolo.catalog.index import Catalog
from tests.helpers.catalog_seed import NOW, archive_run, iso, results_csv, run_json, write_index

# Would set window.__pwned if any of it ever became markup or script.
HOSTILE = '</script><script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
HOSTILE_PROJECT = 'x<img src=x onerror=window.__pwned=3>'


def image(colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 32), colour).save(buf, format=fmt)
    return buf.getvalue()


def record(bucket: str, run_id: str, *, user: str = "ana", project: str = "pcb", lr0: float = 0.01,
           map50_95: float = 0.5, state: str = "COMPLETED", attempts: list | None = None,
           sweep: str | None = None) -> dict:
    rec = run_json(run_id, bucket, project=project, lr0=lr0, map50_95=map50_95)
    rec.update(user=user, end_state=state, status=state, sweep_id=sweep,
               archive_url=f"s3://{bucket}/runs/{user}/detect/{project}/yolov8n/{run_id}/")
    if attempts is not None:
        rec["attempts"] = attempts
    return rec


def args_yaml(lr0: float, name: str = "train") -> bytes:
    import yaml

    return yaml.safe_dump({"task": "detect", "model": "yolov8n.yaml", "epochs": 5, "lr0": lr0, "batch": 16,
                           "imgsz": 96, "name": name, "save_dir": f"runs/{name}"}).encode()


def seed(client, cat: Catalog) -> dict[str, dict]:
    """Five runs; returns their index records by run ID.

    - ``good``: COMPLETED, rising curve, every kind of image, weights;
    - ``oom``: two attempts (TIMEOUT with a USR2 signal, requeued; then OUT_OF_MEMORY), other lr0;
    - ``hostile``: hostile project, args and file names (must stay text);
    - ``foreign``: user ``bo`` whose archive_url is in ana's prefix (listed, never linked);
    - ``empty``: FAILED before its first epoch (no results.csv, no images).
    """
    b = cat.bucket
    t0 = NOW - timedelta(days=3)
    specs = {}
    good = record(b, "20261119_100000_good0001", lr0=0.01, map50_95=0.62, sweep="sw1")
    specs["good"] = (good, {
        "results.csv": results_csv([0.05, 0.2, 0.4, 0.55, 0.62]), "args.yaml": args_yaml(0.01),
        "train_batch0.jpg": image((200, 30, 30), "JPEG"), "val_batch0_labels.jpg": image((30, 200, 30), "JPEG"),
        "val_batch0_pred.jpg": image((30, 30, 200), "JPEG"), "confusion_matrix.png": image((90, 90, 90)),
        "results.png": image((250, 250, 250)), "weights/best.pt": b"\0" * 64, "weights/last.pt": b"\0" * 64,
        "train.log": b"epoch 1 ...\n"})
    oom = record(b, "20261119_110000_oom00002", lr0=0.001, map50_95=0.3, state="OUT_OF_MEMORY", sweep="sw1", attempts=[
        {"attempt": 0, "node": "n1", "start": iso(t0), "end": iso(t0 + timedelta(minutes=30)), "end_state": "TIMEOUT",
         "epoch": 2, "signals": [{"signal": "USR2", "time": iso(t0 + timedelta(minutes=29))}], "exit_code": "0:15"},
        {"attempt": 1, "node": "n2", "start": iso(t0 + timedelta(minutes=32)), "end": iso(t0 + timedelta(minutes=50)),
         "end_state": "OUT_OF_MEMORY", "epoch": 3, "signals": [], "exit_code": "0:125"}])
    specs["oom"] = (oom, {"results.csv": results_csv([0.02, 0.1, 0.3]), "args.yaml": args_yaml(0.001)})
    hostile = record(b, "20261120_090000_hostile3", project=HOSTILE_PROJECT, map50_95=0.1)
    hostile["config"]["train"]["lr0"] = HOSTILE
    specs["hostile"] = (hostile, {
        "results.csv": (b"epoch," + HOSTILE.replace(",", ";").encode() + b"\n1,0.5\n2,0.6\n"),
        "args.yaml": args_yaml(0.01, name=HOSTILE).replace(b"task: detect", b"task: '" + HOSTILE.encode() + b"'"),
        f'"><img src=x onerror=window.__pwned=4>.png': image((1, 2, 3))})
    foreign = record(b, "20261120_100000_foreign4", user="bo")
    foreign["archive_url"] = f"s3://{b}/runs/ana/detect/pcb/yolov8n/20261120_100000_foreign4/"
    specs["foreign"] = (foreign, {"results.csv": results_csv([0.9]), "args.yaml": args_yaml(0.5)})
    empty = record(b, "20261121_080000_empty005", project="weld", state="FAILED", map50_95=None)
    empty["metrics"] = {}
    specs["empty"] = (empty, {})
    lines = {}
    for key, (rec, files) in specs.items():
        line = archive_run(client, b, rec, files, cat.index_url)
        if key == "hostile":
            line["hparams"]["lr0"] = HOSTILE  # a string where a number belongs
        lines[key] = line
    write_index(client, cat, list(lines.values()))
    return lines


def rewrite_index(client, cat: Catalog, lines: dict[str, dict]) -> None:
    """Rewrite the index from ``lines`` (as a compaction would after an epilog update)."""
    write_index(client, cat, list(lines.values()))


ALLOWED = "s3://{bucket}/runs/{{user}}/"


def allowed(cat: Catalog) -> str:
    return ALLOWED.format(bucket=cat.bucket)


def dumps(x) -> str:
    return json.dumps(x)


def seed_usage(client, cat: Catalog) -> dict[str, dict]:
    """Four runs in two projects, indexed as the archiver indexes them: ``bytes`` and ``objects``
    from a listing of each run's folder, GPU- and CPU-hours from its attempts; one more run
    indexed before sizes were recorded (``bytes`` unknown). Returns the index records by key."""
    from slurm_yolo.archive import layout

    b = cat.bucket
    specs = {
        "pcb1": ("20261119_100000_pcbuse01", "pcb", 2, 4, [("2026-11-19T10:00:00Z", "2026-11-19T12:00:00Z")],
                 {"results.csv": results_csv([0.1, 0.2]), "weights/best.pt": b"\1" * 5000}),
        "pcb2": ("20261120_100000_pcbuse02", "pcb", 1, 8, [("2026-11-20T10:00:00Z", "2026-11-20T10:30:00Z"),
                                                           ("2026-11-20T11:00:00Z", "2026-11-20T12:00:00Z")],
                 {"results.csv": results_csv([0.3]), "weights/best.pt": b"\2" * 20000, "train.log": b"x" * 700}),
        "weld1": ("20261121_100000_welduse1", "weld", 0, 2, [("2026-11-21T08:00:00Z", "2026-11-21T11:00:00Z")],
                  {"results.csv": results_csv([0.5]), "weights/last.pt": b"\3" * 123456}),
        "old": ("20261118_100000_olduse01", "weld", 1, 1, [("2026-11-18T08:00:00Z", "2026-11-18T09:00:00Z")],
                {"results.csv": results_csv([0.4])}),
    }
    lines = {}
    for key, (run_id, project, gpus, cpus, spans, files) in specs.items():
        rec = record(b, run_id, project=project)
        rec["config"]["slurm"].update(gpus=gpus, cpus_per_task=cpus)
        rec["attempts"] = [{"attempt": i, "node": "n1", "start": s, "end": e, "end_state": "COMPLETED"}
                           for i, (s, e) in enumerate(spans)]
        line = archive_run(client, b, rec, files, cat.index_url)
        if key != "old":
            prefix = rec["archive_url"].split("/", 3)[3]
            listed = client.list_objects_v2(Bucket=b, Prefix=prefix)["Contents"]
            line.update(layout.stored_totals(listed))
        lines[key] = line
    write_index(client, cat, list(lines.values()))
    return lines
