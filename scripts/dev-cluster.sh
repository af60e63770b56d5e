#!/usr/bin/env bash
# A real one-node Slurm cluster plus a loopback S3 server (SeaweedFS or moto) for development, tests and
# the demo, on one Debian 12 machine, as root. Every piece of state lives in ONE folder.
#
# Usage: scripts/dev-cluster.sh [--slurm 22.05|24.11] up [--nodes N] [--store seaweedfs|moto] [--accounting]|down|status|env|logs [N]|crash NODE|revive NODE|epilog off|on
#   --slurm 24.11 (anywhere on the line; or SLURM_YOLO_DEV_SLURM=24.11): the Slurm 24.11 cluster
#           instead: one node (s2411) from Debian 13's packages in a cached debootstrap root
#           (scripts/slurm-root.sh, scripts/dev-cluster-2411.sh), state in
#           /var/lib/slurm-yolo-dev-24.11, its own ports, job IDs from 240000, the same S3
#           server as the 22.05 cluster. Both can be up at once. `env --slurm 24.11` puts its
#           client wrappers ($STATE/bin/sbatch, ...) first on PATH. No --nodes; `crash s2411`
#           kills its one node (slurmctld lives on), `revive s2411` brings it back.
#   up      install what is missing, start munged, the S3 server, slurmctld, slurmd; idempotent.
#           --store seaweedfs|moto (remembered in the state folder; default seaweedfs): the S3
#           server. SeaweedFS is a real S3 server with checked keys; moto a mock (any key).
#           --nodes N (N >= 2; remembered in the state folder): N more nodes n1..nN, each a
#           slurmd in its own network + UTS namespace on a bridge, in the partition `multi`.
#           The host's own node (partitions debug, urgent) stays as it is. `--nodes 1` takes
#           the namespace nodes down (slurmd, namespaces, forwarders, bridge) and forgets them;
#           `up` without --nodes keeps the remembered number (and restarts what of it died).
#           Whatever else runs, `up` restarts a store that died (the nodes' forwarder steps
#           aside while it starts: SeaweedFS refuses a port any address of this host holds).
#           --accounting (22.05; remembered; --no-accounting forgets it): Slurm accounting
#           (slurmdbd on MariaDB, both on loopback; their Debian packages are installed then, not
#           by setup.sh), AccountingStoreFlags=job_comment, and MinJobAge=2 (ended jobs leave
#           squeue within about a minute). Without it, `up` is as before (no accounting).
#   accounting on|off  the same as `up --accounting` / `up --no-accounting`
#   crash NODE   kill a namespace node the hard way (slurmd, slurmstepd, the job's processes,
#           by PID): what a kernel panic or a power cut looks like to Slurm
#   revive NODE  start that node's slurmd again (it returns to service by itself)
#   epilog off|on  (22.05) take slurm-yolo's Epilog and EpilogSlurmctld out of slurm.conf (a
#           cluster without the epilog: user mode), or put them back; reconfigures slurmctld
#           and every slurmd at once; idempotent; `up` keeps the choice
#   down    stop what `up` started (munged only if `up` started it); idempotent
#   status  one line per component; exit 0 if all are up, 1 otherwise
#   env     `export` lines for: eval "$(scripts/dev-cluster.sh env)"
#   logs [N]  every node's state and the reason Slurm gives (why a node is drained), and the
#           last N lines (default 20) of the daemons' logs and the epilog's; exit 1 if the cluster was never set up
#
# Environment:
#   SLURM_YOLO_DEV_SLURM  22.05 (default) or 24.11, as --slurm (`env --slurm 24.11` exports it)
#   SLURM_YOLO_DEV_STATE  state folder            (default /var/lib/slurm-yolo-dev; 24.11:
#                         /var/lib/slurm-yolo-dev-24.11, or SLURM_YOLO_DEV_STATE_2411)
#   SLURM_YOLO_VENV       venv made by setup.sh   (default /opt/slurm-yolo/venv)
#   SLURM_YOLO_S3_PORT    S3 port                 (default 9555)
#   SLURM_YOLO_STORE      seaweedfs|moto for `up` without --store (a remembered choice wins
#                         for env/status/down)
set -euo pipefail
# Nothing here reads standard input, and the daemons started from here must not inherit a
# closed one (CI runs with none): Slurm 24.11's slurmd, started so, then fails every job it
# launches ("Can not read return code from slurmstepd: Input/output error"): its pipes to
# slurmstepd take the free descriptor 0, which is clobbered later. A daemon gets /dev/null.
exec </dev/null

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Which Slurm: --slurm X anywhere on the command line, else $SLURM_YOLO_DEV_SLURM, else 22.05.
slurm_version=${SLURM_YOLO_DEV_SLURM:-22.05}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --slurm) slurm_version=${2:-}; shift; [ $# -gt 0 ] && shift ;;
    --slurm=*) slurm_version=${1#--slurm=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
set -- "${args[@]+"${args[@]}"}"
case "$slurm_version" in
  22.05|24.11) ;;
  *) printf '[dev-cluster] ERROR: --slurm takes 22.05 or 24.11 (got %s)\n' "${slurm_version:-nothing}" >&2; exit 2 ;;
esac
# The 22.05 cluster's state folder. `env --slurm 24.11` exports SLURM_YOLO_DEV_STATE as the
# 24.11 one (with SLURM_YOLO_DEV_SLURM=24.11): then it is not the 22.05 cluster's.
if [ "${SLURM_YOLO_DEV_SLURM:-22.05}" = 24.11 ]; then
  state2205=/var/lib/slurm-yolo-dev
else
  state2205=${SLURM_YOLO_DEV_STATE:-/var/lib/slurm-yolo-dev}
