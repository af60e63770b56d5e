"""The sbatch parameters and batch script produced for a config (golden files)."""

from __future__ import annotations

import json
import os
from pathlib import Path


from slurm_yolo.config import resolve_config
from slurm_yolo.launcher.slurm_params import MARKER_PREFIX, batch_script, make_marker, slurm_parameters

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden"
RAW = {
    "run": {"task": "detect", "project": "pcb-inspection", "model_name": "yolov8s"},
    "train": {"model": "yolov8s.yaml", "data": "/data/pcb/data.yaml", "epochs": 100},
    "slurm": {"partition": "gpu", "gpus": 2, "cpus_per_task": 8, "mem": "32g", "time": "1-00:00:00",
              "account": "vision", "qos": "high", "extra": {"constraint": "a100", "mail_type": "END"},
              "signal_delay_s": 120},
    "archive": {"url": "s3://ai-training-logs/runs/{user}/yolo"},
    "runs_root": "/shared/runs",
}


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with UPDATE_GOLDEN=1 if intended"


def test_parameters_golden():
    config = resolve_config(RAW, check_paths=False)
    params = slurm_parameters(config, job_name="yolo-RUN", marker=make_marker("/shared/runs/RUN"))
    _check_golden("slurm_params.json", json.dumps(params, indent=2, sort_keys=True) + "\n")


def test_batch_script_golden():
    config = resolve_config(RAW, check_paths=False)
    params = slurm_parameters(config, job_name="yolo-RUN", marker=make_marker("/shared/runs/RUN"))
    script = batch_script(params, python="/opt/slurm-yolo/venv/bin/python", folder="/shared/runs/RUN/slurm")
    _check_golden("batch_script.sh", script)
    assert "#SBATCH --comment=slurm-yolo:v1:/shared/runs/RUN" in script
    assert "#SBATCH --gpus-per-node=2" in script and "#SBATCH --requeue" in script
    assert "#SBATCH --signal=USR2@120" in script and "#SBATCH --time=1440" in script


def test_no_gpu_means_no_gpu_flag():
    raw = {**RAW, "slurm": {**RAW["slurm"], "gpus": 0, "account": None, "qos": None, "partition": None}}
    params = slurm_parameters(resolve_config(raw, check_paths=False), job_name="j", marker=make_marker("/r"))
    assert "gpus_per_node" not in params and "account" not in params and "partition" not in params


def test_marker_with_weird_path_is_quoted_in_script(weird_path):
    config = resolve_config(RAW, check_paths=False)
    run_dir = str(weird_path / "RUN")
    params = slurm_parameters(config, job_name="j", marker=make_marker(run_dir))
    script = batch_script(params, python="/usr/bin/python3", folder=run_dir + "/slurm")
    import shlex

    line = next(x for x in script.splitlines() if x.startswith("#SBATCH --comment="))
    assert shlex.split(line.split("=", 1)[1]) == [MARKER_PREFIX + run_dir]


def test_multi_node_job_shape():
    raw = {**RAW, "slurm": {**RAW["slurm"], "nodes": 3}}
    params = slurm_parameters(resolve_config(raw, check_paths=False), job_name="j", marker=make_marker("/r"))
    script = batch_script(params, python="/p", folder="/r/slurm")
    assert "#SBATCH --nodes=3" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "#SBATCH --gpus-per-node=2" in script  # slurm.gpus counts per node
    # one node's task dying must end the step, not leave the others in the rendezvous
    assert "--kill-on-bad-exit=1" in next(line for line in script.splitlines() if line.startswith("srun "))
    single = slurm_parameters(resolve_config(RAW, check_paths=False), job_name="j", marker=make_marker("/r"))
    assert "srun_args" not in single


def test_several_nodes_need_slurm(tmp_path):
    from slurm_yolo.errors import ConfigError
    from slurm_yolo.launcher.submit import check_executor_fits

    config = resolve_config({**RAW, "slurm": {**RAW["slurm"], "nodes": 2}}, check_paths=False)
    check_executor_fits(config, "slurm")
    try:
        check_executor_fits(config, "local")
    except ConfigError as e:
        assert "slurm.nodes=2 needs Slurm" in str(e)
    else:
        raise AssertionError("a 2-node run was accepted for --executor local")
