"""The portal tests see only the store they set up (the fixtures are in tests/fixtures/)."""

import pytest


@pytest.fixture(autouse=True)
def _no_outside_store_settings(no_outside_store_settings):
    """The suite also runs inside the dev cluster's shell: no outside store settings here."""
