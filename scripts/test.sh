#!/usr/bin/env bash
# Set-up command 2: install everything, start the dev cluster (with 3 namespace nodes) + S3 server, and run
# the whole test suite (unit, catalog, and the real-cluster integration tests) on Slurm 22.05;
# then start the Slurm 24.11 dev cluster beside it and run the end-state tests (-m endstate) there.
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
rc=0
"$venv/bin/python" -m pytest tests -ra --durations=15 "$@" || rc=$?
# Then the core end-state tests against Slurm 24.11 (Debian 13 packages in a debootstrap root,
# cached in /var/cache/slurm-yolo: ~40 s to build on a fresh machine, nothing after; the tests
# ~7 min on 2 cores). SLURM_YOLO_TEST_2411=0 skips this stage.
if [ "${SLURM_YOLO_TEST_2411:-1}" != 0 ]; then
  bash "$here/scripts/dev-cluster.sh" up --slurm 24.11
  SLURM_YOLO_TEST_SLURM=24.11 "$venv/bin/python" -m pytest tests/cluster -m endstate -ra --durations=10 || rc=$?
fi
exit $rc
