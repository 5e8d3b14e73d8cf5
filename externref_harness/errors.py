"""Errors that mean "bad input": the command line reports them as one line and exits 2."""

from __future__ import annotations


class UsageError(Exception):
    """Bad arguments or bad input from the user."""