fi
state2411=${SLURM_YOLO_DEV_STATE_2411:-/var/lib/slurm-yolo-dev-24.11}
if [ "$slurm_version" = 24.11 ]; then STATE=$state2411; else STATE=$state2205; fi
venv=${SLURM_YOLO_VENV:-/opt/slurm-yolo/venv}
s3_port=${SLURM_YOLO_S3_PORT:-9555}
endpoint="http://127.0.0.1:$s3_port"
bucket=slurm-yolo
# The S3 server's state (kind, port, keys, data, pid, log): started, checked and stopped by the
# functions of scripts/store.sh.
# Both clusters use the one S3 server, whose state lives with the 22.05 cluster's.
store_dir="$state2205/store"
store_choice=""  # set by `up --store` (or $SLURM_YOLO_STORE)
# shellcheck source=scripts/store.sh
. "$here/scripts/store.sh"
node=$(hostname -s)
conf="$STATE/etc/slurm.conf"
# Namespace nodes: n1..nN on the bridge $bridge ($net.1 is this host, node i is $net.(10+i)).
bridge=sybr0
net=10.77.0
nodes_file="$STATE/nodes"
host_slurmd_pid() { echo "$STATE/run/slurmd-$node.pid"; }
# Debian's munged keeps its socket and pid file here (its systemd unit's RuntimeDirectory).
munge_pidfile=/run/munge/munged.pid

