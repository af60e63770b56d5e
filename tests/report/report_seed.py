"""The import path ``report_seed`` of :mod:`tests.helpers.report_seed`, for the test files
that still import it by that name (tests/report sits on sys.path: it is not a package)."""

from tests.helpers.report_seed import (ALLOWED, HOSTILE, HOSTILE_PROJECT, allowed, args_yaml, dumps, image, record, seed,
                                       update_line)

__all__ = ["ALLOWED", "HOSTILE", "HOSTILE_PROJECT", "allowed", "args_yaml", "dumps", "image", "record", "seed",
           "update_line"]
