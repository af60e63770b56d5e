#!/bin/sh
# slurm-yolo node epilog shim. Point slurm.conf's Epilog= at this file (or drop it into
# an epilog.d/ directory matched by Epilog=/etc/slurm/epilog.d/*).
# slurmd runs it as root with no PATH: every path below is absolute. Edit these two lines
# for your installation (scripts/dev-cluster.sh rewrites them for the dev cluster).
PYTHON=/opt/slurm-yolo/venv/bin/python
SITE_CONFIG=/etc/slurm-yolo/site.yaml

# The no-op path: most jobs on a cluster are not ours, so decide without starting Python.
case "$SLURM_JOB_COMMENT" in
  slurm-yolo:v1:*) ;;
  *) exit 0 ;;
esac
# -I: isolated mode. A PYTHONPATH, PYTHONSTARTUP, user site-packages or sitecustomize that
# the job's user planted has no effect on this root process.
SLURM_YOLO_SITE_CONFIG=$SITE_CONFIG
export SLURM_YOLO_SITE_CONFIG
"$PYTHON" -I -m slurm_yolo.epilog.main </dev/null >/dev/null 2>&1
exit 0