log() { printf '[dev-cluster] %s\n' "$*" >&2; }
die() { printf '[dev-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# pid_alive PIDFILE COMM: true if PIDFILE names a live process whose name starts with COMM
# (guards against a stale pid file whose pid was reused by something else).
pid_alive() {
  local pid comm state
  [ -s "$1" ] || return 1
  # The daemon may remove its pid file while we read it: no shell error for that.
  pid=$( { tr -dc '0-9' <"$1"; } 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [[ "$comm" == "$2"* ]] || return 1
  # A killed daemon can linger as a zombie until PID 1 reaps it: that is not alive.
  state=$(sed -e 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ "$state" != Z ] && [ "$state" != X ]
}

# stop_pidfile NAME PIDFILE COMM: SIGTERM, wait up to 15 s, then SIGKILL. No error if not running.
stop_pidfile() {
  local name=$1 pidfile=$2 comm=$3 pid
  if ! pid_alive "$pidfile" "$comm"; then
    log "$name: not running"
    rm -f "$pidfile"
    return 0
  fi
  pid=$(tr -dc '0-9' <"$pidfile")
  log "$name: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    pid_alive "$pidfile" "$comm" || break
    sleep 0.1
  done
  if pid_alive "$pidfile" "$comm"; then
    log "$name: still alive after 15 s, SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

# store_kind: the S3 server of this cluster: `up --store`, else the one remembered in the
# state folder, else $SLURM_YOLO_STORE, else seaweedfs.
store_kind() {
  adopt_legacy_moto
  if [ -n "$store_choice" ]; then echo "$store_choice"
  elif [ -s "$store_dir/kind" ]; then cat "$store_dir/kind"
  elif [ -n "${SLURM_YOLO_STORE:-}" ]; then echo "$SLURM_YOLO_STORE"
  else echo seaweedfs; fi
}

# A cluster brought up before --store existed runs moto with its pid in $STATE/run/moto.pid:
# record it in the store folder, so that status/env/down (and a switch) treat it as any other.
adopt_legacy_moto() {
  [ ! -s "$store_dir/kind" ] && [ -s "$STATE/run/moto.pid" ] || return 0
  pid_alive "$STATE/run/moto.pid" moto_server || pid_alive "$STATE/run/moto.pid" python || return 0
  install -d -m 0700 "$store_dir"
  echo "$s3_port" >"$store_dir/port"
  cp "$STATE/run/moto.pid" "$store_dir/server.pid"
  echo moto >"$store_dir/kind"  # (run/moto.pid stays, for an older copy of this script)
}

s3_ok() {  # the server answers an authenticated request and the bucket exists
  [ -x "$venv/bin/python" ] && [ -s "$store_dir/kind" ] || return 1
  store_ok "$store_dir" "$bucket"
}

s3_answers() { store_answers "$s3_port"; }  # anything at all listens and speaks HTTP

# slurm_cmd CMD ARGS...: the cluster's own client command (the 24.11 cluster's wrappers in
# $STATE/bin; Debian 12's on PATH for the 22.05 one), with its slurm.conf; never hangs.
slurm_cmd() {
  local c=$1; shift
  [ -x "$STATE/bin/$c" ] && c=$STATE/bin/$c
  SLURM_CONF=$conf timeout 20 "$c" "$@"
}
node_state() { slurm_cmd sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n1; }   # node_state NODE

# ---------------------------------------------------------------------------------------------
install_packages() {
  local need=() p
  for p in slurmctld slurmd slurm-client munge socat iproute2; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
  fi
}

ensure_venv() {
  if [ ! -x "$venv/bin/python" ]; then
    log "no venv at $venv: running scripts/setup.sh --no-train"
    SLURM_YOLO_VENV=$venv bash "$here/scripts/setup.sh" --no-train
  fi
  store_install "$(store_kind)"
}

start_munge() {
  if munge_ok; then
    log "munge: already running"
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    log "munge: creating /etc/munge/munge.key"
    mungekey -c -k /etc/munge/munge.key
  fi
  # Same ownership and modes the Debian package and its systemd unit give.
  chown munge:munge /etc/munge /etc/munge/munge.key
  chmod 0700 /etc/munge; chmod 0600 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  if pid_alive "$munge_pidfile" munged; then
    log "munge: munged runs but does not answer; restarting it"
    kill -TERM "$(tr -dc '0-9' <"$munge_pidfile")" 2>/dev/null || true
    sleep 1
  fi
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock "$munge_pidfile"
  log "munge: starting munged as user munge"
  if ! runuser -u munge -- /usr/sbin/munged >/dev/null 2>&1; then
    log "munge: as user munge failed; trying as root with --force"
    /usr/sbin/munged --force
  fi
  touch "$STATE/munged.started"    # so `down` knows munged is ours to stop
  for _ in $(seq 1 50); do munge_ok && break; sleep 0.1; done
  munge_ok || { tail -n 20 /var/log/munge/munged.log >&2 || true; die "munge -n | unmunge fails"; }
}

make_dirs() {
  install -d -o root -g root -m 0755 "$STATE" "$STATE/etc" "$STATE/log" "$STATE/run"
  install -d -o root -g root -m 0700 "$STATE/slurmctld" "$STATE/spool"
  # slurmd puts each job's script in SlurmdSpoolDir/jobNNNNN (owned by the job user): the
  # folder must be traversable by everyone, as Debian's /var/spool/slurmd is.
  install -d -o root -g root -m 0755 "$STATE/slurmd-$node"
  chmod 0755 "$STATE/slurmd-$node"
  install -d -o root -g root -m 1777 "$STATE/runs"
  chmod 1777 "$STATE/runs"   # install -d keeps the mode of an existing folder otherwise
  chmod 0700 "$STATE/spool"
}

conf_changed=0  # set to 1 by write_slurm_conf when slurm.conf or cgroup.conf changed
written=0       # set by write_atomic: 1 if the file was (re)written

write_atomic() {  # write_atomic PATH MODE  (content on stdin; replaced only when it changed)
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  chown root:root "$tmp"; chmod "$2" "$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
    rm -f "$tmp"; chown root:root "$1"; chmod "$2" "$1"; written=0
  else
    mv -f "$tmp" "$1"; written=1
  fi
}

slurm_conf_scheduling() {  # the slurm.conf lines both dev clusters share (22.05 and 24.11)
  cat <<'EOF'
AuthType=auth/munge
# A requeued job waits cred_expire seconds before it may start again (default 120 s).
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=5,bf_interval=5
JobRequeue=1
# Pre-emption as on a shared GPU cluster: a job in the higher-tier "urgent" partition that
# needs resources a "debug" job holds gets them; the debug job gets SIGTERM at once, is
# killed GraceTime (the debug partition's) + KillWait later and requeued, and resumes.
# Without a GraceTime, whether the job's tasks see that SIGTERM before srun goes away and
# they are killed was a race here. Tests use it to pre-empt a training run.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
ReturnToService=2
MinJobAge=600
KillWait=5
OverTimeLimit=0
# Without a default, CR_Core_Memory gives a job with no --mem the whole node's memory.
DefMemPerCPU=1000
InactiveLimit=0
Waittime=0
# scrontab, where a site enables it, is where a user's reconciler is scheduled. Debian 12's
# slurm-client (22.05) ships no scrontab command: there it falls back to the user's crontab.
ScronParameters=enable
EOF
}

slurm_conf_state() {  # the timeouts, state and log lines both dev clusters share, under $STATE
  cat <<EOF
PrologEpilogTimeout=180
# A dead node is declared DOWN (its jobs NODE_FAIL) SlurmdTimeout after its last answer;
# the default (300 s) is too slow for tests. Production sites keep it at minutes.
SlurmdTimeout=10
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd-%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
$(accounting_lines)
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EOF
}

# `epilog off` leaves this file: slurm.conf then names no Epilog (a cluster whose admins never
# installed slurm-yolo's), and `up` keeps it so until `epilog on`.
epilog_off_file="$STATE/epilog.off"
epilog_lines() {
  if [ -e "$epilog_off_file" ]; then
    echo "# No Epilog/EpilogSlurmctld: taken out by \`scripts/dev-cluster.sh epilog off\`"
  else
    printf '%s\n' "Epilog=$STATE/epilog" \
      "# Runs on the controller after every job, NODE_FAIL included (when no node epilog runs)." \
      "EpilogSlurmctld=$STATE/epilog"
  fi
}

# --- accounting (up --accounting; 22.05 only) --------------------------------------------------
# slurmdbd on MariaDB (Debian 12's slurmdbd + mariadb-server, installed only when asked for: the
# default `up` stays as it was), both on loopback, their state under $STATE. The choice is
# remembered in $accounting_file; `up --no-accounting` (or `accounting off`) forgets it.
accounting_file="$STATE/accounting"
db_port=${SLURM_YOLO_DB_PORT:-3307}
dbd_port=${SLURM_YOLO_DBD_PORT:-6819}
accounting_on() { [ -e "$accounting_file" ]; }
accounting_lines() {
  if accounting_on; then
    cat <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
# The marker lives in the job's comment: stored, so that the reconciler finds its jobs in sacct.
AccountingStoreFlags=job_comment
EOF
  else
    echo "AccountingStorageType=accounting_storage/none"
  fi
}
# mariadbd runs as mysql: its socket, pid file and log live in its own folder, beside its data.
db_dir="$STATE/mariadb"
db_sock() { echo "$db_dir/mariadb.sock"; }
# no_inherited_fds CMD...: run CMD with nothing open but 0-2. mariadbd and slurmdbd keep
# whatever they inherit: a caller's flock on the test suite's cluster lock would live on in them.
no_inherited_fds() {
  local fd
  for fd in $(ls /proc/$BASHPID/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done
  exec "$@"
}

start_accounting() {
  local dbd_conf="$STATE/etc/slurmdbd.conf" pw
  for p in slurmdbd mariadb-server; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" && continue
    log "accounting: apt-get install slurmdbd mariadb-server"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmdbd mariadb-server >/dev/null 2>&1 \
      || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmdbd mariadb-server >/dev/null; }
    break
  done
  install -d -o mysql -g mysql -m 0700 "$db_dir" "$db_dir/data"
  if [ ! -d "$db_dir/data/mysql" ]; then
    log "accounting: mariadb-install-db into $db_dir/data"
    mariadb-install-db --user=mysql --datadir="$db_dir/data" --skip-test-db >/dev/null 2>&1 \
      || die "mariadb-install-db failed"
  fi
  if ! pid_alive "$db_dir/mariadb.pid" mariadbd; then
    log "accounting: starting mariadbd on 127.0.0.1:$db_port"
    ( no_inherited_fds setsid nohup /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$db_dir/data" \
      --socket="$(db_sock)" --port="$db_port" --bind-address=127.0.0.1 --pid-file="$db_dir/mariadb.pid" \
      --log-error="$db_dir/mariadb.log" --innodb-buffer-pool-size=32M --performance-schema=off \
      >/dev/null 2>&1 </dev/null ) &
    for _ in $(seq 1 150); do mariadb -S "$(db_sock)" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  mariadb -S "$(db_sock)" -e 'select 1' >/dev/null 2>&1 || { tail -n 20 "$db_dir/mariadb.log" >&2; die "mariadbd does not answer"; }
  [ -s "$STATE/etc/db.pass" ] || { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$STATE/etc/db.pass"; chmod 0600 "$STATE/etc/db.pass"; }
  pw=$(cat "$STATE/etc/db.pass")
  mariadb -S "$(db_sock)" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || die "mariadb: cannot create the slurm user"
  # slurmdbd reads slurmdbd.conf next to slurm.conf (SLURM_CONF's folder), root-only.
  write_atomic "$dbd_conf" 0600 <<EOF
# written by scripts/dev-cluster.sh (up --accounting)
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$pw
StorageLoc=slurm_acct_db
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
EOF
  if [ "$written" = 1 ] && pid_alive "$STATE/run/slurmdbd.pid" slurmdbd; then
    stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid" slurmdbd
  fi
  if ! pid_alive "$STATE/run/slurmdbd.pid" slurmdbd; then
    log "accounting: starting slurmdbd on 127.0.0.1:$dbd_port"
    ( export SLURM_CONF=$conf; no_inherited_fds slurmdbd ) || { tail -n 20 "$STATE/log/slurmdbd.log" >&2; die "slurmdbd failed to start"; }
  fi
  for _ in $(seq 1 100); do SLURM_CONF=$conf timeout 10 sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.2; done
  # slurmctld sends its jobs only for a cluster slurmdbd knows.
  if ! SLURM_CONF=$conf timeout 20 sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx slurmyolo; then
    SLURM_CONF=$conf timeout 20 sacctmgr -i add cluster slurmyolo >/dev/null || die "sacctmgr add cluster slurmyolo failed"
  fi
}

stop_accounting() {
  stop_pidfile slurmdbd "$STATE/run/slurmdbd.pid" slurmdbd
  stop_pidfile mariadbd "$db_dir/mariadb.pid" mariadbd
}

write_slurm_conf() {
  # RealMemory must not exceed what slurmd finds, or the node is drained ("Low RealMemory").
  local mem found
  found=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
  mem=8000
  if [ -n "$found" ] && [ "$found" -lt "$mem" ]; then mem=$found; fi
  local n ctl_addr=127.0.0.1 extra_nodes="" multi="" min_job_age=600
  # With accounting, slurmctld forgets an ended job after 2 s (Slurm's smallest safe value; its
  # purge runs about once a minute): tests of a reconciler started after MinJobAge stay short.
  accounting_on && min_job_age=2
  n=$(extra_nodes)
  if [ "$n" -gt 0 ]; then
    # Namespace nodes reach the controller on the bridge, not on loopback.
    ctl_addr=$net.1
    for i in $(seq 1 "$n"); do
      extra_nodes+="NodeName=n$i NodeAddr=$net.$((10 + i)) CPUs=2 RealMemory=$mem State=UNKNOWN"$'\n'
    done
    # No GraceTime pre-emption here: tests kill and revive these nodes.
    multi="PartitionName=multi Nodes=n[1-$n] MaxTime=INFINITE State=UP OverSubscribe=FORCE:10 PriorityTier=1"
  fi
  write_atomic "$conf" 0644 <<EOF
# Dev cluster for slurm-yolo (written by scripts/dev-cluster.sh; do not edit)
ClusterName=slurmyolo
SlurmctldHost=$node($ctl_addr)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
$(slurm_conf_scheduling | sed "s/^MinJobAge=.*/MinJobAge=$min_job_age/")
$(epilog_lines)
$(slurm_conf_state)
NodeName=$node NodeAddr=127.0.0.1 CPUs=2 RealMemory=$mem State=UNKNOWN
$extra_nodes
# Two cores only: let up to 10 jobs share a core so that tests (and the 20-jobs-at-once
# epilog test) can run jobs side by side; memory stays a consumable, enforced resource.
PartitionName=debug Default=YES Nodes=$node MaxTime=INFINITE State=UP OverSubscribe=FORCE:10 PriorityTier=1 GraceTime=10
PartitionName=urgent Nodes=$node MaxTime=INFINITE State=UP OverSubscribe=FORCE:10 PriorityTier=10 PreemptMode=OFF
$multi
EOF
  conf_changed=$written
  # Swap limits need cgroup v1 memory.memsw.* (absent when the kernel has swap accounting off).
  local swap=""
  if [ -e /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes ]; then swap="ConstrainSwapSpace=yes"; fi
  write_atomic "$STATE/etc/cgroup.conf" 0644 <<EOF
# written by scripts/dev-cluster.sh
ConstrainCores=no
ConstrainRAMSpace=yes
$swap
EOF
  [ "$written" = 1 ] && conf_changed=1
  # Keep Debian's /etc/slurm/plugstack.conf (if any) out of our cluster: an empty one here.
  [ -f "$STATE/etc/plugstack.conf" ] || write_atomic "$STATE/etc/plugstack.conf" 0644 </dev/null
}

write_epilog() {
  local src="$here/scripts/slurm-yolo-epilog.sh" tmp
  if [ -f "$src" ]; then
    tmp=$(mktemp "$STATE/epilog.XXXXXX")
    # slurmd runs the epilog with no PATH: absolute paths only.
    sed -e "s|^PYTHON=.*|PYTHON=$venv/bin/python|" \
        -e "s|^SITE_CONFIG=.*|SITE_CONFIG=$STATE/site.yaml|" "$src" >"$tmp"
    grep -q "^PYTHON=" "$tmp" || log "epilog: WARNING: no PYTHON= line in $src to point at $venv/bin/python"
    if ! grep -q "^SITE_CONFIG=" "$tmp" && ! grep -q "SLURM_YOLO_SITE_CONFIG=" "$tmp"; then
      # Neither a SITE_CONFIG= line to rewrite nor its own setting: set it after the shebang.
      sed -i "1a SLURM_YOLO_SITE_CONFIG=$STATE/site.yaml; export SLURM_YOLO_SITE_CONFIG" "$tmp"
    fi
    write_atomic "$STATE/epilog" 0755 <"$tmp"
    rm -f "$tmp"
  else
    log "epilog: $src missing; installing a no-op placeholder"
    printf '#!/bin/sh\nexit 0\n' | write_atomic "$STATE/epilog" 0755
  fi
}

write_site_files() {
  local kind keys atomic=false site_extra=""
  if [ "$slurm_version" = 24.11 ]; then
    # The wrappers run the 24.11 commands on the host (reconciler) and in the root (epilog).
    site_extra="scontrol_path: $STATE/bin/scontrol"$'\n'"squeue_path: $STATE/bin/squeue"
  fi
  kind=$(store_kind)
  read -r -a keys <<<"$(store_keys "$store_dir" "$kind")"
  # SeaweedFS commits conditional writes under a per-object lock (its PR #8802); moto checks, then writes.
  [ "$kind" = seaweedfs ] && atomic=true
  write_atomic "$STATE/credentials" 0600 <<EOF
[default]
aws_access_key_id = ${keys[0]}
aws_secret_access_key = ${keys[1]}
EOF
  write_atomic "$STATE/site.yaml" 0644 <<EOF
# slurm-yolo site config for the local dev cluster (written by scripts/dev-cluster.sh)
store:
  endpoint_url: $endpoint
  region: us-east-1
  credentials_file: $STATE/credentials
  profile: default
  atomic_conditional_writes: $atomic
allowed_prefix: "s3://$bucket/runs/{user}/"
index_url: "s3://$bucket/index/"
spool_dir: $STATE/spool
log_file: $STATE/log/epilog.log
time_budget_s: 60
s5cmd_workers: 32
scontrol: true
# Shared by every node and the controller (here: this host's filesystem).
claim_dir: $STATE/claims
# slurmctld runs EpilogSlurmctld without SLURM_CONF; scontrol/squeue need it here.
slurm_conf: $conf
$site_extra
EOF
}

start_store() {  # the S3 server of store_kind on $s3_port with the bucket; switches kinds if asked
  local kind running="" host_fwd="$state2205/run/s3fwd-host.pid" fwd_was_up=0
  kind=$(store_kind)
  [ -s "$store_dir/kind" ] && running=$(cat "$store_dir/kind")
  if [ -n "$running" ] && [ "$running" != "$kind" ] && store_pid_alive "$store_dir"; then
    log "s3: switching from $running to $kind (what the $running server holds stays there)"
    store_stop "$store_dir"
  fi
  # The namespace nodes' forwarder listens on the same port on the bridge address ($net.1),
  # and `weed mini` refuses an S3 port that any address of this host holds ("port ... is not
  # available"): while the server starts, the forwarder steps aside, then comes back.
  if ! store_pid_alive "$store_dir" && pid_alive "$host_fwd" socat; then
    stop_pidfile "s3 forwarder ($net.1:$s3_port)" "$host_fwd" socat
    fwd_was_up=1
  fi
  store_start "$kind" "$store_dir" "$s3_port" "$bucket" \
    || die "s3: $kind does not answer on $endpoint (log: $store_dir/server.log; port taken? set SLURM_YOLO_S3_PORT)"
  log "s3: $kind on $endpoint, bucket s3://$bucket"
  if [ "$fwd_was_up" = 1 ]; then
    STATE=$state2205 start_forwarder host
    log "s3 forwarder ($net.1:$s3_port): back"
  fi
}

slurm_logs_tail() { cmd_logs 25 >&2 || true; }   # before a die: never the exit itself

# logs [N]: what to read when a job or a test went wrong: every node's state with the reason
# Slurm gives (a drained node says why), and the last N lines (default 20) of each daemon's
# log and of the epilog's.
cmd_logs() {
  local n=${1:-20} f
  [ -f "$conf" ] || { echo "no $conf: the Slurm $slurm_version dev cluster was never set up (run: $0 --slurm $slurm_version up)" >&2; return 1; }
  echo "==> nodes (Slurm $slurm_version): name, state, reason <=="
  { slurm_cmd sinfo -N -h -o '%N %T %E' 2>&1 || echo "(sinfo failed: is slurmctld up?)"; } | sort -u
  for f in "$STATE/log/slurmctld.log" "$STATE"/log/slurmd-*.log "$STATE/log/slurmdbd.log" "$STATE/log/epilog.log"; do
    [ -f "$f" ] && { printf '==> %s <==\n' "$f"; tail -n "$n" "$f"; }
  done
  return 0
}

restart_if_conf_changed() {  # restart_if_conf_changed CTL_PIDFILE SLURMD_PIDFILE LABEL
  if [ "$conf_changed" = 1 ] && { pid_alive "$1" slurmctld || pid_alive "$2" slurmd; }; then
    # Some settings (auth, plugins, ports) need a restart, not `scontrol reconfigure`.
    # Running jobs survive: their slurmstepd keep running and the state is saved.
    log "slurm.conf/cgroup.conf changed: restarting $3 slurmd and slurmctld"
    stop_pidfile slurmd "$2" slurmd
    stop_pidfile slurmctld "$1" slurmctld
  fi
}

start_slurm() {
  export SLURM_CONF=$conf
  restart_if_conf_changed "$STATE/run/slurmctld.pid" "$(host_slurmd_pid)" "the"
  if pid_alive "$STATE/run/slurmctld.pid" slurmctld; then
    log "slurmctld: already running"
  else
    log "slurmctld: starting"
    slurmctld -f "$conf" || { slurm_logs_tail; die "slurmctld failed to start"; }
  fi
  for _ in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
  scontrol ping 2>/dev/null | grep -q 'is UP' || { slurm_logs_tail; die "slurmctld does not answer"; }
  if pid_alive "$(host_slurmd_pid)" slurmd; then
    log "slurmd: already running"
  else
    log "slurmd: starting"
    slurmd -f "$conf" || { slurm_logs_tail; die "slurmd failed to start"; }
  fi
  node_ready "$node"
}

# node_ready NODE: wait (60 s at most) until NODE is usable; a node that an earlier run left
# drained or down is resumed once. Then a trivial job must run on it and complete: a node can
# register and look idle and still fail every job it is given (a dead munged, a stale mount
# or cgroup), which would otherwise show only as every test timing out. On failure: the
# nodes' states with Slurm's reasons and the logs, and a non-zero exit.
node_ready() {
  local name=$1 st="" resumed=0 jid out
  for _ in $(seq 1 120); do
    st=$(node_state "$name" || true)
    case "$st" in
      idle|mixed|allocated|completing) break ;;
      drained|draining|drain*|down|fail*)
        if [ "$resumed" = 0 ]; then
          log "node $name is $st ($(slurm_cmd sinfo -h -N -n "$name" -o %E 2>/dev/null | head -n1)): scontrol update state=resume"
          slurm_cmd scontrol update nodename="$name" state=resume 2>/dev/null || true
          resumed=1
        fi ;;
    esac
    sleep 0.5
  done
  case "$st" in
    idle|mixed|allocated|completing) ;;
    *) slurm_logs_tail; die "node $name not idle after 60 s (state: ${st:-none})" ;;
  esac
  # The job runs in /tmp: the submitting folder need not exist on the node (nor in a root).
  jid=$(slurm_cmd sbatch --parsable -J dev-cluster-check -w "$name" -t 1 --mem 10M -D /tmp -o /dev/null \
        --wrap /bin/true 2>&1) || { slurm_logs_tail; die "node $name: sbatch of a check job failed: $jid"; }
  for _ in $(seq 1 120); do
    out=$(slurm_cmd squeue -h -t all -j "$jid" -o %T 2>/dev/null | head -n1 || true)
    case "$out" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|BOOT_FAIL|OUT_OF_MEMORY) break ;; esac
    sleep 0.5
  done
  st=$(node_state "$name" || true)
  if [ "$out" != COMPLETED ] || [[ "$st" == drain* || "$st" == down* ]]; then
    slurm_cmd scancel "$jid" 2>/dev/null || true
    slurm_logs_tail
    die "node $name cannot run jobs: a check job (/bin/true, job $jid) ended ${out:-in no state within 60 s}, node $st"
  fi
  log "node $name (Slurm $slurm_version): $st, runs jobs (check job $jid completed)"
}


