#!/usr/bin/env bash
# Set-up command 2: install everything, start the dev cluster (with 3 namespace nodes) + S3 server, and run
# the whole test suite (unit, catalog, and the real-cluster integration tests).
#   bash scripts/test.sh [pytest args...]      e.g. bash scripts/test.sh -m "not training"
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SLURM_YOLO_VENV:-/opt/slurm-yolo/venv}
cd "$here"
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
# Three namespace nodes (partition multi) besides the host's own: the node-failure and
# multi-node tests crash and revive them.
bring_up --nodes 3
exec "$venv/bin/python" -m pytest tests -ra --durations=15 "$@"
