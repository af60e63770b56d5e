"""The tasks Ultralytics trains, and the metric each one chooses ``best.pt`` by.

Every layer that reads a run (the record, the index, ``runs list``, the portal, MLflow,
``store prune``) must follow the run's own task: a classify run has no box mAP, a segment
run is ranked by its mask mAP. The task list and the selection metrics are not copied
here: they are read from the installed Ultralytics (``ultralytics.cfg.TASKS`` and
``TASK2METRIC``), so a newer Ultralytics with a new task is followed without a release.

``import ultralytics.cfg`` imports torch (seconds), which the login node and the epilog
must never pay. So the two literals are read from the package's *source* with :mod:`ast`,
without executing it; :func:`importlib.util.find_spec` finds the package without running
its ``__init__``.

:func:`metric_field` names a ``results.csv`` column once for every room: the record's
``metrics``, the index's ``metrics.<field>`` columns, ``--where``/``--sort``, the portal.

Models are told apart as Ultralytics tells them, without torch: :func:`find_model_yaml`
resolves a model yaml name the way ``ultralytics.nn.tasks.yaml_model_load`` does (the scale
letter dropped: ``yolov8n-seg.yaml`` is ``cfg/models/v8/yolov8-seg.yaml``), and
:func:`model_task` reads the task from the yaml's output module (``guess_model_task``'s
``cfg2task``) or, for a checkpoint, from a task suffix in its name.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import yaml

from slurm_yolo.errors import ConfigError

DEFAULT_TASK = "detect"

# Fields where smaller wins (depth's error metrics). None of them is a selection metric today;
# a ranking by one of them (``--metric abs_rel``) must sort ascending.
LOWER_IS_BETTER = frozenset({"abs_rel", "rmse", "silog"})

# The names existing queries already use (``map50_95`` of the box set), and short names for
# Ultralytics' long ones. Anything else is slugged by :func:`metric_field`.
_BASE_NAMES = {
    "mAP50-95": "map50_95",
    "mAP50": "map50",
    "precision": "precision",
    "recall": "recall",
    "accuracy_top1": "top1",
    "accuracy_top5": "top5",
    "mIoU": "miou",
}
# Ultralytics' metric-set suffixes: (B) box, (M) mask, (P) pose keypoints. The box set keeps
# the bare names, so a detect run's fields are what they were before other tasks existed.
_SET_SUFFIX = {"B": "", "M": "_mask", "P": "_pose"}
_COLUMN_RE = re.compile(r"metrics/(?P<base>.*?)(?:\((?P<set>[A-Za-z0-9]+)\))?")

_INSTALL_FIX = "pip install 'slurm-yolo[train]'"


@dataclass(frozen=True)
class TaskTable:
    """What the installed Ultralytics trains.

    Attributes:
        tasks: ``ultralytics.cfg.TASKS``, in Ultralytics' order.
        selection: task -> the ``results.csv`` column Ultralytics ranks epochs by
            (``ultralytics.cfg.TASK2METRIC``).
        ultralytics_version: the installed package's ``__version__``.
    """

    tasks: tuple[str, ...]
    selection: Mapping[str, str]
    ultralytics_version: str

    def selection_column(self, task: str) -> str:
        """The ``results.csv`` column that ranks the epochs of a ``task`` run.

        Raises:
            ConfigError: the task is not one this Ultralytics trains (names the known ones).
        """
        if task not in self.tasks or task not in self.selection:
            raise ConfigError(
                f"task {task!r} is not one that Ultralytics {self.ultralytics_version} trains; "
                f"known tasks: {', '.join(self.tasks)}")
        return self.selection[task]


def ultralytics_dir() -> Path | None:
    """The installed ``ultralytics`` package's folder, found without importing it; ``None`` if absent."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def installed_tasks() -> TaskTable:
    """The task table of the Ultralytics installed in this interpreter, read from its source.

    Raises:
        ConfigError: Ultralytics is not installed (names this interpreter and the install
            command), or its source no longer holds the literals this reads.
    """
    root = ultralytics_dir()
    if root is None:
        raise ConfigError(f"ultralytics is not installed in {sys.executable}: {_INSTALL_FIX}")
    cfg = root / "cfg" / "__init__.py"
    try:
        cfg_source = cfg.read_text(encoding="utf-8")
        init_source = (root / "__init__.py").read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the installed Ultralytics source {e.filename}: {e.strerror}; "
                          f"reinstall it: {_INSTALL_FIX}") from e
    tasks = _literal(cfg_source, "TASKS", cfg)
    selection = _literal(cfg_source, "TASK2METRIC", cfg)
    version = _literal(init_source, "__version__", root / "__init__.py")
    if (not isinstance(tasks, (tuple, list)) or not all(isinstance(t, str) for t in tasks)
            or not isinstance(selection, dict) or not isinstance(version, str)):
        raise ConfigError(f"{cfg}: TASKS/TASK2METRIC are not the literals slurm-yolo reads "
                          f"(a tuple of names and a dict of columns); pin a supported Ultralytics")
    return TaskTable(tasks=tuple(tasks), selection={str(k): str(v) for k, v in selection.items()},
                     ultralytics_version=version)


