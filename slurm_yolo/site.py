"""The admin's site config (``/etc/slurm-yolo/site.yaml``): one room, shared by every layer.

Root acts on it (the epilog, the drain, the reconciler: :func:`load_site_config`, which checks
the file can be trusted); users' processes read its public settings (the launcher, the
catalog, the portal: :func:`read_site_config`).

Example::

    store:
      endpoint_url: https://s3.eu-west-1.amazonaws.com   # or MinIO; omit for AWS default
      region: eu-west-1
      credentials_file: /etc/slurm-yolo/credentials      # AWS INI format, root-only (0600)
      profile: default
      atomic_conditional_writes: true                    # AWS S3, SeaweedFS; not moto
    allowed_prefix: "s3://ai-training-logs/runs/{user}/" # a run may only land under this
    index_url: "s3://ai-training-logs/index/"
    spool_dir: /var/spool/slurm-yolo
    log_file: /var/log/slurm-yolo/epilog.log
    time_budget_s: 120      # the epilog always exits 0 within this
    s5cmd_workers: 64
    scontrol: true          # allow one `scontrol show job` per job to tell time-out from cancel
    claim_dir: /shared/slurm-yolo/claims  # multi-node: on a filesystem all nodes + controller share
    slurm_conf: /etc/slurm/slurm.conf     # for scontrol/squeue where Slurm does not set SLURM_CONF
    runs_roots: [/shared/runs]            # without accounting, the reconciler walks these
    metrics_textfile: /var/lib/prometheus/node-exporter/slurm-yolo.prom  # null: no metrics
    storage_cost_per_gb_month: {STANDARD: 0.023, STANDARD_IA: 0.0125}   # for `store usage`

The file is trusted only if root owns it and nobody else can write it (it decides where
root copies files to). The credentials file must be readable by root alone: job processes
never see the site credentials.
"""

from __future__ import annotations

import os
import stat
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import yaml

from slurm_yolo.store import Store, split_url
from slurm_yolo.errors import SiteConfigError

DEFAULT_PATH = "/etc/slurm-yolo/site.yaml"
ENV_VAR = "SLURM_YOLO_SITE_CONFIG"

_KEYS = {"store", "allowed_prefix", "index_url", "spool_dir", "log_file", "time_budget_s", "s5cmd_workers",
         "scontrol", "scontrol_path", "s5cmd_path", "claim_dir", "slurm_conf", "squeue_path", "metrics_textfile",
         "storage_cost_per_gb_month", "sacct_path", "runs_roots"}
_STORE_KEYS = {"endpoint_url", "region", "credentials_file", "profile", "atomic_conditional_writes"}


@dataclass(frozen=True)
class SiteConfig:
    """Validated site settings (see the module docstring for the file format)."""

    path: str
    store: Store
    allowed_prefix: str
    index_url: str
    spool_dir: str = "/var/spool/slurm-yolo"
    log_file: str = "/var/log/slurm-yolo/epilog.log"
    time_budget_s: float = 120.0
    s5cmd_workers: int = 64
    scontrol: bool = True
    scontrol_path: str = "/usr/bin/scontrol"
    # Who archives an attempt is decided by a claim file here (epilog/claim.py). It must be on
    # a filesystem that every node, the controller and the reconciler share; the default,
    # inside the node's spool, is only right for one-node set-ups.
    claim_dir: str = ""
    slurm_conf: str | None = None
    squeue_path: str = "/usr/bin/squeue"
    # Prometheus metrics in node_exporter's textfile format (epilog/metrics.py); None: none.
    # The default is the textfile folder of Debian's prometheus-node-exporter.
    metrics_textfile: str | None = "/var/lib/prometheus/node-exporter/slurm-yolo.prom"
    # $/GB-month per S3 storage class, for `store usage`'s cost estimate; None: no estimate.
    storage_cost_per_gb_month: Mapping[str, float] | None = None
    sacct_path: str = "/usr/bin/sacct"
    # Where users' run folders live (their runs_root): a reconciler on a cluster without
    # accounting walks them for runs whose job slurmctld already forgot.
    runs_roots: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.claim_dir:
            object.__setattr__(self, "claim_dir", os.path.join(self.spool_dir, ".claims"))


