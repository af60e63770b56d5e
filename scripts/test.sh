#!/usr/bin/env bash
# Set-up command 2: install everything, start the dev cluster (with 3 namespace nodes) + S3 server, and run
# the whole test suite (unit, catalog, and the real-cluster integration tests) on Slurm 22.05,
# and start the Slurm 24.11 dev cluster beside it and run the end-state tests (-m endstate) there.
# The stages run side by side, each into its own log; the logs are printed in full at the end.
#   bash scripts/test.sh [pytest args...]      e.g. bash scripts/test.sh -m "not training"
set -euo pipefail
# No test reads standard input; CI runs this with none, and a closed descriptor 0 would be
# inherited by every server and daemon the tests start (scripts/dev-cluster.sh says why that breaks).
exec </dev/null
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SLURM_YOLO_VENV:-/opt/slurm-yolo/venv}
cd "$here"
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
# Three namespace nodes (partition multi) besides the host's own: the node-failure and
# multi-node tests crash and revive them.
bring_up --nodes 3
rc=0
# The stages run side by side, each into its own log, printed in full at the end (the exit code
# is failed if any stage failed): the cluster tests on Slurm 22.05, whose jobs mostly sleep or
# wait on Slurm and the store, and beside them the tests that need no cluster (unit, catalog,
# portal: mostly waiting on the S3 servers, the browser and MLflow), then the end-state tests
# on Slurm 24.11. One after the other they took ~19 min on 2 cores.
logs=$(mktemp -d /tmp/slurm-yolo-tests.XXXXXX)
# The core end-state tests against Slurm 24.11 (Debian 13 packages in a debootstrap root,
# cached in /var/cache/slurm-yolo: ~45 s to build on a fresh machine, nothing after).
# Up before any stage starts (nothing runs on either cluster yet): up may (re)start what both
# share. SLURM_YOLO_TEST_2411=0 skips them.
with2411=${SLURM_YOLO_TEST_2411:-1}
[ "$with2411" = 0 ] || bash "$here/scripts/dev-cluster.sh" up --slurm 24.11
# rc_to FILE CMD...: run CMD, write its exit status to FILE (a background stage's verdict).
rc_to() { local f=$1; shift; if "$@"; then echo 0 >"$f"; else echo $? >"$f"; fi; }
# Two pytest-xdist workers: each starts its own S3 servers, browser and MLflow on free ports.
# SLURM_YOLO_TEST_WORKERS=0 runs them in one process. The 24.11 stage follows them rather than
# running beside them: fewer processes at once on 2 cores, and both end before the 22.05 stage.
(
  rc_to "$logs/no-cluster.rc" "$venv/bin/python" -m pytest tests --ignore=tests/cluster -ra --durations=10 \
    -n "${SLURM_YOLO_TEST_WORKERS:-2}" "$@" -p no:cacheprovider >"$logs/no-cluster.log" 2>&1
  [ "$with2411" = 0 ] || SLURM_YOLO_TEST_SLURM=24.11 rc_to "$logs/slurm-24.11.rc" "$venv/bin/python" -m pytest \
    tests/cluster -m endstate -ra --durations=10 -p no:cacheprovider >"$logs/slurm-24.11.log" 2>&1
) &
beside=$!
# Two workers on the 22.05 cluster too: a test holds the clusters shared, and one that changes
# what every job sees (a node crash, the store down, pre-emption) holds them alone
# (tests/cluster/conftest.py). SLURM_YOLO_TEST_CLUSTER_WORKERS=0 runs them in one process.
"$venv/bin/python" -m pytest tests/cluster -ra --durations=15 -n "${SLURM_YOLO_TEST_CLUSTER_WORKERS:-2}" "$@" \
  -p no:cacheprovider >"$logs/slurm-22.05.log" 2>&1 || rc=$?
wait "$beside" || rc=$?
echo "=============== the tests that need no cluster (tests --ignore=tests/cluster) ==============="
cat "$logs/no-cluster.log"
[ "$(cat "$logs/no-cluster.rc" 2>/dev/null)" = 0 ] || rc=1
if [ "$with2411" != 0 ]; then
  echo "=============== Slurm 24.11: the end-state tests (tests/cluster -m endstate) ==============="
  cat "$logs/slurm-24.11.log"
  [ "$(cat "$logs/slurm-24.11.rc" 2>/dev/null)" = 0 ] || rc=1
fi
echo "=============== Slurm 22.05: the cluster tests (tests/cluster) ==============="
cat "$logs/slurm-22.05.log"
if [ "$rc" != 0 ]; then
  # Last in the output, where a CI log's tail shows it: each cluster's node states with the
  # reason Slurm gives, and the last lines of its daemons' and epilog's logs.
  echo "=============== a test failed: the clusters' node states and logs ==============="
  bash "$here/scripts/dev-cluster.sh" logs 15 || true
  [ "$with2411" != 0 ] && { bash "$here/scripts/dev-cluster.sh" --slurm 24.11 logs 40 || true; }
fi
echo "(the stages' logs: $logs)"
exit $rc
