"""A tiny synthetic PCB-defect dataset in YOLO format, for the demo and the tests.

Nothing may be downloaded at run time, so the demo trains on generated images: a green
board with copper traces and pads, and a few defects drawn on top, each with its YOLO
box. Deterministic for a given seed. Needs Pillow and NumPy (the ``train`` extra has both).

Two presets:

- ``pcb`` (default, ``synthetic-v1``): four small defect classes on a cluttered board. Cheap
  to make and fine for plumbing tests, but a model trained for a few CPU minutes learns
  next to nothing from it (mAP50-95 about 0.0003 after 29 epochs).
- ``demo`` (``synthetic-demo-v1``): two large, high-contrast defect classes on a calmer
  board, so that ``configs/demo.yaml`` reaches a visible mAP on 2 CPU cores within minutes
  and every curve in the portal rises.

Every other Ultralytics task gets its own layout, read from Ultralytics' own loaders
(:func:`make_task_dataset`, ``--task``): polygons for ``segment``, boxes with four keypoints
(``kpt_shape``, ``flip_idx``) for ``pose``, four-corner rotated boxes for ``obb``, class
folders (``train/<class>/``, ``val/<class>/``) for ``classify``, PNG class masks
(``masks_dir``) for ``semantic`` and 16-bit PNG depth maps (``depth_scale``) for ``depth``.
Each draws a few large, high-contrast shapes on a calm board, so that a nano model learns
something in a few CPU epochs.

Usage: ``python -m slurm_yolo.synthetic OUT_DIR [--task TASK] [--preset demo] [--train N] [--val N] [--size PX]``
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

CLASSES = ("missing_hole", "short", "open_circuit", "spur")


@dataclass(frozen=True)
class Preset:
    """How hard the dataset is: which classes, how big the defects, how busy the board."""

    classes: tuple[str, ...]
    defect_div: int        # defect side = image side / defect_div (±25 % in the demo)
    traces: tuple[int, int]
    pads: tuple[int, int]
    objects: tuple[int, int]
    version: str
    exact: bool            # jittered sizes and tight boxes (v1 kept its loose ones: old runs cite its fingerprint)
    n_train: int
    n_val: int
    size: int


PRESETS = {
    "pcb": Preset(CLASSES, 8, (3, 6), (4, 8), (1, 3), "synthetic-v1", False, 48, 16, 96),
    # Why these: at imgsz 96 the stride-32 head sees a 3x3 grid, so a defect must span a
    # good part of a cell to be found after a few hundred steps; two classes that differ
    # in both colour and shape keep the class head from being the bottleneck.
    "demo": Preset(CLASSES[:2], 4, (1, 3), (2, 4), (1, 2), "synthetic-demo-v1", True, 240, 48, 96),
}


def _board(rng: random.Random, size: int, p: Preset):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (20 + rng.randint(0, 15), 90 + rng.randint(0, 30), 40))
    draw = ImageDraw.Draw(img)
    copper = (196, 150, 60)
    for _ in range(rng.randint(*p.traces)):
        y = rng.randint(4, size - 4)
        draw.line([(0, y), (size, y + rng.randint(-8, 8))], fill=copper, width=max(2, size // 32))
    for _ in range(rng.randint(*p.pads)):
        x, y, r = rng.randint(6, size - 6), rng.randint(6, size - 6), max(2, size // 24)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=copper)
    return img, draw


def _defect(draw, rng: random.Random, size: int, cls: int, p: Preset) -> tuple[float, float, float, float]:
    s = max(6, size // p.defect_div)
    if p.exact:
        s = max(6, int(s * rng.uniform(0.75, 1.25)))
        h = s // 2
        x, y = rng.randint(h + 1, size - h - 1), rng.randint(h + 1, size - h - 1)
    else:
        h = s // 2
        x, y = rng.randint(s, size - s), rng.randint(s, size - s)
    if cls == 0:    # missing hole: a dark empty ring
        draw.ellipse([x - h, y - h, x + h, y + h], fill=(10, 10, 10), outline=(196, 150, 60))
    elif cls == 1:  # short: a bright copper bridge
        draw.rectangle([x - h, y - s // 4, x + h, y + s // 4], fill=(255, 210, 90))
        if p.exact:
            return x / size, y / size, s / size, (2 * (s // 4)) / size
    elif cls == 2:  # open circuit: a cut in copper
        draw.rectangle([x - s // 4, y - h, x + s // 4, y + h], fill=(0, 60, 20))
    else:           # spur: a copper spike
        draw.polygon([(x - h, y + h), (x + h, y + h), (x, y - h)], fill=(230, 180, 70))
    return x / size, y / size, s / size, s / size


def make_dataset(out: str | Path, *, n_train: int | None = None, n_val: int | None = None,
                 size: int | None = None, seed: int = 0, version: str | None = None,
                 preset: str = "pcb") -> Path:
    """Write ``out/{images,labels}/{train,val}`` and ``out/data.yaml``; return the data.yaml path.

    Args:
        out: the dataset folder (made if missing).
        n_train, n_val, size: image counts and side; default: the preset's.
        seed: the random seed (same seed, same images).
        version: the ``version:`` written into data.yaml; default: the preset's.
        preset: ``pcb`` (the plumbing dataset) or ``demo`` (one a small model learns fast).
    """
    import yaml

    p = PRESETS[preset]
    n_train = p.n_train if n_train is None else n_train
    n_val = p.n_val if n_val is None else n_val
    size = p.size if size is None else size
    out = Path(out).resolve()
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, draw = _board(rng, size, p)
            lines = []
            for _ in range(rng.randint(*p.objects)):
                cls = rng.randrange(len(p.classes))
                xc, yc, w, h = _defect(draw, rng, size, cls, p)
                lines.append(f"{cls} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}")
            img.save(out / "images" / split / f"pcb_{i:04d}.jpg", quality=90)
            (out / "labels" / split / f"pcb_{i:04d}.txt").write_text("\n".join(lines) + "\n")
    data_yaml = out / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({
        "path": str(out), "train": "images/train", "val": "images/val",
        "names": dict(enumerate(p.classes)), "version": version or p.version,
    }, sort_keys=False))
    return data_yaml


# --- the other tasks ------------------------------------------------------------------------
# One scene for all of them: a calm board, and on it 1-3 large parts of clearly different
# colour and shape. What differs per task is only how the parts are written down.

@dataclass(frozen=True)
class Part:
    """One drawn part: its class, centre and half-size (pixels), and rotation (radians)."""

    cls: int
    x: float
    y: float
    half: float
    angle: float

    def corners(self, aspect: float = 0.5) -> list[tuple[float, float]]:
        """The four corners of the part's rotated rectangle (half-height = half * aspect)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        h = self.half * aspect
        return [(self.x + dx * c - dy * s, self.y + dx * s + dy * c)
                for dx, dy in ((-self.half, -h), (self.half, -h), (self.half, h), (-self.half, h))]

    def circle(self, n: int = 16) -> list[tuple[float, float]]:
        """A polygon of ``n`` vertices around the part's circle."""
        return [(self.x + self.half * math.cos(2 * math.pi * i / n), self.y + self.half * math.sin(2 * math.pi * i / n))
                for i in range(n)]

    def tips(self) -> list[tuple[float, float]]:
        """The four tips of the part's cross: top, right, bottom, left (a pose's keypoints)."""
        return [(self.x, self.y - self.half), (self.x + self.half, self.y), (self.x, self.y + self.half),
                (self.x - self.half, self.y)]