# The settings an admin may leave out, and what they are then: SiteConfig's own defaults, the
# one place they are written (docs/admin.md shows the same table).
DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {f.name: f.default for f in fields(SiteConfig) if f.default is not MISSING})
# The ranges the numbers must lie in.
BOUNDS: Mapping[str, tuple[float, float]] = MappingProxyType({"time_budget_s": (5.0, 3600.0),
                                                              "s5cmd_workers": (1.0, 1024.0)})


def site_config_path(env: dict[str, str] | None = None) -> str:
    """``$SLURM_YOLO_SITE_CONFIG`` or ``/etc/slurm-yolo/site.yaml``."""
    env = os.environ if env is None else env
    return env.get(ENV_VAR) or DEFAULT_PATH


def check_trusted_file(path: str, what: str, *, private: bool = False) -> os.stat_result:
    """Refuse a file root would act on unless root owns it and others cannot write (or read) it."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError as e:
        raise SiteConfigError(f"{what} {path} does not exist; create it (see docs/admin.md)") from e
    if not stat.S_ISREG(st.st_mode):
        raise SiteConfigError(f"{what} {path} must be a regular file (not a symlink or device)")
    if st.st_uid != 0 and os.geteuid() == 0:
        raise SiteConfigError(f"{what} {path} must be owned by root: chown root:root {path}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SiteConfigError(f"{what} {path} is writable by group/others: chmod go-w {path}")
    if private and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SiteConfigError(f"{what} {path} is readable by group/others: chmod 600 {path}")
    return st


def load_site_config(path: str | None = None) -> SiteConfig:
    """The site config as root acts on it (the epilog, the drain, the reconciler).

    The file must be root-owned and not writable by others, and its credentials file
    readable by root alone: it decides where root copies users' files to.

    Raises:
        SiteConfigError: naming the file, the key and the fix.
    """
    path = path or site_config_path()
    check_trusted_file(path, "site config")
    site = _parse(_read_yaml(path), path)
    if site.store.credentials_file:
        check_trusted_file(site.store.credentials_file, "credentials file", private=True)
    return site


def read_site_config(path: str | None = None) -> SiteConfig:
    """The site config as a user's process reads it (the launcher checks ``archive.url``
    against ``allowed_prefix``, the catalog finds ``index_url``): validated, but neither its
    owner nor the root-only credentials file is checked, and nothing in it is acted on as root.

    Raises:
        SiteConfigError: naming the file, the key and the fix.
    """
    path = path or site_config_path()
    return _parse(_read_yaml(path), path)


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as e:
        raise SiteConfigError(f"site config {path} does not exist; create it (see docs/admin.md)") from e
    except (OSError, yaml.YAMLError) as e:
        raise SiteConfigError(f"site config {path} cannot be read as YAML: {e}") from e
    if not isinstance(raw, dict):
        raise SiteConfigError(f"site config {path} must be a YAML mapping")
    unknown = set(raw) - _KEYS
    if unknown:
        raise SiteConfigError(f"site config {path}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    return raw


def _check_urls(raw: dict[str, Any], path: str) -> None:
    for key in ("allowed_prefix", "index_url"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.startswith("s3://"):
            raise SiteConfigError(f"site config {path}: {key} must be an s3:// URL")
        split_url(value.replace("{user}", "u"))
    if "{user}" not in raw["allowed_prefix"]:
        raise SiteConfigError(f"site config {path}: allowed_prefix must contain {{user}} so users cannot "
                              "overwrite each other's runs, e.g. s3://bucket/runs/{user}/")


def _numbers(raw: dict[str, Any], path: str) -> tuple[float, int]:
    try:
        budget = float(raw.get("time_budget_s", DEFAULTS["time_budget_s"]))
        workers = int(raw.get("s5cmd_workers", DEFAULTS["s5cmd_workers"]))
    except (TypeError, ValueError) as e:
        raise SiteConfigError(f"site config {path}: time_budget_s and s5cmd_workers must be numbers") from e
    (low_b, high_b), (low_w, high_w) = BOUNDS["time_budget_s"], BOUNDS["s5cmd_workers"]
    if not low_b <= budget <= high_b or not low_w <= workers <= high_w:
        raise SiteConfigError(f"site config {path}: time_budget_s must be {low_b:g}..{high_b:g} and "
                              f"s5cmd_workers {low_w:g}..{high_w:g}")
    for key in ("spool_dir", "log_file", "claim_dir", "slurm_conf"):
        if key in raw and not os.path.isabs(str(raw[key])):
            raise SiteConfigError(f"site config {path}: {key} must be an absolute path")
    return budget, workers


def _optional(raw: dict[str, Any], path: str) -> dict[str, Any]:
    """The optional keys of the admin's view: the metrics file and the storage rates."""
    out: dict[str, Any] = {}
    if "metrics_textfile" in raw:
        value = raw["metrics_textfile"]
        # node_exporter's textfile collector reads *.prom only: any other name is never scraped.
        if value is not None and (not isinstance(value, str) or not os.path.isabs(value) or not value.endswith(".prom")):
            raise SiteConfigError(f"site config {path}: metrics_textfile must be an absolute path ending in .prom "
                                  "(node_exporter's textfile collector reads only those), or null for no metrics")
        out["metrics_textfile"] = value
    rates = raw.get("storage_cost_per_gb_month")
    if rates is not None:
        if not isinstance(rates, dict) or not rates or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                for k, v in rates.items()):
            raise SiteConfigError(f"site config {path}: storage_cost_per_gb_month must map S3 storage classes to "
                                  "$/GB-month rates, e.g. {STANDARD: 0.023, STANDARD_IA: 0.0125}")
        out["storage_cost_per_gb_month"] = MappingProxyType({k.upper(): float(v) for k, v in rates.items()})
    return out


