"""Type checks: mypy over the package."""
