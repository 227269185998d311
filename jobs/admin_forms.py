"""Moved to jobs.forms. Kept only while pyproject.toml's import-linter contract names this module; delete both."""

from jobs.forms import JobCreateForm, parse_tags

__all__ = ["JobCreateForm", "parse_tags"]
