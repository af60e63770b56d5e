"""The import path ``catalog_seed`` of :mod:`tests.helpers.catalog_seed`, for the test files
that still import it by that name (tests/catalog sits on sys.path: it is not a package)."""

from tests.helpers.catalog_seed import (NOW, RESULTS_HEADER, archive_run, iso, make_line, results_csv, run_json,
                                        write_index, write_legacy_index)

__all__ = ["NOW", "RESULTS_HEADER", "archive_run", "iso", "make_line", "results_csv", "run_json", "write_index",
           "write_legacy_index"]