def _literal(source: str, name: str, path: Path) -> object:
    """The value of the module-level assignment ``name = <literal>`` in ``source``.

    Parsing a 1,200-line module costs ~20 ms on every submit; the statement alone is parsed
    instead, grown a line at a time until it is complete (a literal spans a few lines).
    """
    match = re.search(rf"^{re.escape(name)}\s*(?::[^=\n]*)?=", source, re.MULTILINE)
    if match is None:
        raise ConfigError(f"{path} has no {name} = ...; this Ultralytics is not one slurm-yolo can read "
                          f"(pin a supported version)")
    lines = source[match.start():].splitlines()
    for end in range(1, min(len(lines), 200) + 1):
        try:
            tree = ast.parse("\n".join(lines[:end]))
        except SyntaxError:
            continue
        node = tree.body[0]
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        try:
            if value is None:
                raise ValueError(f"{name} is not assigned a value")
            return ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError) as e:
            raise ConfigError(f"{path}: {name} is not a literal slurm-yolo can read without running "
                              f"Ultralytics; pin a supported version") from e
    raise ConfigError(f"{path}: cannot parse the assignment {name} = ...; pin a supported Ultralytics")


def metric_field(column: str) -> str | None:
    """The stable field name of a ``results.csv`` column; ``None`` for a non-``metrics/`` column.

    ``metrics/mAP50-95(B)`` -> ``map50_95``, ``metrics/mAP50(M)`` -> ``map50_mask``,
    ``metrics/recall(P)`` -> ``recall_pose``, ``metrics/accuracy_top1`` -> ``top1``,
    ``metrics/mIoU`` -> ``miou``, ``metrics/delta1`` -> ``delta1``. A column this does not know
    is lowercased with every run of other characters as ``_``, so a future one gets a name too.
    """
    column = column.strip()
    match = _COLUMN_RE.fullmatch(column)
    if match is None:
        return None
    base, metric_set = match["base"], match["set"]
    name = _BASE_NAMES.get(base) or _slug(base)
    suffix = "" if metric_set is None else _SET_SUFFIX.get(metric_set.upper(), "_" + _slug(metric_set))
    return (name + suffix) if name else None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# Ultralytics' own name suffixes, in the order guess_model_task tries them ("-sem" before
# "-seg": "yolo26n-sem" would otherwise never be told from a segment model).
_NAME_SUFFIX_TASKS = (("-sem", "semantic"), ("-seg", "segment"), ("-cls", "classify"), ("-pose", "pose"),
                      ("-obb", "obb"), ("-depth", "depth"))
MODEL_SUFFIXES = (".yaml", ".yml")
# yaml_model_load's two renames: the P6 models' old names, then the scale letter dropped.
_P6_RE = re.compile(r"^yolov[58][nsmlx]6$")
_SCALE_RE = re.compile(r"(\d+)([nslmx])(.+)?$")


def models_dir() -> Path | None:
    """The installed Ultralytics' model yaml folder (``cfg/models``); ``None`` without Ultralytics."""
    root = ultralytics_dir()
    return None if root is None else root / "cfg" / "models"


def model_yaml_names() -> list[str]:
    """The file names of every model yaml the installed Ultralytics ships, sorted."""
    folder = models_dir()
    if folder is None:
        return []
    return sorted(p.name for p in folder.rglob("*") if p.suffix in MODEL_SUFFIXES)


def find_model_yaml(name: str) -> Path | None:
    """The installed model yaml that Ultralytics builds ``name`` (e.g. ``yolo11s-pose.yaml``) from.

    Looks only under ``cfg/models/``: a name Ultralytics would have to download is not a
    model this offline cluster can build. ``None`` when there is none (or no Ultralytics).
    """
    folder = models_dir()
    if folder is None or "/" in name or os.sep in name:
        return None
    path = Path(name)
    if _P6_RE.match(path.stem):
        path = path.with_name(re.sub(r"(\d+)([nslmx])6(.+)?$", r"\1\2-p6\3", path.stem) + path.suffix)
    for candidate in (path.name, _SCALE_RE.sub(r"\1\3", path.name)):
        found = sorted(folder.rglob(candidate))
        if found:
            return found[0]
    return None


def model_task(model: str | Path, yaml_file: str | Path | None = None) -> str | None:
    """The task a model trains, told without torch; ``None`` when it cannot be told.

    Args:
        model: the ``train.model`` value (a yaml name or path, or a ``.pt`` path).
        yaml_file: the model yaml to read (the resolved file for a yaml model); its output
            module names the task, as Ultralytics' ``cfg2task`` reads it.

    A ``.pt`` is told only by a task suffix in its name (``yolo11n-cls.pt``): a plain
    ``best.pt`` could be any task, and reading it would need torch.
    """
    if yaml_file is not None:
        task = _yaml_head_task(Path(yaml_file))
        if task is not None:
            return task
    stem = Path(model).stem
    for suffix, task in _NAME_SUFFIX_TASKS:
        if suffix in stem:
            return task
    return DEFAULT_TASK if Path(model).suffix in MODEL_SUFFIXES else None


def _yaml_head_task(path: Path) -> str | None:
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        module = str(cfg["head"][-1][-2]).lower()
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return None
    # cfg2task's rules, in its order.
    if module in {"classify", "classifier", "cls", "fc"}:
        return "classify"
    for word, task in (("detect", "detect"), ("semanticsegment", "semantic"), ("segment", "segment"),
                       ("pose", "pose"), ("obb", "obb"), ("depth", "depth")):
        if word in module:
            return task
    return None