COLOURS = ((235, 200, 60), (60, 170, 235), (235, 80, 80))


def _calm_board(rng: random.Random, size: int):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (25 + rng.randint(0, 10), 80 + rng.randint(0, 15), 45))
    return img, ImageDraw.Draw(img)


def _parts(rng: random.Random, size: int, n_classes: int, count: tuple[int, int] = (1, 2),
           rotate: bool = False) -> list[Part]:
    """Parts that do not overlap much: each in its own cell of a 2x2 grid."""
    cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
    rng.shuffle(cells)
    out = []
    for cx, cy in cells[:rng.randint(*count)]:
        # Inside the picture even when rotated: centre within 0.22-0.28 of a side from the edge,
        # reach at most 1.1 x 0.18 of a side (clipped corners would change a rotated box's shape).
        half = size * rng.uniform(0.13, 0.18)
        x = (cx + 0.5) * size / 2 + rng.uniform(-0.03, 0.03) * size
        y = (cy + 0.5) * size / 2 + rng.uniform(-0.03, 0.03) * size
        out.append(Part(rng.randrange(n_classes), x, y, half, rng.uniform(0, math.pi) if rotate else 0.0))
    return out


def _norm(points: list[tuple[float, float]], size: int) -> str:
    return " ".join(f"{min(max(v / size, 0.0), 1.0):.6f}" for p in points for v in p)


def _box(points: list[tuple[float, float]], size: int) -> str:
    xs, ys = [min(max(p[0], 0), size) for p in points], [min(max(p[1], 0), size) for p in points]
    return (f"{(min(xs) + max(xs)) / 2 / size:.6f} {(min(ys) + max(ys)) / 2 / size:.6f} "
            f"{(max(xs) - min(xs)) / size:.6f} {(max(ys) - min(ys)) / size:.6f}")