# --- namespace nodes (up --nodes N) ----------------------------------------------------------
# Each node is a slurmd with its own network namespace (its own address on the bridge, its
# own port 6818) and UTS namespace (its own hostname), sharing this host's filesystem (the
# "shared filesystem") and cgroup tree. Debian's slurmd puts each node's cgroups under
# slurm_<nodename>/, so memory limits are enforced per job on every node, as on the host.
# `ip netns exec` would remount /sys and hide the cgroup mounts from slurmd: nsenter only.
extra_nodes() { local n=0; [ -s "$nodes_file" ] && n=$(tr -dc '0-9' <"$nodes_file"); echo "${n:-0}"; }
node_pidfile() { echo "$STATE/run/slurmd-$1.pid"; }
fwd_pidfile() { echo "$STATE/run/s3fwd-$1.pid"; }
s3_port_of() { local hp=${endpoint#*://}; hp=${hp%%/*}; echo "${hp##*:}"; }

setup_network() {
  local n=$1 i
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$net.1/24" dev "$bridge"
  fi
  ip link set "$bridge" up
  for i in $(seq 1 "$n"); do
    [ -e "/run/netns/syn$i" ] || ip netns add "syn$i"
    if ! ip link show "syv$i" >/dev/null 2>&1; then
      ip link add "syv$i" type veth peer name eth0 netns "syn$i"
      ip link set "syv$i" master "$bridge" up
      nsenter --net="/run/netns/syn$i" ip addr add "$net.$((10 + i))/24" dev eth0
      nsenter --net="/run/netns/syn$i" ip link set eth0 up
      nsenter --net="/run/netns/syn$i" ip link set lo up
      nsenter --net="/run/netns/syn$i" ip route add default via "$net.1"
    fi
  done
  # Node names must resolve everywhere (slurmd, srun, the epilog's scontrol): one marked block.
  local hosts tmp
  hosts=$(grep -v '# slurm-yolo-dev$' /etc/hosts || true)
  tmp=$(mktemp)
  { printf '%s\n' "$hosts"; for i in $(seq 1 "$n"); do printf '%s n%s # slurm-yolo-dev\n' "$net.$((10 + i))" "$i"; done; } >"$tmp"
  cat "$tmp" >/etc/hosts   # not mv: /etc/hosts may be a bind mount
  rm -f "$tmp"
}

start_forwarder() {  # start_forwarder NAME [NETNS]: the store on this host's loopback, seen from a node
  local name=$1 ns=${2:-} port pidfile
  port=$(s3_port_of); pidfile=$(fwd_pidfile "$name")
  pid_alive "$pidfile" socat && return 0
  if [ -z "$ns" ]; then  # host side: the bridge address forwards to the loopback-only store
    setsid nohup socat "TCP-LISTEN:$port,bind=$net.1,fork,reuseaddr" "TCP:127.0.0.1:$port" \
      >>"$STATE/log/s3fwd.log" 2>&1 </dev/null &
  else                   # node side: the node's loopback forwards to the bridge address
    setsid nohup nsenter --net="/run/netns/$ns" socat "TCP-LISTEN:$port,bind=127.0.0.1,fork,reuseaddr" \
      "TCP:$net.1:$port" >>"$STATE/log/s3fwd.log" 2>&1 </dev/null &
  fi
  echo $! >"$pidfile"
}

start_node() {  # start_node I
  local i=$1
  install -d -o root -g root -m 0755 "$STATE/slurmd-n$i"
  start_forwarder "n$i" "syn$i"
  if pid_alive "$(node_pidfile "n$i")" slurmd; then return 0; fi
  log "slurmd n$i: starting in namespace syn$i ($net.$((10 + i)))"
  nsenter --net="/run/netns/syn$i" unshare --uts sh -c "hostname n$i && exec slurmd -f '$conf' -N n$i" \
    || { slurm_logs_tail; die "slurmd n$i failed to start"; }
}

start_nodes() {
  local n i
  n=$(extra_nodes)
  if [ "$n" -eq 0 ]; then
    # `up --nodes 1`: whatever is left of earlier namespace nodes goes, a crashed one (no pid
    # file) included: its namespace, the forwarders and the bridge.
    if ls "$STATE"/run/slurmd-n*.pid "$STATE"/run/s3fwd-*.pid /run/netns/syn* >/dev/null 2>&1 \
       || ip link show "$bridge" >/dev/null 2>&1; then
      log "namespace nodes: taking them down (up --nodes 1)"
      stop_nodes
    fi
    return 0
  fi
  setup_network "$n"
  start_forwarder host
  for i in $(seq 1 "$n"); do start_node "$i"; done
  wait_nodes_up "$(seq -f 'n%g' -s, 1 "$n")"
}

wait_nodes_up() {  # wait_nodes_up n1,n2,...: every node idle (resume it once if Slurm left it down)
  local want=$1 st="" bad resumed=""
  for _ in $(seq 1 120); do
    st=$(SLURM_CONF=$conf timeout 10 sinfo -h -N -n "$want" -o '%N %T' 2>/dev/null || true)
    bad=$(awk '$2 !~ /^(idle|mixed|allocated|completing)$/ {print $1}' <<<"$st")
    [ -n "$st" ] && [ -z "$bad" ] && { log "nodes $want: up"; return 0; }
    for b in $bad; do
      case " $resumed " in *" $b "*) ;; *)
        SLURM_CONF=$conf scontrol update nodename="$b" state=resume 2>/dev/null || true
        resumed+=" $b" ;;
      esac
    done
    sleep 0.5
  done
  slurm_logs_tail; die "nodes not usable after 60 s: $st"
}

