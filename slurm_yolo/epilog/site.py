"""Moved to :mod:`slurm_yolo.site` (temporary alias while other modules move)."""
from slurm_yolo.site import *  # noqa: F401,F403
from slurm_yolo.site import _KEYS, _STORE_KEYS  # noqa: F401
