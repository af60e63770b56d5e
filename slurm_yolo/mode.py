"""Which mode this cluster is in: a slurm-yolo node epilog archives runs, or (user mode) the
job archives itself and the user's own reconciler archives what the job could not.

One decision, read by the launcher (the line ``submit`` prints, the batch script it writes),
the job's self-archive on the node (which checks again: the epilog may have been put back
since the job was submitted) and ``slurm-yolo doctor``.

The cluster's configuration comes from ``scontrol show config``: Slurm 22.05 prints one
``Epilog = /path`` line, 24.05 and later one ``Epilog[N] = /path`` line per entry. An entry
is slurm-yolo's when its name says so (``slurm-yolo-epilog``, a ``slurm-yolo`` folder) or,
where this host can read it, when the script starts ``slurm_yolo.epilog.main`` (the shim in
``scripts/slurm-yolo-epilog.sh``, copied anywhere under any name). Only the node ``Epilog``
counts: an ``EpilogSlurmctld`` alone archives only the runs whose node died.

The user's reconciler is a line of theirs in ``scrontab`` or ``crontab`` ending with
:data:`RECONCILER_TAG` (written by ``slurm-yolo reconcile --user --install``).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from slurm_yolo.commands import run_command
from slurm_yolo.errors import CommandError, SiteConfigError
from slurm_yolo.site import SiteConfig, read_site_config, site_config_path

# The module the batch script runs to archive the job from inside it (user mode only).
SELF_ARCHIVE_MODULE = "slurm_yolo.epilog.usermode"
# Ends the one crontab/scrontab line `reconcile --user --install` writes: found and removed by it.
RECONCILER_TAG = "# slurm-yolo:user-reconciler"
SCRONTAB, CRONTAB = "scrontab", "crontab"
# How much of an epilog script is read to recognise the shim (it names the module in its first lines).
HEAD_BYTES = 64 << 10
# The shim runs `python -m slurm_yolo.epilog.main`; a site's own wrapper calls `slurm-yolo-epilog`.
_SHIM_MARKS = (b"slurm_yolo.epilog", b"slurm-yolo-epilog")
_NAME_RE = re.compile(r"slurm[-_]yolo", re.IGNORECASE)
_LINE_RE = re.compile(r"^(?P<key>[A-Za-z][A-Za-z0-9_]*)(?:\[\d+\])?\s*=\s*(?P<value>.*?)\s*$")
# Slurm's clients answer in milliseconds; a controller that takes longer is down.
SCONTROL_TIMEOUT_S = 20
# Where Slurm's clients look for their config when SLURM_CONF is not set.
SLURM_CONF_DEFAULTS = ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/usr/local/etc/slurm.conf")
# KillWait when scontrol does not say (Slurm's default).
DEFAULT_KILL_WAIT_S = 30
# The user's own folder in user mode (claims, spool, the reconciler's files), on the shared
# filesystem: ``$SLURM_YOLO_USER_STATE``, else ``~/.slurm-yolo``.
USER_STATE_ENV, USER_STATE_DIR = "SLURM_YOLO_USER_STATE", ".slurm-yolo"
# In it: the runs_roots the user submitted to in user mode, one a line (the reconciler's walk).
RUNS_ROOTS_FILE = "runs_roots"


def parse_show_config(text: str) -> dict[str, list[str]]:
    """``scontrol show config`` → ``{key: [values]}``; ``Key[N]`` lines (24.05+) gather
    under ``Key`` in order, ``(null)`` values are dropped."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = _LINE_RE.match(line)
        if not m:
            continue
        values = out.setdefault(m["key"], [])
        value = m["value"]
        if value and value != "(null)":
            values.append(value)
    return out


@dataclass(frozen=True)
class SlurmSetup:
    """What of the cluster's configuration matters to slurm-yolo.

    Attributes:
        epilogs: the node ``Epilog`` entries (paths or glob patterns).
        controller_epilogs: the ``EpilogSlurmctld`` entries.
        scron_enabled: ``ScronParameters`` has ``enable`` (users may keep a ``scrontab``).
        kill_wait_s: seconds between SIGTERM and SIGKILL when a job is ended (``KillWait``).
        accounting: ``AccountingStorageType`` is not ``accounting_storage/none`` (``sacct`` works).
    """

    epilogs: tuple[str, ...] = ()
    controller_epilogs: tuple[str, ...] = ()
    scron_enabled: bool = False
    kill_wait_s: int = DEFAULT_KILL_WAIT_S
    accounting: bool = False


