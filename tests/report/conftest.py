"""The portal tests see only the store they set up (the fixtures are in tests/fixtures/)."""

import sys
from pathlib import Path

import pytest

# test_mlflow.py imports ``catalog_seed`` by its bare name, which resolves only with
# tests/catalog on sys.path; ``from tests.helpers.catalog_seed import ...`` needs no such line.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "catalog"))


@pytest.fixture(autouse=True)
def _no_outside_store_settings(no_outside_store_settings):
    """The suite also runs inside the dev cluster's shell: no outside store settings here."""
