"""Config loading and every bad-input case: a one-line ConfigError (exit code 2)."""

from __future__ import annotations


import pytest
import yaml

from slurm_yolo.config import apply_overrides, load_config
from slurm_yolo.timeparse import duration_seconds, time_minutes
from slurm_yolo.errors import ConfigError

GOOD = {
    "run": {"task": "detect", "project": "pcb-inspection", "model_name": "yolov8s"},
    "train": {"model": "yolov8s.yaml", "data": "data.yaml", "epochs": 5, "imgsz": 64, "lr0": 0.01},
    "slurm": {"partition": "gpu", "gpus": 1, "cpus_per_task": 4, "mem": "8G", "time": "02:00:00"},
    "archive": {"url": "s3://bucket/runs/{user}/yolo", "sync_every": "5m"},
    "runs_root": "runs",
}


@pytest.fixture
def cfg_dir(tmp_path):
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: a}\n")
    return tmp_path


def write(dirpath, data) -> str:
    p = dirpath / "exp.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(p)


def with_change(section, key, value):
    import copy

    d = copy.deepcopy(GOOD)
    if key is None:
        d[section] = value
    else:
        d[section][key] = value
    return d


def test_good_config_resolves_paths_and_defaults(cfg_dir):
    c = load_config(write(cfg_dir, GOOD), cwd=cfg_dir)
    assert c.train["data"] == str(cfg_dir / "data.yaml")
    assert c.runs_root == (cfg_dir / "runs").resolve()
    assert c.slurm["max_requeues"] == 3 and c.slurm["extra"] == {}
    assert c.run["dataset_version"] is None
    assert c.archive["endpoint_url"] is None


def test_overrides_are_yaml_typed(cfg_dir):
    c = load_config(write(cfg_dir, GOOD), ["train.epochs=50", "slurm.gpus=2", "train.lr0=1e-3",
                                            "slurm.extra.constraint=a100"], cwd=cfg_dir)
    assert c.train["epochs"] == 50 and c.slurm["gpus"] == 2 and c.train["lr0"] == 0.001
    assert c.slurm["extra"] == {"constraint": "a100"}


@pytest.mark.parametrize("data, fragment", [
    ("run: [unclosed\n", "not valid YAML at line"),
    ("- a\n- b\n", "must be a YAML mapping"),
    (with_change("run", "projct", "x"), "unknown key run.projct (did you mean 'project'?)"),
    (with_change("slurm", "gpu", 1), "did you mean 'gpus'"),
    (with_change("train", "lr", 0.1), "unknown Ultralytics argument train.lr (did you mean"),
    (with_change("train", "device", 0), "train.device is set by slurm-yolo"),
    (with_change("slurm", "gpus", "two"), "slurm.gpus must be int, got str"),
    (with_change("slurm", "gpus", True), "slurm.gpus must be int, got bool"),
    (with_change("slurm", "gpus", -1), "slurm.gpus must be >= 0"),
    (with_change("slurm", "mem", "lots"), "slurm.mem='lots'"),
    (with_change("slurm", "time", "tomorrow"), "slurm.time='tomorrow'"),
    (with_change("slurm", "partition", "gpu;rm -rf"), "has characters Slurm names cannot have"),
    (with_change("slurm", "extra", {"Bad Key": 1}), "slurm.extra key"),
    (with_change("train", "data", "nope/data.yaml"), "train.data=nope/data.yaml does not exist"),
    (with_change("train", "model", 5), "train.model must be a path or name (e.g. yolov8s.yaml or a .pt file), got int"),
    (with_change("train", "model", None), "train.model (e.g. yolov8s.yaml or a .pt file) is required"),
    (with_change("train", "data", ["a.yaml"]), "train.data must be a path or name"),
    (with_change("run", "project", "a/b"), "run.project='a/b' is not a valid name"),
    (with_change("run", "project", ".."), "is not a valid name"),
    (with_change("run", "model_name", "x\ny"), "is not a valid name"),
    (with_change("run", "task", "detec"), "run.task='detec' is not one of"),
    (with_change("archive", "url", "/local/path"), "must be an s3://bucket/prefix URL"),
    (with_change("archive", "url", "s3://b/{project}"), "may only use the placeholder {user}"),
    (with_change("archive", "sync_every", "soon"), "archive.sync_every='soon'"),
    (with_change("archive", "url", None), "archive.url is required"),
    (with_change("bogus", None, {}), "unknown section 'bogus'"),
    (with_change("train", None, None), "section 'train'"),
])
def test_bad_configs_are_one_line_errors(cfg_dir, data, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(write(cfg_dir, data), cwd=cfg_dir)
    msg = str(e.value)
    assert fragment in msg
    assert "\n" not in msg
    assert e.value.exit_code == 2


def test_unreadable_config(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("item", ["noequals", "=3", "train.epochs.x=1"])
def test_bad_overrides(cfg_dir, item):
    with pytest.raises(ConfigError):
        load_config(write(cfg_dir, GOOD), [item], cwd=cfg_dir)


def test_apply_overrides_creates_sections():
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize("text, minutes", [
    ("30", 30), ("24:00:00", 1440), ("1-00:00:00", 1440), ("2-12", 3600), ("0:30", 1), ("01:00:01", 61),
    (45, 45), ("1-02:03", 1563),
])
def test_time_minutes(text, minutes):
    assert time_minutes(text) == minutes


@pytest.mark.parametrize("text, seconds", [("10m", 600), ("30s", 30), ("1.5h", 5400), (90, 90), ("2d", 172800)])
def test_durations(text, seconds):
    assert duration_seconds(text, "x") == seconds


def test_shipped_configs_are_valid(tmp_path, monkeypatch):
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    for name in ("pcb", "demo"):
        raw = yaml.safe_load((root / "configs" / f"{name}.yaml").read_text())
        (tmp_path / raw["train"]["data"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / raw["train"]["data"]).write_text("names: {0: a}\n")
        c = load_config(root / "configs" / f"{name}.yaml", cwd=tmp_path)
        assert c.run["project"]
