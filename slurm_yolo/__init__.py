"""slurm-yolo: launch Ultralytics YOLO training on Slurm, archive every run to S3.

The Python API for notebooks::

    import slurm_yolo
    runs = slurm_yolo.sweep("configs/pcb.yaml", grid={"train.lr0": [0.01, 0.001]})
    [r.run_id for r in runs], [r.job_id for r in runs]

Importing this package is cheap: nothing here imports torch, ultralytics or submitit. The
functions import what they need when called, because every ``slurm_yolo.*`` import (the
epilog's no-op path after every job on the cluster included) runs this file first.
"""

from __future__ import annotations

__version__ = "0.1.0"


def sweep(config, grid=None, **kwargs):
    """Submit a sweep as one Slurm job array; see :func:`slurm_yolo.launcher.submit.sweep`."""
    from slurm_yolo.job.train import TrainJob
    from slurm_yolo.launcher.submit import sweep as _sweep

    return _sweep(config, grid, **{"job": TrainJob(), **kwargs})


def submit(config, overrides=(), **kwargs):
    """Load ``config`` (a path) with ``overrides`` and submit one run; returns a ``RunHandle``.

    See :func:`slurm_yolo.launcher.submit.submit` for the keyword arguments.
    """
    from slurm_yolo.config import load_config
    from slurm_yolo.job.train import TrainJob
    from slurm_yolo.launcher.submit import submit as _submit

    return _submit(load_config(config, list(overrides)), **{"job": TrainJob(), **kwargs})