stop_nodes() {
  local f name pids
  for f in "$STATE"/run/slurmd-n*.pid; do
    [ -e "$f" ] || continue
    name=$(basename "$f" .pid); name=${name#slurmd-}
    stop_pidfile "slurmd $name" "$f" slurmd
  done
  for f in "$STATE"/run/s3fwd-*.pid; do [ -e "$f" ] && stop_pidfile "forwarder" "$f" socat; done
  for f in /run/netns/syn*; do
    [ -e "$f" ] || continue
    # A node started by hand, or a pid file lost: what still runs in its namespace is ours.
    pids=$(ip netns pids "$(basename "$f")" 2>/dev/null | tr '\n' ' ')
    [ -z "${pids// /}" ] || kill -TERM $pids 2>/dev/null || true
    ip netns del "$(basename "$f")"
  done
  ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
  return 0
}

cmd_crash() {  # everything in the node's network namespace dies at once, by PID, with SIGKILL
  local name=${1:-} pids
  [[ "$name" =~ ^n[0-9]+$ ]] && [ -e "/run/netns/sy$name" ] || die "crash: no namespace node '$name'"
  pids=$(ip netns pids "sy$name" | tr '\n' ' ')
  log "crash $name: SIGKILL to ${pids:-nothing}"
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
  rm -f "$(node_pidfile "$name")" "$(fwd_pidfile "$name")"
}

cmd_revive() {
  local name=${1:-}
  [[ "$name" =~ ^n[0-9]+$ ]] && [ -e "/run/netns/sy$name" ] || die "revive: no namespace node '$name'"
  export SLURM_CONF=$conf
  start_node "${name#n}"
  wait_nodes_up "$name"
}

# epilog off|on: take slurm-yolo's Epilog and EpilogSlurmctld out of slurm.conf, or put them
# back, and `scontrol reconfigure` so that slurmctld and every slurmd (the namespace nodes
# included: they read the same file) run the next job's end with it. Idempotent.
cmd_epilog() {
  [ "$(id -u)" = 0 ] || die "run as root"
  case "${1:-}" in
    off) touch "$epilog_off_file" ;;
    on) rm -f "$epilog_off_file" ;;
    *) die "usage: $0 epilog off|on" ;;
  esac
  [ -f "$conf" ] || die "no $conf: run $0 up first"
  write_slurm_conf
  export SLURM_CONF=$conf
  if pid_alive "$STATE/run/slurmctld.pid" slurmctld; then
    if [ "$conf_changed" = 1 ]; then
      slurm_cmd scontrol reconfigure || die "scontrol reconfigure failed (see $0 logs)"
    fi
    # slurmctld answers reconfigure before every slurmd has read the file again: wait until
    # what it reports is what was asked (a job ending in that window would see the old one).
    local want=1 got
    [ "$1" = off ] && want=0
    for _ in $(seq 1 50); do
      got=$(slurm_cmd scontrol show config 2>/dev/null | grep -c '^Epilog  *= /' || true)
      [ "$got" = "$want" ] && break
      sleep 0.2
    done
    [ "$got" = "$want" ] || die "scontrol show config still shows the old Epilog after reconfigure"
  fi
  log "epilog $1: $(grep -c '^Epilog=' "$conf") Epilog line(s) in $conf"
}

