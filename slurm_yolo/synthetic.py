"""A tiny synthetic PCB-defect dataset in YOLO format, for the demo and the tests.

Nothing may be downloaded at run time, so the demo trains on generated images: a green
board with copper traces and pads, and a few defects drawn on top, each with its YOLO
box. Deterministic for a given seed. Needs Pillow and NumPy (the ``train`` extra has both).

Usage: ``python -m slurm_yolo.synthetic OUT_DIR [--train 48] [--val 16] [--size 96]``
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

CLASSES = ("missing_hole", "short", "open_circuit", "spur")


def _board(rng: random.Random, size: int):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (20 + rng.randint(0, 15), 90 + rng.randint(0, 30), 40))
    draw = ImageDraw.Draw(img)
    copper = (196, 150, 60)
    for _ in range(rng.randint(3, 6)):  # traces
        y = rng.randint(4, size - 4)
        draw.line([(0, y), (size, y + rng.randint(-8, 8))], fill=copper, width=max(2, size // 32))
    for _ in range(rng.randint(4, 8)):  # pads
        x, y, r = rng.randint(6, size - 6), rng.randint(6, size - 6), max(2, size // 24)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=copper)
    return img, draw


def _defect(draw, rng: random.Random, size: int, cls: int) -> tuple[float, float, float, float]:
    s = max(6, size // 8)
    x, y = rng.randint(s, size - s), rng.randint(s, size - s)
    if cls == 0:    # missing hole: a dark empty ring
        draw.ellipse([x - s // 2, y - s // 2, x + s // 2, y + s // 2], fill=(10, 10, 10), outline=(196, 150, 60))
    elif cls == 1:  # short: a bright copper bridge
        draw.rectangle([x - s // 2, y - s // 4, x + s // 2, y + s // 4], fill=(255, 210, 90))
    elif cls == 2:  # open circuit: a cut in copper
        draw.rectangle([x - s // 4, y - s // 2, x + s // 4, y + s // 2], fill=(0, 60, 20))
    else:           # spur: a copper spike
        draw.polygon([(x - s // 2, y + s // 2), (x + s // 2, y + s // 2), (x, y - s // 2)], fill=(230, 180, 70))
    return x / size, y / size, s / size, s / size


def make_dataset(out: str | Path, *, n_train: int = 48, n_val: int = 16, size: int = 96, seed: int = 0,
                 version: str = "synthetic-v1") -> Path:
    """Write ``out/{images,labels}/{train,val}`` and ``out/data.yaml``; return the data.yaml path."""
    import yaml

    out = Path(out).resolve()
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, draw = _board(rng, size)
            lines = []
            for _ in range(rng.randint(1, 3)):
                cls = rng.randrange(len(CLASSES))
                xc, yc, w, h = _defect(draw, rng, size, cls)
                lines.append(f"{cls} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}")
            img.save(out / "images" / split / f"pcb_{i:04d}.jpg", quality=90)
            (out / "labels" / split / f"pcb_{i:04d}.txt").write_text("\n".join(lines) + "\n")
    data_yaml = out / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({
        "path": str(out), "train": "images/train", "val": "images/val",
        "names": dict(enumerate(CLASSES)), "version": version,
    }, sort_keys=False))
    return data_yaml


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slurm_yolo.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder (data.yaml is written inside)")
    p.add_argument("--train", type=int, default=48, help="training images (default 48)")
    p.add_argument("--val", type=int, default=16, help="validation images (default 16)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        path = make_dataset(args.out, n_train=args.train, n_val=args.val, size=args.size, seed=args.seed)
    except ImportError as e:
        print(f"synthetic: {e.name} is missing: pip install 'slurm-yolo[train]'", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
