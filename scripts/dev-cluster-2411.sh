# shellcheck shell=bash
# The Slurm 24.11 dev cluster (`scripts/dev-cluster.sh up --slurm 24.11`), sourced by
# scripts/dev-cluster.sh after its own functions (pid_alive, start_munge, write_epilog, the
# store...). A one-node cluster from Debian 13's packages, in the debootstrap root of
# scripts/slurm-root.sh, that can run at the same time as the 22.05 one: its own state folder,
# ports (6827/6828), ClusterName, node name and job IDs (from 240000), the same S3 server,
# the same epilog shim and site config layout.
#
# How it is wired (why, in docs/admin.md "Slurm 24.11 in a Debian 13 root"):
# - slurmctld and slurmd run chrooted into the root, each started in a private mount
#   namespace (unshare -m) where /proc, /sys (the cgroup mounts), /dev, /run/munge (the
#   host's munged: one key, one daemon), /tmp, /home, the state folder, the venv and the
#   host's Python 3.11 are bind-mounted. slurmstepd, the jobs and the epilogs inherit that
#   view. When the daemons exit, the namespace and its mounts go with them: nothing is ever
#   mounted in the host's own namespace, so the cached root can be deleted safely.
# - The job and the epilog run the HOST's venv (/opt/slurm-yolo/venv) on the HOST's Python
#   3.11, bound into the root: torch's wheels exist on this machine only for Python 3.11, so
#   a venv on Debian 13's Python 3.13 could hold the epilog but not the training job. The
#   root adds the few shared libraries that Python 3.11's modules and the wheels load and
#   minbase lacks (libffi8, libgl1, ... see slurm-root.sh); glibc 2.41 runs binaries built
#   for 2.36.
# - /etc/passwd, group, shadow, gshadow and hosts in the root are symlinks into the host's
#   /etc, bound at /.host-etc: a user added on the host later (useradd replaces the file)
#   is seen at once, which a bind mount of the file itself would not do.
# - Client commands from the host (sbatch, squeue, scontrol, ...; any user) are wrappers in
#   $STATE/bin that run the root's binaries through the root's own dynamic loader with the
#   root's libraries (no chroot, so no privilege needed). slurm.conf's PluginDir names the
#   root's plugin folder by its host path; inside the root that path is a symlink to /, so
#   the same slurm.conf and the same wrappers work on both sides.
# - cgroups: this kernel's hierarchy is hybrid: the memory controller is on cgroup v1
#   (/sys/fs/cgroup/memory), the v2 tree (/sys/fs/cgroup/unified) holds only hugetlb. So
#   cgroup/v2, 24.11's usual set-up, cannot limit memory here: CgroupPlugin=cgroup/v1, as
#   for 22.05. Where /sys/fs/cgroup is a cgroup2 mount with the memory controller, it is
#   cgroup/v2.

node24=s2411
ctl_port24=6827
slurmd_port24=6828
# Client commands the host gets wrappers for (the ones users, tests and submitit call).
wrapped_cmds=(sbatch srun salloc sattach squeue scontrol scancel sinfo sacct sprio sshare sstat strigger sdiag scrontab)

# The root's loader and library folders: what the wrappers run the root's binaries with.
r_ld() { echo "$ROOT/usr/lib64/ld-linux-x86-64.so.2"; }
r_libs() { echo "$ROOT/usr/lib/x86_64-linux-gnu/slurm-wlm:$ROOT/usr/lib/x86_64-linux-gnu"; }

# The host's Python that the venv is built on, and its standard library.
host_python() { readlink -f "$venv/bin/python"; }
host_stdlib() { "$venv/bin/python" -I -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])'; }