cmd_up() {
  [ "$(id -u)" = 0 ] || die "run as root"
  install_packages
  make_dirs
  ensure_venv
  start_munge
  write_slurm_conf
  write_epilog
  write_site_files
  start_store
  if accounting_on; then start_accounting; else stop_accounting_if_running; fi
  # The bridge first: slurmctld's address is on it when there are namespace nodes.
  [ "$(extra_nodes)" -gt 0 ] && setup_network "$(extra_nodes)"
  start_slurm
  start_nodes
  # The namespace nodes were not restarted with slurmctld: they read the new file now.
  if [ "$conf_changed" = 1 ] && [ "$(extra_nodes)" -gt 0 ]; then slurm_cmd scontrol reconfigure || true; fi
  log "up: state in $STATE; now run: eval \"\$($here/scripts/dev-cluster.sh env)\""
}

stop_accounting_if_running() {
  if pid_alive "$STATE/run/slurmdbd.pid" slurmdbd || pid_alive "$db_dir/mariadb.pid" mariadbd; then
    log "accounting: off; stopping slurmdbd and mariadbd"
    stop_accounting
  fi
}

cmd_down() {
  stop_nodes
  stop_pidfile slurmd "$(host_slurmd_pid)" slurmd
  stop_pidfile slurmctld "$STATE/run/slurmctld.pid" slurmctld
  stop_accounting_if_running
  adopt_legacy_moto
  if pid_alive "$state2411/run/slurmctld.pid" slurmctld; then
    log "s3: the Slurm 24.11 cluster uses it too; left running"
  else
    store_stop "$store_dir"
  fi
  rm -f "$STATE/run/moto.pid"
  if [ -f "$STATE/munged.started" ] && pid_alive "$state2411/run/slurmctld.pid" slurmctld; then
    log "munged: the Slurm 24.11 cluster uses it too; left running"
  elif [ -f "$STATE/munged.started" ]; then
    stop_pidfile munged "$munge_pidfile" munged
    rm -f "$STATE/munged.started"
  else
    log "munged: not started by us; left alone"
  fi
}

