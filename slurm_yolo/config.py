"""Experiment configs: load YAML, apply ``--set`` overrides, validate, resolve.

One YAML file per experiment::

    run:     {task: detect, project: pcb-inspection, model_name: yolov8s}
    train:   {model: yolov8s.yaml, data: datasets/pcb/data.yaml, epochs: 100, ...}
    slurm:   {partition: gpu, gpus: 1, cpus_per_task: 8, mem: 32G, time: "24:00:00", ...}
    archive: {url: "s3://ai-training-logs/{user}/yolo", endpoint_url: null, sync_every: 10m}
    runs_root: ./runs

Validation is strict because a typo in a config otherwise costs a GPU-day: unknown keys
(with a did-you-mean), wrong types, a missing dataset, unsafe names and a non-``s3://``
destination are all :class:`~slurm_yolo.errors.ConfigError` (exit code 2), raised before
anything is created or submitted. This module never imports torch or ultralytics.

What the installed Ultralytics trains decides what is accepted (:mod:`slurm_yolo.tasks`):
``run.task`` is one of its tasks; ``train.data`` is the dataset's ``data.yaml``, except for
``classify``, whose dataset is a folder of class folders (``train/<class>/``,
``val/<class>/``); ``train.model`` is a model yaml Ultralytics ships (any scale:
``yolo11s-seg.yaml``) or a local file, never a name that would be downloaded, and it must
train the run's task when its name or yaml says which.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from slurm_yolo.errors import ConfigError
from slurm_yolo.names import validate_name
from slurm_yolo.tasks import (
    DEFAULT_TASK, MODEL_SUFFIXES, TaskTable, find_model_yaml, installed_tasks, model_task, model_yaml_names,
    ultralytics_dir,
)
from slurm_yolo.timeparse import duration_seconds, time_minutes

# Schema: section -> key -> (accepted types, default). ``None`` in the types means "may be null".
_STR, _INT, _NUM = (str,), (int,), (int, float)
SCHEMA: dict[str, dict[str, tuple[tuple, Any]]] = {
    "run": {
        "task": (_STR, DEFAULT_TASK),
        "project": (_STR, None),
        "model_name": (_STR, None),
        "dataset_version": (_STR + (type(None),), None),
        "notes": (_STR + (type(None),), None),
    },
    "slurm": {
        "partition": (_STR + (type(None),), None),
        "nodes": (_INT, 1),
        "gpus": (_INT, 0),
        "cpus_per_task": (_INT, 1),
        "mem": (_STR + _INT, "4G"),
        "time": (_STR + _INT, "01:00:00"),
        "account": (_STR + (type(None),), None),
        "qos": (_STR + (type(None),), None),
        "extra": ((dict,), {}),
        "signal_delay_s": (_INT, 120),
        "max_requeues": (_INT, 3),
    },
    "archive": {
        "url": (_STR, None),
        "endpoint_url": (_STR + (type(None),), None),
        "sync_every": (_STR + _INT + (type(None),), "10m"),
        "sync_every_epochs": (_INT + (type(None),), None),
    },
}
TOP_LEVEL = {"run", "train", "slurm", "archive", "runs_root"}
REQUIRED = [("run", "project"), ("run", "model_name"), ("train", "model"), ("train", "data"), ("archive", "url")]
# Ultralytics arguments slurm-yolo owns: the run folder, the device list and resuming.
RESERVED_TRAIN_KEYS = {"project", "name", "exist_ok", "resume", "device", "mode"}
# A classify dataset's splits, as Ultralytics' check_cls_dataset looks for them.
CLASSIFY_VAL_SPLITS = ("val", "validation", "valid", "test")

_MEM_RE = re.compile(r"\d+[KMGT]?", re.IGNORECASE)
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass(frozen=True)
class Config:
    """A validated, fully resolved experiment config.

    Attributes:
        data: the resolved config as plain data (absolute paths, defaults filled in);
            this is what ``run.json`` records and what ``reproduce`` resubmits.
        source: the YAML file it came from (``None`` for configs built in code).
        code_dir: where to read the code version from (default: the source's folder, else
            the current directory); ``reproduce`` points it at the archived commit's checkout.
    """

    data: Mapping[str, Any]
    source: str | None = None
    code_dir: str | None = None

    @property
    def run(self) -> Mapping[str, Any]:
        """``run:`` — task, project, model_name, dataset_version (the store layout)."""
        return self.data["run"]

    @property
    def train(self) -> Mapping[str, Any]:
        """``train:`` — Ultralytics training arguments, paths resolved."""
        return self.data["train"]

    @property
    def slurm(self) -> Mapping[str, Any]:
        """``slurm:`` — resources and requeue settings, defaults filled in."""
        return self.data["slurm"]

    @property
    def archive(self) -> Mapping[str, Any]:
        """``archive:`` — destination URL, endpoint, in-training sync interval."""
        return self.data["archive"]

    @property
    def runs_root(self) -> Path:
        return Path(self.data["runs_root"])

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the resolved config, safe to mutate."""
        return copy.deepcopy(dict(self.data))