# Paths bound into the root at the same place (read-write unless listed in ro_binds).
rw_binds() { printf "%s\n" /tmp /home "$STATE"; }
ro_binds() {
  local py stdlib ver top
  py=$(host_python); stdlib=$(host_stdlib); ver=${stdlib##*/}
  # The venv's top folder (/opt/slurm-yolo for /opt/slurm-yolo/venv).
  top=$(dirname "$(readlink -f "$venv")")
  printf '%s\n' "$top" "$py" "$stdlib"
  [ -d "/etc/$ver" ] && printf '%s\n' "/etc/$ver"  # Debian's sitecustomize.py points there
  return 0
}

# wire_root: mount points and symlinks in the cached root (idempotent; nothing mounted here).
wire_root() {
  local p f py
  # The plugin folder by its host path, seen from inside the root: a symlink to /.
  mkdir -p "$ROOT$(dirname "$ROOT")"
  [ -L "$ROOT$ROOT" ] || ln -sfn / "$ROOT$ROOT"
  install -d -m 0755 "$ROOT/.host-etc" "$ROOT/run/munge"
  for f in passwd group shadow gshadow hosts; do
    if [ ! -L "$ROOT/etc/$f" ]; then
      [ -e "$ROOT/etc/$f" ] && mv -f "$ROOT/etc/$f" "$ROOT/etc/$f.debian"
      ln -sfn "/.host-etc/$f" "$ROOT/etc/$f"
    fi
  done
  while read -r p; do
    [ -n "$p" ] || continue
    if [ -d "$p" ]; then mkdir -p "$ROOT$p"; else mkdir -p "$ROOT$(dirname "$p")"; [ -e "$ROOT$p" ] || touch "$ROOT$p"; fi
  done < <(rw_binds; ro_binds)
  # The venv's python -> /usr/bin/python3 -> python3.11: Debian 13's root has no python3 of
  # its own (minbase), so /usr/bin/python3 there names the bound host interpreter.
  py=$(host_python)
  [ -e "$ROOT/usr/bin/python3" ] || [ -L "$ROOT/usr/bin/python3" ] || ln -s "$(basename "$py")" "$ROOT/usr/bin/python3"
}

# in_root CMD...: run CMD chrooted into the root, in a new private mount namespace with the
# binds above. A daemon CMD forks and keeps the namespace alive; it dies with its processes.
in_root() {
  local binds=() p
  while read -r p; do [ -n "$p" ] && binds+=("rw:$p"); done < <(rw_binds)
  while read -r p; do [ -n "$p" ] && binds+=("ro:$p"); done < <(ro_binds)
  unshare --mount --propagation private -- /bin/bash -c '
    set -e
    R=$1; shift; n=$1; shift
    mount --rbind /proc "$R/proc"
    mount --rbind /sys "$R/sys"      # with the cgroup mounts under /sys/fs/cgroup
    mount --rbind /dev "$R/dev"
    mount --bind /run/munge "$R/run/munge"
    mount --bind /etc "$R/.host-etc"; mount -o remount,bind,ro "$R/.host-etc"
    for b in "${@:1:n}"; do
      p=${b#*:}
      mount --bind "$p" "$R$p"
      [ "${b%%:*}" = ro ] && mount -o remount,bind,ro "$R$p"
    done
    shift "$n"
    exec chroot "$R" "$@"' in_root "$ROOT" "${#binds[@]}" "${binds[@]}" "$@"
}

write_wrappers() {
  local c
  install -d -m 0755 "$STATE/bin"
  for c in "${wrapped_cmds[@]}"; do
    [ -x "$ROOT/usr/bin/$c" ] || continue
    write_atomic "$STATE/bin/$c" 0755 <<EOF
#!/bin/sh
# Slurm 24.11's $c from the Debian 13 root (written by scripts/dev-cluster.sh). Runs the
# root's binary with the root's loader and libraries; inside the root, $ROOT is / .
exec $(r_ld) --library-path $(r_libs) $ROOT/usr/bin/$c "\$@"
EOF
  done
}

write_slurm_conf_2411() {
  local mem found cgplugin=cgroup/v1 swap=""
  found=$(in_root /usr/sbin/slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1 || true)
  mem=8000
  if [ -n "$found" ] && [ "$found" -lt "$mem" ]; then mem=$found; fi
  if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then
    cgplugin=cgroup/v2
  elif [ -e /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes ]; then
    swap="ConstrainSwapSpace=yes"
  fi
  write_atomic "$conf" 0644 <<EOF
# Dev cluster for slurm-yolo, Slurm 24.11 in a Debian 13 root (written by scripts/dev-cluster.sh; do not edit)
ClusterName=slurmyolo2411
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctl_port24
SlurmdPort=$slurmd_port24
# The root's plugins by their host path (client commands run on the host); inside the root
# this path is a symlink to /.
PluginDir=$ROOT/usr/lib/x86_64-linux-gnu/slurm-wlm
PlugStackConfig=$STATE/etc/plugstack.conf
$(slurm_conf_scheduling)
# Job IDs of their own: both dev clusters can run at once and share the store and cgroup tree.
FirstJobId=240000
# Several Epilog= lines (new in 24.05), run in order: a site epilog that records what Slurm
# shows an epilog (log/epilog-env/, for docs/admin.md's end-state table), then slurm-yolo's shim.
Epilog=$STATE/epilog.d/10-record-env
Epilog=$STATE/epilog
EpilogSlurmctld=$STATE/epilog.d/10-record-env
EpilogSlurmctld=$STATE/epilog
$(slurm_conf_state)
NodeName=$node24 NodeAddr=127.0.0.1 Port=$slurmd_port24 CPUs=2 RealMemory=$mem State=UNKNOWN
PartitionName=debug Default=YES Nodes=$node24 MaxTime=INFINITE State=UP OverSubscribe=FORCE:10 PriorityTier=1 GraceTime=10
PartitionName=urgent Nodes=$node24 MaxTime=INFINITE State=UP OverSubscribe=FORCE:10 PriorityTier=10 PreemptMode=OFF
EOF
  conf_changed=$written
  write_atomic "$STATE/etc/cgroup.conf" 0644 <<EOF
# written by scripts/dev-cluster.sh: $(stat -fc %T /sys/fs/cgroup) at /sys/fs/cgroup; see dev-cluster-2411.sh
CgroupPlugin=$cgplugin
ConstrainCores=no
ConstrainRAMSpace=yes
$swap
EOF
  [ "$written" = 1 ] && conf_changed=1
  [ -f "$STATE/etc/plugstack.conf" ] || write_atomic "$STATE/etc/plugstack.conf" 0644 </dev/null
  install -d -m 0755 "$STATE/epilog.d"
  # Runs as root in the root (no PATH). Only for slurm-yolo's jobs; Slurm sets SLURM_JOB_ID.
  write_atomic "$STATE/epilog.d/10-record-env" 0755 <<EOF
#!/bin/sh
# Records the environment and scontrol show job of each slurm-yolo job's epilog (written by
# scripts/dev-cluster.sh). A second Epilog= entry, as a site would have its own.
case "\$SLURM_JOB_COMMENT" in slurm-yolo:v1:*) ;; *) exit 0 ;; esac
case "\$SLURM_JOB_ID" in ''|*[!0-9]*) exit 0 ;; esac
d=$STATE/log/epilog-env
/usr/bin/mkdir -p -m 0700 \$d
f=\$d/\$SLURM_JOB_ID.r\${SLURM_JOB_RESTART_COUNT:-0}.\${SLURM_SCRIPT_CONTEXT:-unknown}
/usr/bin/env | /usr/bin/sort >\$f
echo "--- scontrol show job" >>\$f
SLURM_CONF=$conf /usr/bin/scontrol show job \$SLURM_JOB_ID >>\$f 2>&1
exit 0
EOF
}