status_slurmd() {  # status_slurmd PIDFILE NODE STATE: one status line; non-zero if not usable
  local pid=$1 name=$2 st=$3
  if pid_alive "$pid" slurmd; then
    case "$st" in
      idle|mixed|allocated|completing) echo "slurmd:    up (pid $(cat "$pid")), node $name $st" ;;
      *) echo "slurmd:    up (pid $(cat "$pid")), node $name ${st:-unknown} (NOT USABLE)"; return 1 ;;
    esac
  else
    echo "slurmd:    DOWN${st:+ (node $name $st)}"; return 1
  fi
}

# status_lines CTL_PIDFILE SLURMD_PIDFILE NODE: one line each for munge, slurmctld, the node's
# slurmd and the store; non-zero if one is not usable.
status_lines() {
  local ok=0 kind
  if munge_ok; then echo "munge:     up"; else echo "munge:     DOWN"; ok=1; fi
  if pid_alive "$1" slurmctld && slurm_cmd scontrol ping 2>/dev/null | grep -q 'is UP'; then
    echo "slurmctld: up (pid $(cat "$1")), Slurm $slurm_version"
  else
    echo "slurmctld: DOWN (Slurm $slurm_version)"; ok=1
  fi
  status_slurmd "$2" "$3" "$(node_state "$3" || true)" || ok=1
  kind=$(store_kind)
  if s3_ok; then echo "s3:        up $endpoint ($kind), bucket s3://$bucket"; else echo "s3:        DOWN ($endpoint, $kind, bucket s3://$bucket)"; ok=1; fi
  return $ok
}