def _segment_image(rng, size, classes):
    img, draw = _calm_board(rng, size)
    lines = []
    for part in _parts(rng, size, len(classes)):
        polygon = part.circle() if part.cls == 0 else part.corners(0.6)
        draw.polygon(polygon, fill=COLOURS[part.cls])
        lines.append(f"{part.cls} {_norm(polygon, size)}")
    return img, lines


def _pose_image(rng, size, classes):
    img, draw = _calm_board(rng, size)
    lines = []
    for part in _parts(rng, size, len(classes)):
        top, right, bottom, left = part.tips()
        width = max(3, int(part.half / 3))
        draw.line([top, bottom], fill=COLOURS[part.cls], width=width)
        draw.line([left, right], fill=COLOURS[part.cls], width=width)
        keypoints = " ".join(f"{_norm([t], size)} 2" for t in part.tips())
        lines.append(f"{part.cls} {_box(part.tips(), size)} {keypoints}")
    return img, lines


def _obb_image(rng, size, classes):
    img, draw = _calm_board(rng, size)
    lines = []
    for part in _parts(rng, size, len(classes), rotate=True):
        corners = part.corners(0.45)
        draw.polygon(corners, fill=COLOURS[part.cls])
        lines.append(f"{part.cls} {_norm(corners, size)}")
    return img, lines


def _write_images(out: Path, n_train: int, n_val: int, rng: random.Random,
                  draw_one: Callable[[random.Random], tuple[Any, Any]],
                  save_label: Callable[[Path, str, str, Any], None]) -> None:
    for split, n in (("train", n_train), ("val", n_val)):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label = draw_one(rng)
            img.save(out / "images" / split / f"pcb_{i:04d}.jpg", quality=92)
            save_label(out, split, f"pcb_{i:04d}", label)


def _text_labels(out: Path, split: str, stem: str, lines: list[str]) -> None:
    folder = out / "labels" / split
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.txt").write_text("\n".join(lines) + "\n")