ctl_pid24() { echo "$STATE/run/slurmctld.pid"; }
slurmd_pid24() { echo "$STATE/run/slurmd-$node24.pid"; }

start_slurm_2411() {
  export SLURM_CONF=$conf
  restart_if_conf_changed "$(ctl_pid24)" "$(slurmd_pid24)" "the 24.11"
  if pid_alive "$(ctl_pid24)" slurmctld; then
    log "slurmctld 24.11: already running"
  else
    log "slurmctld 24.11: starting in $ROOT"
    in_root /usr/sbin/slurmctld -f "$conf" || { slurm_logs_tail; die "slurmctld 24.11 failed to start"; }
  fi
  for _ in $(seq 1 100); do "$STATE/bin/scontrol" ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
  "$STATE/bin/scontrol" ping 2>/dev/null | grep -q 'is UP' || { slurm_logs_tail; die "slurmctld 24.11 does not answer"; }
  if pid_alive "$(slurmd_pid24)" slurmd; then
    log "slurmd 24.11: already running"
  else
    log "slurmd 24.11: starting node $node24 in $ROOT"
    in_root /usr/sbin/slurmd -f "$conf" -N "$node24" || { slurm_logs_tail; die "slurmd 24.11 failed to start"; }
  fi
  node_ready "$node24"
}

