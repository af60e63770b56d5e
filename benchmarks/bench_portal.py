"""Benchmark: the portal's first build and its unchanged rebuild at 10,000 and 50,000 runs, this
checkout against an older commit (``--base``, a ``git worktree``: its code as it was, nothing
re-implemented), on a fresh SeaweedFS on loopback.

The synthetic site, per run, the files a short Ultralytics detect training leaves: ``results.csv``
(50 epochs, the real detect header), ``args.yaml`` (Ultralytics' ~90 keys), ``run.json``,
``MANIFEST.json``, 15 plots and sample images (``--image-kb`` each, random bytes: the portal
copies them, it never decodes them) and two small weights files; 19 objects per run. Seeded once
per size in bulk (the tree written locally, one ``s5cmd cp``), the index as quarterly Parquet files.

Measured, each build in a fresh site folder (``build_site`` in process for this checkout, a child
process with the worktree first on ``sys.path`` for the base):

* **first build**: an empty site folder, every run page built;
* **unchanged rebuild**: the same folder again, nothing changed in the store.

The base's first build takes minutes per 10,000 runs, so it runs at most at ``--base-max``
runs (default 10,000); above that only this checkout is timed.

Run: ``python benchmarks/bench_portal.py [--sizes 10000,50000] [--base 782225b] [--markdown FILE]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and ("--child" in sys.argv or "--write-index" in sys.argv):
    flag = "--child" if "--child" in sys.argv else "--write-index"
    sys.path.insert(0, sys.argv[sys.argv.index(flag) + 1])  # the tree under test first
else:
    sys.path.insert(0, str(ROOT))

BASE_COMMIT = "782225b"  # the portal before bulk fetches and the index fingerprint
IMAGES = ("results.png", "labels.jpg", "confusion_matrix.png", "confusion_matrix_normalized.png",
          "BoxF1_curve.png", "BoxPR_curve.png", "BoxP_curve.png", "BoxR_curve.png", "train_batch0.jpg",
          "train_batch1.jpg", "train_batch2.jpg", "val_batch0_labels.jpg", "val_batch0_pred.jpg",
          "val_batch1_labels.jpg", "val_batch1_pred.jpg")
HEADER = ("epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,metrics/precision(B),metrics/recall(B),"
          "metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,val/cls_loss,val/dfl_loss,lr/pg0,lr/pg1,lr/pg2")
ARGS = {"task": "detect", "mode": "train", "model": "yolov8n.yaml", "data": "/data/pcb/data.yaml", "epochs": 50,
        "time": None, "patience": 100, "batch": 16, "imgsz": 640, "save": True, "save_period": -1, "cache": False,
        "device": "0", "workers": 8, "project": None, "name": "train", "exist_ok": False, "pretrained": True,
        "optimizer": "auto", "verbose": True, "seed": 0, "deterministic": True, "single_cls": False,
        "rect": False, "cos_lr": False, "close_mosaic": 10, "resume": False, "amp": True, "fraction": 1.0,
        "profile": False, "freeze": None, "multi_scale": False, "overlap_mask": True, "mask_ratio": 4,
        "dropout": 0.0, "val": True, "split": "val", "save_json": False, "conf": None, "iou": 0.7,
        "max_det": 300, "half": False, "dnn": False, "plots": True, "source": None, "vid_stride": 1,
        "stream_buffer": False, "visualize": False, "augment": False, "agnostic_nms": False, "classes": None,
        "retina_masks": False, "embed": None, "show": False, "save_frames": False, "save_txt": False,
        "save_conf": False, "save_crop": False, "show_labels": True, "show_conf": True, "show_boxes": True,
        "line_width": None, "format": "torchscript", "keras": False, "optimize": False, "int8": False,
        "dynamic": False, "simplify": True, "opset": None, "workspace": None, "nms": False, "lr0": 0.01,
        "lrf": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 3.0, "warmup_momentum": 0.8,
        "warmup_bias_lr": 0.1, "box": 7.5, "cls": 0.5, "dfl": 1.5, "pose": 12.0, "kobj": 1.0, "nbs": 64,
        "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "degrees": 0.0, "translate": 0.1, "scale": 0.5,
        "shear": 0.0, "perspective": 0.0, "flipud": 0.0, "fliplr": 0.5, "bgr": 0.0, "mosaic": 1.0,
        "mixup": 0.0, "cutmix": 0.0, "copy_paste": 0.0, "auto_augment": "randaugment", "erasing": 0.4,
        "cfg": None, "tracker": "botsort.yaml", "save_dir": "runs/detect/train"}


def results_csv(rng: random.Random, epochs: int = 50) -> bytes:
    rows = [HEADER]
    for e in range(1, epochs + 1):
        m = min(0.95, e / epochs * rng.uniform(0.5, 1.0))
        loss = 3.0 / (1 + e / 5)
        rows.append(",".join(f"{v:.5g}" for v in (
            e, e * 31.5, loss, loss * 0.8, loss * 0.5, m + 0.05, m, m + 0.1, m, loss * 1.1, loss * 0.9,
            loss * 0.6, 0.01, 0.01, 0.01)))
    return ("\n".join(rows) + "\n").encode()


def seed(server, bucket: str, n: int, tree: Path, image_kb: int, base: Path) -> str:
    """``n`` archived runs in ``bucket`` and their index; returns the index URL."""
    import yaml

    from slurm_yolo.archive import layout, s5cmd
    from tests.helpers.catalog_seed import make_record, run_json

    rng = random.Random(n)
    blob = rng.randbytes(image_kb * 1024 + 4096)
    lines = []
    for i in range(n):
        line = make_record(i, rng, bucket=bucket)
        rid = line["run_id"]
        folder = tree / line["archive_url"].split("/", 3)[3]
        (folder / "weights").mkdir(parents=True)
        files = {"results.csv": results_csv(rng), "args.yaml": yaml.safe_dump({**ARGS, "lr0": line["hparams"]["lr0"]},
                                                                               sort_keys=False).encode(),
                 "weights/best.pt": blob[:1024], "weights/last.pt": blob[1:1025]}
        for k, name in enumerate(IMAGES):
            files[name] = blob[k:k + image_kb * 1024]
        for rel, data in files.items():
            (folder / rel).write_bytes(data)
        manifest = {"version": 1, "files": {rel: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                            for rel, d in files.items()}}
        (folder / layout.MANIFEST).write_text(json.dumps(manifest))
        record = run_json(rid, bucket, project=line["project"], map50_95=line["map50_95"])
        record.update(archive_url=line["archive_url"], task=line["task"], user=line["user"],
                      end_state=line["end_state"], submitted_at=line["submitted_at"])
        (folder / "run.json").write_text(json.dumps(record))
        lines.append(line)
    store = server.store()
    argv = s5cmd.base_argv(store, workers=64) + ["cp", f"{tree}/*", f"s3://{bucket}/"]
    result = s5cmd.run(argv, store, timeout=7200)
    s5cmd.check_s5cmd(result, "seed the runs")
    # The index in the base's format (this checkout reads older index versions, not the reverse).
    (tree / "lines.json").write_text(json.dumps(lines))
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--write-index", str(base), str(tree / "lines.json"),
                    server.endpoint, ",".join(f"{k}={v}" for k, v in server.keys), bucket], check=True, timeout=3600,
                   cwd=base)
    return f"s3://{bucket}/index/"


def write_index(lines_json: str, endpoint: str, keys: str, bucket: str) -> None:
    """The index quarters of the seeded runs, written by whatever slurm_yolo is first on sys.path."""
    from slurm_yolo.archive import index_format
    from slurm_yolo.store import Store

    store = Store(endpoint_url=endpoint, keys=tuple(tuple(kv.split("=", 1)) for kv in keys.split(",")))
    client = store.boto3_client()
    by_quarter: dict[str, list[dict]] = {}
    for line in json.loads(Path(lines_json).read_text()):
        by_quarter.setdefault(index_format.quarter_of(line), []).append(line)
    for quarter, recs in by_quarter.items():
        client.put_object(Bucket=bucket, Key="index/" + index_format.part_rel(quarter),
                          Body=index_format.encode(index_format.to_table(recs)))


def child(index_url: str, out: str, endpoint: str, keys: str, fetch: str, catch_up: str = "1") -> None:
    """Time a first build, the builds that bring the deferred images, and an unchanged rebuild,
    with whatever slurm_yolo is first on sys.path."""
    from slurm_yolo.catalog.index import Catalog
    from slurm_yolo.report import build
    from slurm_yolo.store import Store

    store = Store(endpoint_url=endpoint, keys=tuple(tuple(kv.split("=", 1)) for kv in keys.split(",")),
                  atomic_conditional_writes=True)
    cat = Catalog(store, index_url)
    kw = {"fetch": fetch} if fetch != "-" else {}
    got = {}
    t0 = time.monotonic()
    result = build.build_site(cat, out, **kw)
    got["first"] = time.monotonic() - t0
    got["first_rebuilt"], got["first_errors"] = result.rebuilt, len(result.errors)
    got["first_deferred"] = getattr(result, "deferred", 0)
    got["catch_up"], got["catch_up_builds"] = 0.0, 0
    if getattr(result, "deferred", 0) and catch_up == "1":
        # The deferred images in one more build (the timer's builds would take them 5,000 at a time).
        t0 = time.monotonic()
        result = build.build_site(cat, out, **kw, max_images=None)
        got["catch_up"], got["catch_up_builds"] = time.monotonic() - t0, 1
    if getattr(result, "deferred", 0):
        return print(json.dumps(got))  # an unchanged rebuild needs every image in: not timed here
    t0 = time.monotonic()
    result = build.build_site(cat, out, **kw)
    got["unchanged"] = time.monotonic() - t0
    got["unchanged_rebuilt"] = result.rebuilt
    print(json.dumps(got))


def time_tree(tree: str, server, index_url: str, out: Path, fetch: str = "-", catch_up: bool = False) -> dict:
    keys = ",".join(f"{k}={v}" for k, v in server.keys)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", tree, index_url, str(out),
                           server.endpoint, keys, fetch, "1" if catch_up else "0"], capture_output=True, text=True, timeout=14400, cwd=tree)
    if proc.returncode != 0:
        raise RuntimeError(f"build in {tree} failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(*sys.argv[i + 2:i + 8])
        return
    if "--write-index" in sys.argv:
        i = sys.argv.index("--write-index")
        write_index(*sys.argv[i + 2:i + 6])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,50000")
    p.add_argument("--base", default=BASE_COMMIT, help="the older commit to compare with")
    p.add_argument("--base-max", type=int, default=10000, help="largest size the base's build is timed at")
    p.add_argument("--boto3-max", type=int, default=10000, help="largest size fetch='boto3' is timed at")
    p.add_argument("--catch-up-max", type=int, default=10000,
                   help="largest size the builds that bring the deferred images are timed at")
    p.add_argument("--image-kb", type=int, default=8)
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _services import s3_server

    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-portal-"))
    old = work / "base"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.base], cwd=ROOT, check=True)
    try:
        with s3_server("seaweedfs") as server:
            client = server.store().boto3_client()
            for n in [int(x) for x in args.sizes.split(",")]:
                bucket = f"portal-{n}"
                client.create_bucket(Bucket=bucket)
                t0 = time.monotonic()
                index_url = seed(server, bucket, n, work / f"tree-{n}", args.image_kb, old)
                seeded = time.monotonic() - t0
                shutil.rmtree(work / f"tree-{n}", ignore_errors=True)
                print(f"{n} runs seeded in {seeded:.0f} s (load {load()})", flush=True)
                row = {"runs": n, "seed_s": seeded, "load_before": load()}
                row["new"] = time_tree(str(ROOT), server, index_url, work / f"site-new-{n}", "s5cmd",
                                       catch_up=n <= args.catch_up_max)
                print(f"  this checkout (s5cmd): {row['new']} (load {load()})", flush=True)
                if n <= args.boto3_max:
                    shutil.rmtree(work / f"site-new-{n}", ignore_errors=True)
                    row["boto3"] = time_tree(str(ROOT), server, index_url, work / f"site-new-{n}", "boto3")
                    print(f"  this checkout (boto3): {row['boto3']} (load {load()})", flush=True)
                if n <= args.base_max:
                    row["old"] = time_tree(str(old), server, index_url, work / f"site-old-{n}")
                    print(f"  base {args.base}: {row['old']} (load {load()})", flush=True)
                row["load_after"] = load()
                rows.append(row)
                shutil.rmtree(work / f"site-new-{n}", ignore_errors=True)
                shutil.rmtree(work / f"site-old-{n}", ignore_errors=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
        shutil.rmtree(work, ignore_errors=True)
    text = markdown(rows, args)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


def markdown(rows: list[dict], args) -> str:
    machine = f"{os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}"
    out = [f"SeaweedFS on loopback, {machine}; {len(IMAGES) + 4} objects per run, images {args.image_kb} KB; "
           f"base = {args.base}", "",
           "| runs | build | base s | this checkout, s5cmd s | base / this | this checkout, boto3 s | "
           "load (1, 5, 15 min) before → after |",
           "|---:|---|---:|---:|---:|---:|---|"]

    def cell(x: float | None, digits: int = 2) -> str:
        return "" if x is None else f"{x:.{digits}f}"

    def ratio(old: float | None, new: float) -> str:
        return "" if old is None else f"{old / new:.1f}×"

    for row in rows:
        new, old, b3 = row["new"], row.get("old", {}), row.get("boto3", {})
        out.append(f"| {row['runs']:,} | first build (every run paged; images of "
                   f"{new['first_deferred']:,} older runs deferred) | {cell(old.get('first'))} | {new['first']:.2f} | "
                   f"{ratio(old.get('first'), new['first'])} | {cell(b3.get('first'))} | "
                   f"{row['load_before']} → {row['load_after']} |")
        if new["catch_up_builds"]:
            out.append(f"| {row['runs']:,} | the deferred images, in one more build | | "
                       f"{new['catch_up']:.2f} | | | |")
        if "unchanged" in new:
            out.append(f"| {row['runs']:,} | unchanged rebuild | {cell(old.get('unchanged'), 3)} | "
                       f"{new['unchanged']:.3f} | {ratio(old.get('unchanged'), new['unchanged'])} | "
                       f"{cell(b3.get('unchanged'), 3)} | |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
