#!/usr/bin/env bash
# Set-up command 2: install everything, start the one-node dev cluster + S3 server, and run
# the whole test suite (unit, catalog, and the real-cluster integration tests).
#   bash scripts/test.sh [pytest args...]      e.g. bash scripts/test.sh -m "not training"
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SLURM_YOLO_VENV:-/opt/slurm-yolo/venv}
cd "$here"
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
bring_up
exec "$venv/bin/python" -m pytest tests -ra "$@"