def load_config(path: str | os.PathLike, overrides: list[str] = (), cwd: str | os.PathLike | None = None) -> Config:
    """Load, override, validate and resolve a config file.

    Args:
        path: the YAML file.
        overrides: ``key.sub=value`` strings; values are parsed as YAML (``3`` is an int).
        cwd: base for relative paths (default: the current directory), as Ultralytics does.

    Raises:
        ConfigError: with a one-line message naming the file, key and fix.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}; check the path") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"config {path} is not valid YAML{at}: {getattr(e, 'problem', e)}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a YAML mapping with sections run/train/slurm/archive")
    return resolve_config(raw, overrides, cwd=cwd, source=str(path))


def apply_overrides(raw: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``key.sub=value`` overrides applied (values parsed as YAML)."""
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=50")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML") from e
        if isinstance(parsed, str) and _FLOAT_RE.fullmatch(parsed):
            parsed = float(parsed)  # YAML 1.1 reads "1e-3" as a string; nobody means that
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = parsed
    return out


def resolve_config(
    raw: Mapping[str, Any],
    overrides: list[str] = (),
    *,
    cwd: str | os.PathLike | None = None,
    source: str | None = None,
    check_paths: bool = True,
) -> Config:
    """Validate a config mapping and return the resolved :class:`Config`.

    Args:
        raw: the parsed YAML.
        overrides: ``--set`` strings applied first.
        cwd: base for relative paths.
        source: the file name, for messages.
        check_paths: check that ``train.data`` exists (off when re-reading an archived config).
    """
    where = f"config {source}" if source else "config"
    data = apply_overrides(raw, list(overrides))
    base = Path(cwd or os.getcwd())

    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{where}: unknown section {key!r}{_did_you_mean(key, TOP_LEVEL)}")
    out: dict[str, Any] = {}
    for section, fields in SCHEMA.items():
        given = data.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"{where}: section {section!r} must be a mapping, got {type(given).__name__}")
        for key in given:
            if key not in fields:
                raise ConfigError(f"{where}: unknown key {section}.{key}{_did_you_mean(key, fields)}")
        sec = {}
        for key, (types, default) in fields.items():
            value = given.get(key, copy.deepcopy(default))
            if value is None and (section, key) not in REQUIRED:
                sec[key] = None
                continue
            if value is None or isinstance(value, bool) and bool not in types or not isinstance(value, types):
                if value is None:
                    raise ConfigError(f"{where}: {section}.{key} is required")
                want = " or ".join(t.__name__ for t in types if t is not type(None))
                raise ConfigError(f"{where}: {section}.{key} must be {want}, got {type(value).__name__} {value!r}")
            sec[key] = value
        out[section] = sec

    train = data.get("train")
    if not isinstance(train, dict):
        raise ConfigError(f"{where}: section 'train' (Ultralytics arguments: model, data, epochs, ...) is required")
    run = out["run"]
    validate_name(run["task"], "run.task")
    # Without the paths (an archived config read back) Ultralytics may be absent: the task
    # was checked when the run was submitted.
    table = installed_tasks() if check_paths or ultralytics_dir() is not None else None
    if table is not None:
        _check_task(run["task"], table, where)
    out["train"] = _check_train(dict(train), where, base, check_paths, run["task"], table)
    out["runs_root"] = str((base / str(data.get("runs_root") or "./runs")).resolve())
    for section, key in REQUIRED:
        if out[section].get(key) in (None, ""):
            raise ConfigError(f"{where}: {section}.{key} is required")

    for key in ("project", "model_name"):
        validate_name(run[key], f"run.{key}")
    _check_slurm(out["slurm"], where)
    _check_archive(out["archive"], where)
    return Config(data=out, source=source)


