"""Portal fixtures: a clean store environment, a seeded catalog, a headless Chromium."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from slurm_yolo.catalog.index import Catalog

# The runs are seeded the way tests/catalog seeds them (catalog_seed.py), as an epilog would.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "catalog"))


@pytest.fixture(autouse=True)
def _no_outside_store_settings(monkeypatch):
    """Like tests/catalog: the suite also runs inside the dev cluster's shell; these tests must
    only see the store they set up."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "S3_", "SLURM_YOLO_", "MLFLOW_")) and key != "AWS_CA_BUNDLE":
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_YOLO_SITE_CONFIG", "/nonexistent/site.yaml")


@pytest.fixture
def cat(store, bucket) -> Catalog:
    return Catalog(store, f"s3://{bucket}/index/")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    """Where screenshots go: $SLURM_YOLO_ARTIFACTS/report if set (CI keeps it), else a tmp folder.

    The path is printed so a person can open the screenshots after a run (pytest -s, or the log).
    """
    base = os.environ.get("SLURM_YOLO_ARTIFACTS")
    path = Path(base) / "report" if base else tmp_path_factory.mktemp("report-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nportal screenshots: {path}")
    return path


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's headless Chromium driven by selenium, with console logs readable.

    Skipped (not failed) where Chromium is not installed: scripts/setup.sh installs it.
    """
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("chromium + chromium-driver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
