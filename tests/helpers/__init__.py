"""Plain modules that test files import (seeders, builders): helpers, not fixtures.

Fixtures live in ``tests/fixtures/`` (pytest plugins registered by ``tests/conftest.py``); a
test file never imports a ``conftest.py``.
"""