def _check_task(task: str, table: TaskTable, where: str) -> None:
    if task not in table.tasks:
        raise ConfigError(f"{where}: run.task={task!r} is not one of the tasks Ultralytics "
                          f"{table.ultralytics_version} trains: {', '.join(table.tasks)}"
                          f"{_did_you_mean(task, table.tasks, known=False)}")


def _check_train(train: dict[str, Any], where: str, base: Path, check_paths: bool, task: str,
                 table: TaskTable | None) -> dict[str, Any]:
    known = ultralytics_train_defaults()
    for key, value in train.items():
        if key in RESERVED_TRAIN_KEYS:
            raise ConfigError(f"{where}: train.{key} is set by slurm-yolo (run folder, GPUs, resume); remove it")
        if known is None:
            continue
        if key not in known:
            raise ConfigError(f"{where}: unknown Ultralytics argument train.{key}{_did_you_mean(key, known)}")
        default = known[key]
        # Numbers must be numbers (Ultralytics would fail only once the job runs on a GPU node).
        if isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float, list))):
            raise ConfigError(f"{where}: train.{key} must be a number, got {type(value).__name__} {value!r}")
    data_what = "the dataset folder" if task == "classify" else "the dataset's data.yaml"
    for key, what in (("data", data_what), ("model", "e.g. yolov8s.yaml or a .pt file")):
        value = train.get(key)
        if value is None or value == "":
            raise ConfigError(f"{where}: train.{key} ({what}) is required")
        if not isinstance(value, str):
            raise ConfigError(f"{where}: train.{key} must be a path or name ({what}), got "
                              f"{type(value).__name__} {value!r}")
    data_path = (base / train["data"]).resolve()
    if check_paths:
        if task == "classify":
            _check_classify_folder(train["data"], data_path, where)
        else:
            _check_data_yaml(train["data"], data_path, task, where)
    train["data"] = str(data_path)
    train["model"] = _check_model(train["model"], base, where, task, table, check_paths)
    return train


def _synthetic_hint(path: Path, task: str) -> str:
    if task == DEFAULT_TASK:
        return f"python -m slurm_yolo.synthetic {path}{' --preset demo' if path.name == 'demo' else ''}"
    return f"python -m slurm_yolo.synthetic {path} --task {task}"


def _check_data_yaml(data: str, data_path: Path, task: str, where: str) -> None:
    if data_path.is_file():
        return
    if data_path.is_dir():
        inside = data_path / "data.yaml"
        fix = f"did you mean {inside}?" if inside.is_file() else "give the data.yaml inside it"
        raise ConfigError(f"{where}: train.data={data} is a folder ({data_path}); a {task} dataset is given by "
                          f"its data.yaml file (only classify takes a folder): {fix}")
    raise ConfigError(f"{where}: train.data={data} does not exist ({data_path}); fix the path, or generate the "
                      f"example dataset: {_synthetic_hint(data_path.parent, task)}")