cmd_up_2411() {
  [ "$(id -u)" = 0 ] || die "run as root"
  install_packages   # munge, socat, ... for the host side (the 22.05 packages too: shared set-up)
  root_build
  make_dirs
  install -d -o root -g root -m 0755 "$STATE/slurmd-$node24"
  ensure_venv
  start_munge
  wire_root
  write_wrappers
  write_slurm_conf_2411
  write_epilog
  write_site_files
  start_store
  start_slurm_2411
  log "up (Slurm 24.11): state in $STATE; now run: eval \"\$($here/scripts/dev-cluster.sh env --slurm 24.11)\""
}

cmd_down_2411() {
  stop_pidfile "slurmd 24.11" "$(slurmd_pid24)" slurmd
  stop_pidfile "slurmctld 24.11" "$(ctl_pid24)" slurmctld
  # The store and munged belong to the 22.05 cluster's state (shared); munged only if we started it
  # and the 22.05 cluster does not use it.
  if [ -f "$STATE/munged.started" ] && ! pid_alive "$state2205/run/slurmctld.pid" slurmctld; then
    stop_pidfile munged "$munge_pidfile" munged
  fi
  rm -f "$STATE/munged.started"
  if ! pid_alive "$state2205/run/slurmctld.pid" slurmctld; then
    store_stop "$store_dir"
  else
    log "s3: used by the 22.05 cluster too; left running"
  fi
}

cmd_status_2411() {
  local ok=0
  if root_ready; then echo "root:      $ROOT (Debian 13, $(chroot "$ROOT" /usr/sbin/slurmd -V))"; else echo "root:      NOT BUILT ($ROOT)"; ok=1; fi
  status_lines "$(ctl_pid24)" "$(slurmd_pid24)" "$node24" || ok=1
  return $ok
}

# crash s2411: the node dies the hard way (SIGKILL by PID to its slurmd, every slurmstepd and
# every job and epilog process of it), as a power cut looks to Slurm. slurmctld and what it
# runs (EpilogSlurmctld) live on: they are "the controller host". The processes are those
# whose root is the Debian 13 root, less slurmctld's own process tree.
cmd_crash_2411() {
  local name=${1:-} ctl pids=() pid root
  [ "$name" = "$node24" ] || die "crash: the Slurm 24.11 cluster's node is $node24 (got '${name:-nothing}')"
  ctl=$( { tr -dc '0-9' <"$(ctl_pid24)"; } 2>/dev/null || true)
  declare -A ctl_tree=()
  [ -n "$ctl" ] && ctl_tree[$ctl]=1
  # ps lists parents before children only by pid order, so repeat until nothing is added.
  local changed=1 p pp
  while [ "$changed" = 1 ]; do
    changed=0
    while read -r p pp; do
      if [ -n "${ctl_tree[$pp]:-}" ] && [ -z "${ctl_tree[$p]:-}" ]; then ctl_tree[$p]=1; changed=1; fi
    done < <(ps -e -o pid=,ppid=)
  done
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [ "$pid" = $$ ] && continue
    root=$(readlink "$d/root" 2>/dev/null) || continue
    [ "$root" = "$ROOT" ] && [ -z "${ctl_tree[$pid]:-}" ] && pids+=("$pid")
  done
  log "crash $node24: SIGKILL to ${pids[*]:-nothing}"
  [ ${#pids[@]} -gt 0 ] && kill -KILL "${pids[@]}" 2>/dev/null || true
  rm -f "$(slurmd_pid24)"
}

cmd_revive_2411() {
  local name=${1:-}
  [ "$name" = "$node24" ] || die "revive: the Slurm 24.11 cluster's node is $node24 (got '${name:-nothing}')"
  conf_changed=0
  start_slurm_2411
}
