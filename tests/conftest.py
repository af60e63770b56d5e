"""The suite's only root conftest: it registers the shared fixtures, which live in
``tests/fixtures/`` (plugins), and nothing else. Helpers that test files import live in
``tests/helpers/``; a test file never imports a conftest.

pytest accepts ``pytest_plugins`` only here, in the first conftest it loads.
"""

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.environment",
    "tests.fixtures.catalog",
    "tests.fixtures.browser",
    "tests.fixtures.needs",
]