def _check_classify_folder(data: str, folder: Path, where: str) -> None:
    """A classify dataset as Ultralytics reads it: ``train/<class>/`` and a val (or test) split alike."""
    layout = "a classify dataset is a folder holding train/<class>/ and val/<class>/ (or test/<class>/) image folders"
    if not folder.exists():
        raise ConfigError(f"{where}: train.data={data} does not exist ({folder}); {layout}; fix the path, or "
                          f"generate the example dataset: {_synthetic_hint(folder, 'classify')}")
    if not folder.is_dir():
        raise ConfigError(f"{where}: train.data={data} is a file ({folder}); {layout}, not a data.yaml: "
                          f"give that folder")
    if not (folder / "train").is_dir():
        raise ConfigError(f"{where}: train.data={data} has no train/ folder ({folder / 'train'}); {layout}")
    if not _class_folders(folder / "train"):
        raise ConfigError(f"{where}: train.data={data}: {folder / 'train'} has no class folders; {layout}")
    splits = [folder / s for s in CLASSIFY_VAL_SPLITS if (folder / s).is_dir()]
    if not splits:
        raise ConfigError(f"{where}: train.data={data} has no val/ (or test/) folder in {folder}; {layout}")
    if not _class_folders(splits[0]):
        raise ConfigError(f"{where}: train.data={data}: {splits[0]} has no class folders; {layout}")