def _semantic_image(rng, size, classes):
    """Board (0), copper traces (1), defects (2): a PNG whose pixel values are class IDs."""
    from PIL import Image, ImageDraw

    img, draw = _calm_board(rng, size)
    mask = Image.new("L", (size, size), 0)
    mdraw = ImageDraw.Draw(mask)
    for _ in range(rng.randint(1, 2)):
        y = rng.randint(size // 6, size - size // 6)
        width = max(3, size // 10)
        draw.line([(0, y), (size, y)], fill=COLOURS[0], width=width)
        mdraw.line([(0, y), (size, y)], fill=1, width=width)
    for part in _parts(rng, size, 1):
        polygon = part.circle()
        draw.polygon(polygon, fill=COLOURS[2])
        mdraw.polygon(polygon, fill=2)
    return img, mask


def _depth_image(rng, size, classes):
    """A floor that recedes upwards (1 m at the bottom to 4 m at the top) and parts standing
    on it nearer; the picture's brightness follows the depth, so the map can be learned."""
    import numpy as np
    from PIL import Image

    rows = np.linspace(4.0, 1.0, size, dtype=np.float32)[:, None]
    depth = np.repeat(rows, size, axis=1)
    for part in _parts(rng, size, 1):
        x0, x1 = int(part.x - part.half), int(part.x + part.half)
        y0, y1 = int(part.y - part.half), int(part.y + part.half)
        depth[max(y0, 0):y1, max(x0, 0):x1] = rng.uniform(0.6, 0.9)
    shade = (255 * (1.0 - (depth - 0.5) / 4.0)).clip(0, 255).astype(np.uint8)
    rgb = np.stack([shade, (shade * 0.8).astype(np.uint8), (shade * 0.5).astype(np.uint8)], axis=-1)
    return Image.fromarray(rgb), depth


def _png_labels(folder: str) -> Callable[[Path, str, str, Any], None]:
    def save(out: Path, split: str, stem: str, mask) -> None:
        target = out / folder / split
        target.mkdir(parents=True, exist_ok=True)
        mask.save(target / f"{stem}.png")
    return save


DEPTH_SCALE = 1000  # PNG value 1000 = 1 metre, as Ultralytics' own depth datasets


def _depth_labels(out: Path, split: str, stem: str, depth) -> None:
    import numpy as np
    from PIL import Image

    target = out / "depth" / split
    target.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(depth * DEPTH_SCALE).astype(np.uint16)).save(target / f"{stem}.png")


def _classify_dataset(out: Path, classes: tuple[str, ...], n_train: int, n_val: int, size: int,
                      rng: random.Random) -> Path:
    """``out/{train,val}/<class>/*.jpg``: one large part per picture, its shape is its class."""
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            cls = i % len(classes)
            img, draw = _calm_board(rng, size)
            part = Part(cls, size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size,
                        size * rng.uniform(0.25, 0.35), 0.0)
            shape = (part.circle(), part.corners(0.6), part.tips()[:3])[cls % 3]
            draw.polygon(shape, fill=COLOURS[cls % len(COLOURS)])
            folder = out / split / classes[cls]
            folder.mkdir(parents=True, exist_ok=True)
            img.save(folder / f"pcb_{i:04d}.jpg", quality=92)
    return out


@dataclass(frozen=True)
class TaskLayout:
    """How one task's dataset is drawn and written."""

    classes: tuple[str, ...]
    draw: Callable[..., tuple[Any, Any]] | None
    save: Callable[[Path, str, str, Any], None] | None
    extra: dict[str, Any]


TASK_LAYOUTS: dict[str, TaskLayout] = {
    "segment": TaskLayout(("pad", "chip"), _segment_image, _text_labels, {}),
    # Four keypoints: the tips of a cross (top, right, bottom, left). A horizontal flip swaps
    # right and left, which is what flip_idx tells Ultralytics' augmentation.
    "pose": TaskLayout(("component",), _pose_image, _text_labels,
                       {"kpt_shape": [4, 3], "flip_idx": [0, 3, 2, 1]}),
    "obb": TaskLayout(("chip", "connector"), _obb_image, _text_labels, {}),
    "classify": TaskLayout(("capacitor", "resistor", "diode"), None, None, {}),
    "semantic": TaskLayout(("board", "copper", "defect"), _semantic_image, _png_labels("masks"),
                           {"masks_dir": "masks"}),
    "depth": TaskLayout(("depth",), _depth_image, _depth_labels, {"depth_scale": DEPTH_SCALE}),
}
DATASET_TASKS = ("detect", *TASK_LAYOUTS)


def make_task_dataset(out: str | Path, task: str, *, n_train: int = 64, n_val: int = 16, size: int = 64,
                      seed: int = 0, preset: str = "pcb") -> Path:
    """Write a small dataset for ``task`` in Ultralytics' layout for it; return what ``train.data`` takes.

    That is ``out/data.yaml`` for every task but ``classify``, whose dataset is the folder
    ``out`` itself (``train/<class>/``, ``val/<class>/``).

    Args:
        out: the dataset folder (made if missing).
        task: one of :data:`DATASET_TASKS`.
        n_train, n_val, size: image counts and side (``detect`` uses its preset's when left default).
        seed: the random seed (same seed, same images).
        preset: for ``detect`` only: ``pcb`` or ``demo``.

    Raises:
        ValueError: an unknown task.
    """
    import yaml

    if task == "detect":
        return make_dataset(out, seed=seed, preset=preset)
    if task not in TASK_LAYOUTS:
        raise ValueError(f"no synthetic dataset for task {task!r}; choose one of {', '.join(DATASET_TASKS)}")
    layout = TASK_LAYOUTS[task]
    out = Path(out).resolve()
    rng = random.Random(seed)
    if layout.draw is None:
        return _classify_dataset(out, layout.classes, n_train, n_val, size, rng)
    assert layout.save is not None
    _write_images(out, n_train, n_val, rng, lambda r: layout.draw(r, size, layout.classes), layout.save)
    data_yaml = out / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({
        "path": str(out), "train": "images/train", "val": "images/val", **layout.extra,
        "names": dict(enumerate(layout.classes)), "version": f"synthetic-{task}-v1",
    }, sort_keys=False))
    return data_yaml


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slurm_yolo.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder (data.yaml is written inside)")
    p.add_argument("--task", choices=DATASET_TASKS, default="detect",
                   help="the Ultralytics task whose dataset layout to write (default: detect)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="pcb",
                   help="pcb: 4 small classes (default); demo: 2 large classes a CPU model learns in minutes")
    p.add_argument("--train", type=int, help="training images (default: the preset's, 48 for pcb)")
    p.add_argument("--val", type=int, help="validation images (default: the preset's, 16 for pcb)")
    p.add_argument("--size", type=int, help="image side in pixels (default: the preset's, 96)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        if args.task == "detect":
            path = make_dataset(args.out, n_train=args.train, n_val=args.val, size=args.size, seed=args.seed,
                                preset=args.preset)
        else:
            sizes = {k: v for k, v in (("n_train", args.train), ("n_val", args.val), ("size", args.size)) if v}
            path = make_task_dataset(args.out, args.task, seed=args.seed, **sizes)
    except ImportError as e:
        print(f"synthetic: {e.name} is missing: pip install 'slurm-yolo[train]'", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