def _parse(raw: dict[str, Any], path: str) -> SiteConfig:
    store_raw: dict[str, Any] = raw.get("store") or {}
    if not isinstance(store_raw, dict) or set(store_raw) - _STORE_KEYS:
        raise SiteConfigError(f"site config {path}: store must be a mapping with keys {sorted(_STORE_KEYS)}")
    _check_urls(raw, path)
    budget, workers = _numbers(raw, path)
    return SiteConfig(
        path=path,
        store=Store(endpoint_url=store_raw.get("endpoint_url"), region=store_raw.get("region") or "us-east-1",
                    credentials_file=store_raw.get("credentials_file"), profile=store_raw.get("profile"),
                    s5cmd=raw.get("s5cmd_path"),
                    # true for AWS S3, SeaweedFS: the index then keeps no race-tolerance delay
                    atomic_conditional_writes=store_raw.get("atomic_conditional_writes") is True),
        allowed_prefix=raw["allowed_prefix"],
        index_url=raw["index_url"].rstrip("/") + "/",
        time_budget_s=budget,
        s5cmd_workers=workers,
        # What the admin left out takes the dataclass's default (DEFAULTS): written once.
        **{k: str(raw[k]) for k in ("spool_dir", "log_file", "scontrol_path", "squeue_path") if k in raw},
        **({"scontrol": bool(raw["scontrol"])} if "scontrol" in raw else {}),
        **({"claim_dir": str(raw["claim_dir"])} if raw.get("claim_dir") else {}),
        **({"slurm_conf": str(raw["slurm_conf"])} if raw.get("slurm_conf") else {}),
        **({"sacct_path": str(raw["sacct_path"])} if raw.get("sacct_path") else {}),
        **({"runs_roots": _runs_roots(raw["runs_roots"], path)} if raw.get("runs_roots") else {}),
        **_optional(raw, path),
    )


def _runs_roots(value: Any, path: str) -> tuple[str, ...]:
    roots = [value] if isinstance(value, str) else value
    if not isinstance(roots, list) or not all(isinstance(r, str) and os.path.isabs(r) for r in roots):
        raise SiteConfigError(f"site config {path}: runs_roots must be a list of absolute paths, "
                              "e.g. [/shared/runs]")
    return tuple(roots)