def _class_folders(split: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(split) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def _check_model(model: str, base: Path, where: str, task: str, table: TaskTable | None,
                 check_paths: bool) -> str:
    """The model to train from: a local file (made absolute) or a model yaml Ultralytics ships."""
    local = base / model
    suffix = Path(model).suffix.lower()
    if not check_paths:
        return str(local.resolve()) if local.exists() else model
    if local.is_file():
        if not os.access(local, os.R_OK):
            raise ConfigError(f"{where}: train.model={model} ({local.resolve()}) is not readable; fix its permissions")
        if suffix not in MODEL_SUFFIXES + (".pt",):
            raise ConfigError(f"{where}: train.model={model} must be a model yaml (e.g. yolo11n.yaml) or a .pt "
                              f"checkpoint to train from, not a {suffix or 'suffix-less'} file")
        resolved: str = str(local.resolve())
        yaml_file: Path | None = local if suffix in MODEL_SUFFIXES else None
    elif local.exists():
        raise ConfigError(f"{where}: train.model={model} is a folder ({local.resolve()}); give a model yaml "
                          f"or a .pt file")
    elif suffix == ".pt":
        raise ConfigError(f"{where}: train.model={model} is not a local file ({local.resolve()}), and slurm-yolo "
                          f"does not download weights (compute nodes are offline): build from a model yaml "
                          f"(train.model={Path(model).stem}.yaml), or give the path of a .pt you have")
    elif suffix in MODEL_SUFFIXES:
        found = find_model_yaml(model)
        if found is None:
            version = table.ultralytics_version if table else "(not installed)"
            raise ConfigError(f"{where}: train.model={model} is neither a local file nor a model yaml that "
                              f"Ultralytics {version} ships (looked under its cfg/models/)"
                              f"{_did_you_mean(model, model_yaml_names(), known=False)}; give a path, or a "
                              f"name like yolov8n.yaml, yolo11s-seg.yaml, yolo26n-cls.yaml")
        resolved, yaml_file = model, found  # Ultralytics resolves the name itself, on the node
    else:
        raise ConfigError(f"{where}: train.model={model} must be a model yaml (e.g. yolo11n.yaml) or a .pt "
                          f"checkpoint to train from")
    trains = model_task(model, yaml_file)
    if trains is not None and trains != task:
        raise ConfigError(f"{where}: train.model={model} trains {trains}, but run.task={task}; set run.task: "
                          f"{trains}, or pick a {task} model{_model_example(task)}")
    return resolved


def _model_example(task: str) -> str:
    suffix = {"detect": "", "segment": "-seg", "classify": "-cls", "pose": "-pose", "obb": "-obb",
              "semantic": "-sem", "depth": "-depth"}.get(task)
    if suffix is None:
        return ""
    family = "yolo26n" if task in ("semantic", "depth") else "yolo11n"
    return f" (e.g. {family}{suffix}.yaml)"


def _check_slurm(slurm: dict[str, Any], where: str) -> None:
    if slurm["gpus"] < 0 or slurm["cpus_per_task"] < 1:
        raise ConfigError(f"{where}: slurm.gpus must be >= 0 and slurm.cpus_per_task >= 1")
    if slurm["nodes"] < 1:
        raise ConfigError(f"{where}: slurm.nodes={slurm['nodes']} must be >= 1 (slurm.gpus counts GPUs per node)")
    # One srun task per node is how multi-node training starts: an sbatch option of the same
    # name in `extra` would silently change that shape.
    clash = {"nodes", "ntasks", "ntasks-per-node", "ntasks_per_node"} & set(slurm["extra"])
    if clash:
        raise ConfigError(f"{where}: slurm.extra.{sorted(clash)[0]} is set by slurm-yolo; use slurm.nodes")
    if slurm["max_requeues"] < 0 or slurm["signal_delay_s"] < 0:
        raise ConfigError(f"{where}: slurm.max_requeues and slurm.signal_delay_s must be >= 0")
    mem = str(slurm["mem"])
    if not _MEM_RE.fullmatch(mem):
        raise ConfigError(f"{where}: slurm.mem={mem!r} must look like 32G, 500M or a number of MB")
    slurm["mem"] = mem.upper()
    time_minutes(slurm["time"], where)
    for k, v in slurm["extra"].items():
        if not isinstance(k, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*", k):
            raise ConfigError(f"{where}: slurm.extra key {k!r} must be an sbatch option name like 'constraint'")
        if not isinstance(v, (str, int, float, bool)) or "\n" in str(v):
            raise ConfigError(f"{where}: slurm.extra.{k} must be a single-line scalar")
    for k in ("partition", "account", "qos"):
        if slurm[k] is not None and not re.fullmatch(r"[A-Za-z0-9._,-]+", slurm[k]):
            raise ConfigError(f"{where}: slurm.{k}={slurm[k]!r} has characters Slurm names cannot have")


def _check_archive(archive: dict[str, Any], where: str) -> None:
    url = archive["url"]
    if not url.startswith("s3://") or len(url) <= 5 or any(ord(c) < 32 for c in url) or "/../" in url + "/":
        raise ConfigError(f"{where}: archive.url={url!r} must be an s3://bucket/prefix URL")
    unknown = set(re.findall(r"{([^}]*)}", url)) - {"user"}
    if unknown:
        raise ConfigError(f"{where}: archive.url may only use the placeholder {{user}}, not {sorted(unknown)}")
    if archive["endpoint_url"] and not re.match(r"https?://", archive["endpoint_url"]):
        raise ConfigError(f"{where}: archive.endpoint_url must start with http:// or https://")
    if archive["sync_every"] is not None:
        duration_seconds(archive["sync_every"], "archive.sync_every")


def ultralytics_train_defaults() -> dict[str, Any] | None:
    """The arguments Ultralytics accepts and their defaults, from its ``cfg/default.yaml``.

    Read as a data file next to the installed package, without importing ultralytics (which
    would import torch and make the CLI slow). ``None`` when ultralytics is not installed on
    this (login) node: then train keys are passed through unchecked.
    """
    root = ultralytics_dir()
    if root is None:
        return None
    default = root / "cfg" / "default.yaml"
    try:
        # libyaml's loader where PyYAML has it: ~10x faster on this 100-key file, read by every submit.
        data = yaml.load(default.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _did_you_mean(key: str, choices, known: bool = True) -> str:
    close = difflib.get_close_matches(str(key), sorted(choices), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; known: {', '.join(sorted(choices)[:12])}" if known else ""