def _seconds(values: Sequence[str], default: int) -> int:
    m = re.match(r"(\d+)", values[0]) if values else None
    return int(m.group(1)) if m else default


def slurm_setup(text: str) -> SlurmSetup:
    """The :class:`SlurmSetup` of one ``scontrol show config`` output."""
    conf = parse_show_config(text)
    entries = [p.strip() for v in conf.get("Epilog", []) for p in v.split(",") if p.strip()]
    controller = [p.strip() for v in conf.get("EpilogSlurmctld", []) for p in v.split(",") if p.strip()]
    scron = ",".join(conf.get("ScronParameters", [])).split(",")
    storage = (conf.get("AccountingStorageType") or ["accounting_storage/none"])[0]
    return SlurmSetup(tuple(entries), tuple(controller), "enable" in (s.strip() for s in scron),
                      _seconds(conf.get("KillWait", []), DEFAULT_KILL_WAIT_S), storage != "accounting_storage/none")


def read_heads(pattern: str) -> list[tuple[str, bytes | None]]:
    """Each file an epilog entry names (a glob, as Slurm expands it), with its first
    :data:`HEAD_BYTES` (``None`` where this host cannot read it)."""
    paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    out: list[tuple[str, bytes | None]] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                out.append((path, f.read(HEAD_BYTES)))
        except OSError:
            out.append((path, None))
    return out


def is_slurm_yolo_epilog(path: str, head: bytes | None) -> bool:
    """Whether an epilog script is slurm-yolo's: by its content where this host can read it
    (a site's other script in a ``slurm-yolo`` folder is not), else by its name."""
    if head is not None:
        return any(mark in head for mark in _SHIM_MARKS)
    return bool(_NAME_RE.search(path))


def epilog_installed(scontrol_config_text: str, *,
                     read: Callable[[str], list[tuple[str, bytes | None]]] = read_heads) -> bool:
    """Whether a slurm-yolo node epilog is configured (``scontrol show config``'s text).

    Args:
        scontrol_config_text: the output of ``scontrol show config``.
        read: expands one ``Epilog`` entry into ``(path, first bytes or None)`` pairs
            (:func:`read_heads`; tests pass their own).
    """
    for entry in slurm_setup(scontrol_config_text).epilogs:
        found = read(entry) or [(entry, None)]  # a pattern nothing matches here: judged by its name
        if any(is_slurm_yolo_epilog(path, head) for path, head in found):
            return True
    return False


def _slurm_env(env: Mapping[str, str]) -> tuple[str | None, dict[str, str]]:
    """scontrol's path, and the environment to run it in; ``None`` where Slurm cannot be asked
    from here (no scontrol on PATH, or no Slurm config: it would retry for a minute)."""
    scontrol = shutil.which("scontrol", path=env.get("PATH", os.defpath))
    conf = env.get("SLURM_CONF") or next((c for c in SLURM_CONF_DEFAULTS if os.path.isfile(c)), None)
    if scontrol is None or conf is None:
        return None, {}
    return scontrol, {"PATH": env.get("PATH", os.defpath), "SLURM_CONF": conf, "HOME": env.get("HOME", "/")}


def show_config(env: Mapping[str, str] | None = None) -> str | None:
    """``scontrol show config``'s text; ``None`` where Slurm cannot be asked or does not answer."""
    scontrol, run_env = _slurm_env(os.environ if env is None else env)
    if scontrol is None:
        return None
    try:
        proc = run_command([scontrol, "show", "config"], "mode", timeout=SCONTROL_TIMEOUT_S, env=run_env)
    except CommandError:
        return None
    return str(proc.stdout)


def reconciler_argvs(env: Mapping[str, str] | None = None) -> list[tuple[str, list[str]]]:
    """``(kind, argv)`` listing the user's table, for each of scrontab and crontab found on PATH."""
    env = os.environ if env is None else env
    out = []
    for kind in (SCRONTAB, CRONTAB):
        path = shutil.which(kind, path=env.get("PATH", os.defpath))
        if path:
            out.append((kind, [path, "-l"]))
    return out


