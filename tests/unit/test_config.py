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


def test_shipped_configs_are_valid(tmp_path):
    """Every configs/*.yaml loads once its dataset exists where its comment says to generate it."""
    import pathlib

    from slurm_yolo.synthetic import make_task_dataset

    root = pathlib.Path(__file__).resolve().parents[2]
    shipped = sorted((root / "configs").glob("*.yaml"))
    tasks = set()
    for path in shipped:
        raw = yaml.safe_load(path.read_text())
        task = raw["run"]["task"]
        data = tmp_path / raw["train"]["data"]
        if task == "classify":
            make_task_dataset(data, task, n_train=3, n_val=3, size=32)
        elif task != "detect":
            assert make_task_dataset(data.parent, task, n_train=1, n_val=1, size=32) == data
        else:
            data.parent.mkdir(parents=True, exist_ok=True)
            data.write_text("names: {0: a}\n")
        if task != "detect":
            assert f"python -m slurm_yolo.synthetic {raw['train']['data'].removesuffix('/data.yaml')} --task {task}" \
                in path.read_text()
        c = load_config(path, cwd=tmp_path)
        assert c.run["project"] and c.run["task"] == task
        tasks.add(task)
    import ultralytics.cfg

    assert tasks == set(ultralytics.cfg.TASKS), "a demo config per task"


# ---------------------------------------------------------------------------------------
# Every task the installed Ultralytics trains, its dataset layout and its models.

TASK_MODELS = {
    "detect": "yolov8n.yaml", "segment": "yolov8n-seg.yaml", "classify": "yolov8n-cls.yaml",
    "pose": "yolo11n-pose.yaml", "obb": "yolo26n-obb.yaml", "semantic": "yolo26n-sem.yaml",
    "depth": "yolo26n-depth.yaml",
}


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    """A tiny synthetic dataset of every task, in its own layout: task -> what train.data takes."""
    from slurm_yolo.synthetic import make_task_dataset

    root = tmp_path_factory.mktemp("task-data")
    return {task: make_task_dataset(root / task, task, n_train=3, n_val=3, size=32) for task in TASK_MODELS}


def task_config(task, data, model=None, **train):
    d = with_change("run", "task", task)
    d["train"] = {**d["train"], "model": model or TASK_MODELS[task], "data": str(data), **train}
    return d


def test_the_tasks_accepted_are_the_installed_ultralytics_ones():
    import ultralytics.cfg  # the test may import it; the product reads its source

    assert set(TASK_MODELS) == set(ultralytics.cfg.TASKS)


@pytest.mark.parametrize("task", sorted(TASK_MODELS))
def test_every_task_is_accepted_with_its_model_and_dataset(tmp_path, task_data, task):
    c = load_config(write(tmp_path, task_config(task, task_data[task])), cwd=tmp_path)
    assert c.run["task"] == task
    assert c.train["model"] == TASK_MODELS[task]  # a shipped yaml stays a name: Ultralytics resolves it
    assert c.train["data"] == str(task_data[task])


@pytest.mark.parametrize("task, model", [
    ("detect", "yolo11s.yaml"), ("detect", "yolo26m.yaml"), ("segment", "yolo26n-seg.yaml"),
    ("segment", "yolo11l-seg.yaml"), ("classify", "yolo11n-cls.yaml"), ("classify", "yolo26n-cls.yaml"),
    ("pose", "yolov8n-pose.yaml"), ("obb", "yolov8n-obb.yaml"), ("obb", "yolo11n-obb.yaml"),
])
def test_model_families_yolov8_yolo11_yolo26(tmp_path, task_data, task, model):
    assert load_config(write(tmp_path, task_config(task, task_data[task], model)), cwd=tmp_path).train["model"] == model


def test_classify_takes_a_folder_of_class_folders(tmp_path, task_data):
    folder = task_data["classify"]
    assert folder.is_dir() and (folder / "train").is_dir()
    c = load_config(write(tmp_path, task_config("classify", folder.name)), cwd=folder.parent)
    assert c.train["data"] == str(folder)


def _classify_without(tmp_path, task_data, drop):
    import shutil

    folder = tmp_path / "cls"
    shutil.copytree(task_data["classify"], folder)
    for rel in drop:
        target = folder / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return folder


@pytest.mark.parametrize("drop, fragment", [
    (["train"], "has no train/ folder"),
    (["val"], "has no val/ (or test/) folder"),
    (["train/capacitor", "train/resistor", "train/diode"], "/train has no class folders"),
    (["val/capacitor", "val/resistor", "val/diode"], "/val has no class folders"),
])
def test_classify_folder_says_what_is_missing(tmp_path, task_data, drop, fragment):
    folder = _classify_without(tmp_path, task_data, drop)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, task_config("classify", folder)), cwd=tmp_path)
    assert fragment in str(e.value)
    assert "train/<class>/ and val/<class>/ (or test/<class>/)" in str(e.value)


def test_classify_with_a_test_split_instead_of_val_is_accepted(tmp_path, task_data):
    folder = _classify_without(tmp_path, task_data, [])
    (folder / "val").rename(folder / "test")
    assert load_config(write(tmp_path, task_config("classify", folder)), cwd=tmp_path).train["data"] == str(folder)


