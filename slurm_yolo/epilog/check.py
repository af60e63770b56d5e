"""``slurm-yolo-epilog --check``: validate a node's installation and say what is wrong."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from slurm_yolo.errors import SlurmYoloError
from slurm_yolo.archive import s5cmd
from slurm_yolo.site import SiteConfig, load_site_config, site_config_path


def checks(site_path: str) -> list[tuple[bool, str]]:
    """(ok, message) for each thing an admin must get right; stops at a broken site config."""

    results: list[tuple[bool, str]] = []
    try:
        site = load_site_config(site_path)
    except SlurmYoloError as e:
        return [(False, str(e))]
    results.append((True, f"site config {site_path}: root-owned, valid"))
    binary = site.store.s5cmd or s5cmd.binary()
    usable = os.access(binary, os.X_OK)
    results.append((usable, f"s5cmd binary {binary}" + ("" if usable else " is missing or not executable: "
                                                         + s5cmd.ERROR_HINTS[s5cmd.ErrorClass.NO_BINARY])))
    spool = Path(site.spool_dir)
    if spool.exists():
        st = spool.stat()
        private = st.st_uid == 0 and not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
        results.append((private, f"spool {spool}" + ("" if private else f" must be root-only: chmod 700 {spool}")))
    else:
        results.append((True, f"spool {spool} will be created (0700) on first use"))
    results.append(_claim_dir(site))
    scontrol_ok = not site.scontrol or os.access(site.scontrol_path, os.X_OK)
    results.append((scontrol_ok, f"scontrol {site.scontrol_path}" + ("" if scontrol_ok else
                                                                       " not found: set scontrol_path or scontrol: false")))
    # Runs and the index may live in different buckets: both must be reachable.
    buckets = dict.fromkeys(url.removeprefix("s3://").split("/", 1)[0] for url in (site.allowed_prefix, site.index_url))
    results.extend(_reachable(site, bucket) for bucket in buckets if "{" not in bucket)
    return results


def _claim_dir(site: SiteConfig) -> tuple[bool, str]:
    """The claims folder: root-only, and (multi-node sites) shared; we can only say where it is."""
    claims = Path(site.claim_dir)
    shared = "" if not claims.is_relative_to(site.spool_dir) else \
        " (inside the node's spool: right for one node; multi-node sites set claim_dir to a shared folder)"
    if not claims.exists():
        return True, f"claims {claims} will be created (0700) on first use{shared}"
    st = claims.stat()
    if st.st_uid != 0 or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return False, f"claims {claims} must be root-only: chown root {claims} && chmod 700 {claims}"
    writable = os.access(claims, os.W_OK)
    return writable, f"claims {claims}" + (shared if writable else " is not writable: check the mount")


def _reachable(site: SiteConfig, bucket: str) -> tuple[bool, str]:
    try:
        site.store.boto3_client().head_bucket(Bucket=bucket)
    except Exception as e:  # botocore raises many kinds; all mean "not usable"
        return False, (f"store {site.store.endpoint_url or 'AWS'} bucket {bucket}: not reachable with the site "
                       f"credentials ({' '.join(str(e).split())[:200]}); check endpoint_url, credentials_file, bucket")
    return True, f"store {site.store.endpoint_url or 'AWS'} bucket {bucket}: reachable"


def main(argv: list[str]) -> int:

    p = argparse.ArgumentParser(prog="slurm-yolo-epilog", description=(
        "Slurm node epilog of slurm-yolo. Without arguments it runs as the epilog (slurmd sets its "
        "environment). With --check it validates this node's installation."))
    p.add_argument("--check", action="store_true", help="validate the site config, spool, s5cmd and the store")
    p.add_argument("--site-config", default=None, help="site config to check (default: $SLURM_YOLO_SITE_CONFIG "
                                                       "or /etc/slurm-yolo/site.yaml)")
    args = p.parse_args(argv)
    if not args.check:
        p.print_help()
        return 2
    ok = True
    for good, message in checks(args.site_config or site_config_path()):
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {message}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