def has_reconciler_line(table: str) -> bool:
    """Whether a crontab/scrontab listing holds the line ``reconcile --user --install`` wrote."""
    return any(line.rstrip().endswith(RECONCILER_TAG) and not line.lstrip().startswith("#")
               for line in table.splitlines())


def user_reconciler_installed(env: Mapping[str, str] | None = None) -> str | None:
    """Where this user's reconciler is installed: ``"scrontab"``, ``"crontab"`` or ``None``."""
    env = dict(os.environ if env is None else env)
    for kind, argv in reconciler_argvs(env):
        try:
            proc = run_command(argv, "mode", timeout=SCONTROL_TIMEOUT_S, env=env, check=False)
        except CommandError:
            continue
        if proc.returncode == 0 and has_reconciler_line(proc.stdout):
            return kind
    return None


@dataclass(frozen=True)
class Mode:
    """The mode a submission runs in.

    Attributes:
        epilog: a slurm-yolo node epilog is configured (``None``: Slurm could not be asked).
        reconciler: where the user's reconciler is installed (user mode only), or ``None``.
        setup: the cluster's configuration (``None`` when Slurm could not be asked).
    """

    epilog: bool | None
    reconciler: str | None = None
    setup: SlurmSetup | None = None

    @property
    def user_mode(self) -> bool:
        """The job archives itself: Slurm answered, and no slurm-yolo epilog is configured."""
        return self.epilog is False

    def line(self) -> str | None:
        """The one line submit prints in user mode (``None`` otherwise)."""
        if not self.user_mode:
            return None
        where = (f"installed ({self.reconciler})" if self.reconciler else
                 "NOT installed: run `slurm-yolo reconcile --user --install` once")
        return (f"user mode: this cluster has no slurm-yolo epilog; runs are archived by the job itself and by "
                f"`slurm-yolo reconcile --user`, which is {where}")


def public_site(env: Mapping[str, str] | None = None) -> SiteConfig | None:
    """The site config as users read it, where there is a readable, valid one (else ``None``)."""
    path = site_config_path(dict(os.environ if env is None else env))
    if not os.access(path, os.R_OK):
        return None
    try:
        return read_site_config(path)
    except SiteConfigError:
        return None


def user_index_url(env: Mapping[str, str] | None = None) -> str | None:
    """The index a user's own archivers write to in user mode: ``$SLURM_YOLO_INDEX``, else the
    readable site config's ``index_url`` (``None``: neither, nothing could be indexed)."""
    env = os.environ if env is None else env
    site = public_site(env)
    return env.get("SLURM_YOLO_INDEX") or (site.index_url if site else None)


def user_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """The user's folder for user mode's claims, spool and reconciler files."""
    env = os.environ if env is None else env
    if env.get(USER_STATE_ENV):
        return Path(env[USER_STATE_ENV])
    return Path(env.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir) / USER_STATE_DIR


def remembered_runs_roots(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The runs_roots this user submitted to in user mode (what their reconciler walks)."""
    try:
        text = (user_state_dir(env) / RUNS_ROOTS_FILE).read_text()
    except OSError:
        return ()
    return tuple(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip().startswith("/")))


def remember_runs_root(root: str, env: Mapping[str, str] | None = None) -> None:
    """Add ``root`` to :func:`remembered_runs_roots`; a folder that cannot be written is skipped
    (the reconciler still finds the jobs Slurm lists)."""
    if root in remembered_runs_roots(env):
        return
    state = user_state_dir(env)
    try:
        state.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(state / RUNS_ROOTS_FILE, "a", encoding="utf-8") as f:
            f.write(root + "\n")
    except OSError:
        pass


def detect(env: Mapping[str, str] | None = None) -> Mode:
    """The mode of this cluster for this user: one ``scontrol show config``, and in user mode
    a look at the user's scrontab/crontab."""
    env = os.environ if env is None else env
    text = show_config(env)
    if text is None:
        return Mode(None)
    if epilog_installed(text):
        return Mode(True, setup=slurm_setup(text))
    return Mode(False, user_reconciler_installed(env), slurm_setup(text))