cmd_status() {
  local ok=0
  status_lines "$STATE/run/slurmctld.pid" "$(host_slurmd_pid)" "$node" || ok=1
  local n i st_n
  n=$(extra_nodes)
  for i in $(seq 1 "$n"); do
    st_n=$(node_state "n$i" || true)
    if pid_alive "$(node_pidfile "n$i")" slurmd; then
      echo "slurmd:    up (pid $(cat "$(node_pidfile "n$i")")), node n$i ${st_n:-unknown} (namespace syn$i)"
    else
      echo "slurmd:    DOWN, node n$i ${st_n:-unknown} (namespace syn$i)"; ok=1
    fi
  done
  if accounting_on; then
    if pid_alive "$STATE/run/slurmdbd.pid" slurmdbd && pid_alive "$db_dir/mariadb.pid" mariadbd; then
      echo "slurmdbd:  up (pid $(cat "$STATE/run/slurmdbd.pid")), MariaDB 127.0.0.1:$db_port"
    else
      echo "slurmdbd:  DOWN (accounting is on: up restarts it)"; ok=1
    fi
  fi
  return $ok
}

cmd_env() {
  emit() { printf 'export %s=%q\n' "$1" "$2"; }
  emit SLURM_CONF "$conf"
  # PATH is expanded by the evaluating shell, so it keeps that shell's own PATH.
  # shellcheck disable=SC2016  # $PATH is for the evaluating shell to expand
  [ "$slurm_version" = 24.11 ] || printf 'export PATH=%q:"$PATH"\n' "$venv/bin"
  emit AWS_ENDPOINT_URL "$endpoint"
  emit S3_ENDPOINT_URL "$endpoint"
  local kind keys=()
  kind=$(store_kind)
  # The store's key pair (the dev cluster's users share it; a real site gives each their own).
  if [ "$kind" = moto ] || [ -s "$store_dir/keys.$kind" ]; then read -r -a keys <<<"$(store_keys "$store_dir" "$kind")"; fi
  [ ${#keys[@]} = 2 ] && { emit AWS_ACCESS_KEY_ID "${keys[0]}"; emit AWS_SECRET_ACCESS_KEY "${keys[1]}"; }
  emit SLURM_YOLO_DEV_STORE "$kind"  # informational: what `up` started
  emit AWS_DEFAULT_REGION us-east-1
  emit SLURM_YOLO_SITE_CONFIG "$STATE/site.yaml"
  emit SLURM_YOLO_DEV_STATE "$STATE"
  emit SLURM_YOLO_RUNS "$STATE/runs"
  emit SLURM_YOLO_NODES "$(extra_nodes)"
  emit SLURM_YOLO_DEV_SLURM "$slurm_version"
  if [ "$slurm_version" = 24.11 ]; then
    emit SLURM_YOLO_DEV_STATE_2411 "$STATE"
    # The 24.11 client wrappers before anything else (Debian 12's own are 22.05).
    # shellcheck disable=SC2016
    printf 'export PATH=%q:%q:"$PATH"\n' "$venv/bin" "$STATE/bin"
  fi
}

parse_up_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --store)
        store_kind_valid "${2:-}" || die "--store takes seaweedfs or moto"
        store_choice=$2
        shift 2 ;;
      --nodes)
        [[ "${2:-}" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] && [ "$2" -le 8 ] || die "--nodes takes 1..8"
        mkdir -p "$STATE"
        if [ "$2" -ge 2 ]; then echo "$2" >"$nodes_file"; else rm -f "$nodes_file"; fi
        shift 2 ;;
      --accounting) mkdir -p "$STATE"; touch "$accounting_file"; shift ;;
      --no-accounting) rm -f "$accounting_file"; shift ;;
      *) die "up: unknown option $1 (see the usage at the top of $0)" ;;
    esac
  done
}

if [ "$slurm_version" = 24.11 ]; then
  # shellcheck source=scripts/slurm-root.sh
  . "$here/scripts/slurm-root.sh"
  # shellcheck source=scripts/dev-cluster-2411.sh
  . "$here/scripts/dev-cluster-2411.sh"
  case "${1:-}" in
    up) shift; store_choice=${SLURM_YOLO_STORE:-}
        for a in "$@"; do [ "$a" != --nodes ] || die "--slurm 24.11: one node only (no --nodes)"
          [ "$a" != --accounting ] || die "--slurm 24.11: no accounting (up --accounting is the 22.05 cluster's)"; done
        parse_up_args "$@"; cmd_up_2411 ;;
    down) cmd_down_2411 ;;
    status) cmd_status_2411 ;;
    env) cmd_env ;;
    crash) cmd_crash_2411 "${2:-}" ;;
    revive) cmd_revive_2411 "${2:-}" ;;
    logs) cmd_logs "${2:-}" ;;
    *) echo "usage: $0 --slurm 24.11 up [--store seaweedfs|moto]|down|status|env|logs [N]|crash s2411|revive s2411" >&2; exit 2 ;;
  esac
  exit $?
fi

case "${1:-}" in
  up) shift; store_choice=${SLURM_YOLO_STORE:-}; parse_up_args "$@"; cmd_up ;;
  crash) cmd_crash "${2:-}" ;;
  revive) cmd_revive "${2:-}" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  logs) cmd_logs "${2:-}" ;;
  epilog) cmd_epilog "${2:-}" ;;
  accounting)
    case "${2:-}" in on) parse_up_args --accounting ;; off) parse_up_args --no-accounting ;;
      *) die "usage: $0 accounting on|off" ;; esac
    cmd_up ;;
  *) echo "usage: $0 up [--nodes N] [--store seaweedfs|moto]|down|status|env|logs [N]|crash NODE|revive NODE|epilog off|on|accounting on|off" >&2; exit 2 ;;
esac
