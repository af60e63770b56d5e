#!/usr/bin/env bash
# Install everything slurm-yolo needs on a fresh Debian 12 machine, as root. Idempotent.
#   - Debian packages: Slurm (slurmctld, slurmd, client), munge, git, chromium + chromium-driver,
#     prometheus + prometheus-node-exporter (the metrics test)
#   - a virtual environment at $SLURM_YOLO_VENV (default /opt/slurm-yolo/venv), made from
#     Debian's /usr/bin/python3 so that non-root job users can execute it (a pyenv Python
#     under /root is not reachable for them)
#   - torch + torchvision (from this machine's wheel cache when present), the package with
#     its [train,test] extras, installed non-editable so the venv works from any checkout
#   - with --slurm 24.11: debootstrap and the cached Debian 13 root with Slurm 24.11
#     (scripts/slurm-root.sh; its build time: docs/admin.md; nothing when cached)
# Usage: scripts/setup.sh [--no-train] [--slurm 24.11]   (--no-train: skip torch/ultralytics)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SLURM_YOLO_VENV:-/opt/slurm-yolo/venv}
train=1
slurm24=0
while [ $# -gt 0 ]; do
  case "$1" in
    --no-train) train=0; shift ;;
    --slurm) case "${2:-}" in 24.11) slurm24=1 ;; 22.05) ;; *) echo "setup.sh: --slurm takes 22.05 or 24.11" >&2; exit 2 ;; esac
             shift 2 ;;
    *) echo "setup.sh: unknown option $1 (usage: setup.sh [--no-train] [--slurm 24.11])" >&2; exit 2 ;;
  esac
done
log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and a system venv)" >&2; exit 2
fi

need_pkgs=()
# chromium + chromium-driver: the portal's browser tests (tests/report) drive Debian's headless Chromium.
# cron: its crontab command, where `slurm-yolo reconcile --user --install` puts the user's reconciler
# when the cluster has no scrontab (tests/cluster/test_user_mode.py).
# prometheus + prometheus-node-exporter: tests/cluster/test_metrics.py starts its own of each on
# loopback ports (the packages' own services, where systemd starts them, are not used).
for p in slurmctld slurmd slurm-client munge git python3-venv chromium chromium-driver cron \
    prometheus prometheus-node-exporter; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "apt-get install ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv"
  mkdir -p "$(dirname "$venv")"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip setuptools wheel 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
fi
pip_install() {
  # This machine's pip.conf names extra index folders that may not exist; pip warns about each
  # of them on every call. Keep the log readable; real errors still show, and still fail.
  local rc=0
  "$venv/bin/pip" install -q --disable-pip-version-check "$@" \
    > >(grep -v "is ignored: it is neither a file nor a directory" >&2) 2>&1 || rc=$?
  return $rc
}
if [ "$train" = 1 ] && ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  # The exact versions whose wheels lie on this machine's disk (no multi-GB download).
  log "installing torch + torchvision"
  pip_install "torch==2.14.1" "torchvision==0.29.1"
fi
extras="test"
[ "$train" = 1 ] && extras="train,test"
log "installing slurm-yolo[$extras]"
pip_install "$here[$extras]"
# Reinstall our own code every time (cheap) so the venv always matches this checkout.
pip_install --no-deps --force-reinstall "$here"
chmod -R a+rX "$venv"
if [ "$slurm24" = 1 ]; then
  bash "$here/scripts/slurm-root.sh" build
fi
log "ok: $venv"
