#!/usr/bin/env bash
# A Debian 13 ("trixie") root with Slurm 24.11 for the dev cluster, made with debootstrap and
# cached between runs. Installing Debian 13's Slurm on this Debian 12 host would mix releases;
# in a root of its own, Slurm 24.11 runs with the libraries it was built against.
#
# Usage: scripts/slurm-root.sh build|path|check|mirror
#   build  build the root unless a complete one is cached (a marker file, written last, says
#          it is complete and for which package list); idempotent
#   path   print the root's path
#   check  exit 0 if a complete root is cached
#   mirror print the Debian mirror a build would use
# Also sourced by scripts/dev-cluster.sh (functions root_build, root_ready).
#
# Environment:
#   SLURM_YOLO_ROOT_CACHE     where roots are cached (default /var/cache/slurm-yolo)
#   SLURM_YOLO_DEBIAN_MIRROR  Debian mirror (default: the Debian archive this machine's apt
#                             uses: the deb822 `URIs:` of /etc/apt/sources.list.d/*.sources, or
#                             the `deb URL SUITE` lines of /etc/apt/sources.list and
#                             sources.list.d/*.list)
#   SLURM_YOLO_APT_SOURCES    where to read those (default /etc/apt; for tests)
#
# Measured on the 2-core dev machine: a fresh build (download + unpack of ~150 packages,
# ~400 MB on disk) takes about 1-2 minutes; a cached root costs nothing.
set -euo pipefail

root_cache=${SLURM_YOLO_ROOT_CACHE:-/var/cache/slurm-yolo}
root_suite=trixie
ROOT="$root_cache/$root_suite-slurm-24.11"
root_apt=${SLURM_YOLO_APT_SOURCES:-/etc/apt}
# Slurm 24.11.5 and munge from Debian 13, plus the shared libraries that the host's
# Python 3.11 venv (bound into the root, see scripts/dev-cluster.sh) loads and Debian 13's
# minbase lacks: libffi8 (ctypes), libgl1 + libglib2.0-0t64 + libsm6 + libice6 (opencv's cv2,
# which ultralytics imports). `hostname` for job scripts that call it.
root_packages=slurmd,slurmctld,slurm-client,munge,libffi8,libgl1,libglib2.0-0t64,libsm6,libice6,hostname
root_marker="$ROOT/.slurm-yolo-root-complete"

root_log() { printf '[slurm-root] %s\n' "$*" >&2; }
root_die() { printf '[slurm-root] ERROR: %s\n' "$*" >&2; exit 1; }

# root_apt_mirror: the URL of the Debian archive this machine's apt already uses (a site's own
# mirror, a proxy, a snapshot), printed; non-zero if none is found. The archive, not the
# security or updates archives: a stanza or line with a suite without a "-" (bookworm, not
# bookworm-security) and the component main. deb822 files first, then the one-line format.
root_apt_mirror() {
  local f found=""
  for f in "$root_apt"/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    found=$(awk '
      function flush() { if (types ~ /(^| )deb( |$)/ && main && plain && uri != "" && !done) { print uri; done = 1 }
                         types = ""; uri = ""; main = 0; plain = 0 }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      { key = tolower($1); sub(/:$/, "", key) }
      key == "types" { $1 = ""; types = $0 " " }
      key == "uris" { uri = $2 }
      key == "suites" { for (i = 2; i <= NF; i++) if ($i !~ /-/) plain = 1 }
      key == "components" { for (i = 2; i <= NF; i++) if ($i == "main") main = 1 }
      key == "enabled" && tolower($2) == "no" { types = "" }
      END { flush() }' "$f")
    [ -n "$found" ] && break
  done
  for f in "$root_apt/sources.list" "$root_apt"/sources.list.d/*.list; do
    [ -z "$found" ] && [ -f "$f" ] || continue
    # deb [options] URL SUITE COMPONENT...
    found=$(awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                               if ($(i + 1) !~ /-/) { for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; exit } } }' "$f")
  done
  case "$found" in
    http://*|https://*|ftp://*|file:/*) printf '%s\n' "${found%/}" ;;
    *) return 1 ;;
  esac
}

# root_mirror: SLURM_YOLO_DEBIAN_MIRROR if set, else the machine's own (root_apt_mirror).
root_mirror() {
  if [ -n "${SLURM_YOLO_DEBIAN_MIRROR:-}" ]; then printf '%s\n' "$SLURM_YOLO_DEBIAN_MIRROR"; return 0; fi
  root_apt_mirror && return 0
  root_die "no Debian archive in $root_apt/sources.list.d/*.sources or $root_apt/sources.list: set SLURM_YOLO_DEBIAN_MIRROR to your Debian mirror"
}

root_ready() {  # a complete root for this package list is cached
  [ -s "$root_marker" ] && [ "$(head -n1 "$root_marker")" = "$root_packages" ] \
    && [ -x "$ROOT/usr/sbin/slurmd" ] && [ -x "$ROOT/usr/bin/sbatch" ]
}

root_build() {
  [ "$(id -u)" = 0 ] || root_die "run as root (debootstrap needs it)"
  if root_ready; then
    root_log "root: cached at $ROOT"
    return 0
  fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    root_log "apt-get install debootstrap"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
        || root_die "apt-get install debootstrap failed"
    fi
  fi
  [ -e /usr/share/debootstrap/scripts/$root_suite ] \
    || root_die "this debootstrap does not know '$root_suite' (apt-get install -t bookworm-backports debootstrap)"
  local partial="$ROOT.partial" started mirror
  mirror=$(root_mirror)
  # Never rm -rf a folder that might still have something mounted inside it.
  if [ -d "$partial" ] && grep -q " $partial" /proc/self/mountinfo; then
    root_die "$partial has mounts under it; unmount them first"
  fi
  rm -rf "$partial"
  mkdir -p "$root_cache"
  started=$(date +%s)
  root_log "debootstrap $root_suite into $partial (mirror $mirror); a few minutes on a fresh machine"
  if ! debootstrap --variant=minbase --include="$root_packages" \
      --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
      "$root_suite" "$partial" "$mirror" >"$root_cache/debootstrap.log" 2>&1; then
    tail -n 15 "$root_cache/debootstrap.log" >&2
    root_die "debootstrap failed (log: $root_cache/debootstrap.log)"
  fi
  chroot "$partial" /usr/sbin/slurmd -V >/dev/null || root_die "slurmd does not run in the new root"
  # Keep the root small: the .deb files are not needed once unpacked.
  rm -f "$partial"/var/cache/apt/archives/*.deb
  if [ -d "$ROOT" ]; then
    grep -q " $ROOT/" /proc/self/mountinfo && root_die "$ROOT is in use (mounts under it); stop its cluster first"
    rm -rf "$ROOT"
  fi
  mv "$partial" "$ROOT"
  # The marker last: a root without it is rebuilt.
  printf '%s\nbuilt %s in %s s; %s\n' "$root_packages" "$(date -u +%FT%TZ)" "$(( $(date +%s) - started ))" \
    "$(chroot "$ROOT" /usr/sbin/slurmd -V)" >"$root_marker"
  root_log "root: built in $(( $(date +%s) - started )) s: $ROOT ($(du -sh "$ROOT" | cut -f1))"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    build) root_build ;;
    path) echo "$ROOT" ;;
    check) root_ready ;;
    mirror) root_mirror ;;
    *) echo "usage: $0 build|path|check|mirror" >&2; exit 2 ;;
  esac
fi