def test_classify_given_a_file_names_the_layout(tmp_path, cfg_dir):
    with pytest.raises(ConfigError) as e:
        load_config(write(cfg_dir, task_config("classify", "data.yaml")), cwd=cfg_dir)
    msg = str(e.value)
    assert "train.data=data.yaml is a file" in msg and "a classify dataset is a folder holding train/<class>/" in msg


def test_classify_missing_folder_says_how_to_generate_one(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, task_config("classify", "datasets/cls")), cwd=tmp_path)
    assert "does not exist" in str(e.value)
    assert f"python -m slurm_yolo.synthetic {tmp_path / 'datasets' / 'cls'} --task classify" in str(e.value)


def test_a_folder_where_a_data_yaml_is_needed_says_so(tmp_path, task_data):
    folder = task_data["segment"].parent
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, task_config("segment", folder)), cwd=tmp_path)
    msg = str(e.value)
    assert "is a folder" in msg and "does not exist" not in msg
    assert f"did you mean {folder / 'data.yaml'}?" in msg


def test_missing_data_yaml_of_a_task_says_how_to_generate_it(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, task_config("pose", "datasets/pose/data.yaml")), cwd=tmp_path)
    assert f"python -m slurm_yolo.synthetic {tmp_path / 'datasets' / 'pose'} --task pose" in str(e.value)


@pytest.mark.parametrize("task, model, fragment", [
    ("classify", "yolov8n.yaml", "train.model=yolov8n.yaml trains detect, but run.task=classify; set run.task: "
                                 "detect, or pick a classify model (e.g. yolo11n-cls.yaml)"),
    ("detect", "yolov8n-seg.yaml", "trains segment, but run.task=detect"),
    ("segment", "yolo26n-sem.yaml", "trains semantic, but run.task=segment"),
    ("semantic", "yolo26n-seg.yaml", "trains segment, but run.task=semantic; set run.task: segment, or pick a "
                                     "semantic model (e.g. yolo26n-sem.yaml)"),
    ("pose", "yolov8n-obb.yaml", "trains obb, but run.task=pose"),
    ("depth", "yolo26n.yaml", "trains detect, but run.task=depth"),
])
def test_a_model_of_another_task_is_refused(tmp_path, task_data, task, model, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, task_config(task, task_data[task], model)), cwd=tmp_path)
    assert fragment in str(e.value)


def test_unknown_task_names_the_ultralytics_version_and_its_tasks(cfg_dir):
    from slurm_yolo.tasks import installed_tasks

    table = installed_tasks()
    with pytest.raises(ConfigError) as e:
        load_config(write(cfg_dir, with_change("run", "task", "segmnet")), cwd=cfg_dir)
    assert str(e.value) == (f"config {cfg_dir / 'exp.yaml'}: run.task='segmnet' is not one of the tasks Ultralytics "
                            f"{table.ultralytics_version} trains: {', '.join(table.tasks)} (did you mean 'segment'?)")


@pytest.mark.parametrize("model, fragment", [
    ("yolov8q.yaml", "train.model=yolov8q.yaml is neither a local file nor a model yaml that Ultralytics"),
    ("yolov8n-sgm.yaml", "(did you mean 'yolov8-seg.yaml'?)"),
    ("yolov8n.pt", "train.model=yolov8n.pt is not a local file"),
    ("yolov8n.pt", "does not download weights (compute nodes are offline): build from a model yaml "
                   "(train.model=yolov8n.yaml), or give the path of a .pt you have"),
    ("yolov8n", "must be a model yaml (e.g. yolo11n.yaml) or a .pt checkpoint"),
    ("yolov8n.onnx", "must be a model yaml"),
])
def test_unknown_models_are_refused_with_the_offline_fix(cfg_dir, model, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(write(cfg_dir, with_change("train", "model", model)), cwd=cfg_dir)
    assert fragment in str(e.value)


def test_a_local_pt_is_made_absolute(cfg_dir):
    (cfg_dir / "weights").mkdir()
    (cfg_dir / "weights" / "start.pt").write_bytes(b"a checkpoint the launcher never loads")
    c = load_config(write(cfg_dir, with_change("train", "model", "weights/start.pt")), cwd=cfg_dir)
    assert c.train["model"] == str(cfg_dir / "weights" / "start.pt")


def test_a_local_pt_named_for_another_task_is_refused(cfg_dir):
    (cfg_dir / "yolo11n-cls.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="trains classify, but run.task=detect"):
        load_config(write(cfg_dir, with_change("train", "model", "yolo11n-cls.pt")), cwd=cfg_dir)


def test_a_local_model_yaml_is_told_by_its_head(cfg_dir):
    (cfg_dir / "my-net.yaml").write_text("nc: 3\nbackbone: [[-1, 1, Conv, [16, 3, 2]]]\nhead: [[-1, 1, Classify, [3]]]\n")
    with pytest.raises(ConfigError, match="train.model=my-net.yaml trains classify, but run.task=detect"):
        load_config(write(cfg_dir, with_change("train", "model", "my-net.yaml")), cwd=cfg_dir)
