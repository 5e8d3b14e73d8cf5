"""Hypothesis profiles, registered once.

- `ci`: derandomized, no example database, a fixed budget: the same run on every machine. It
  replaces Hypothesis's built-in `ci` profile (loaded when `CI` is set) on purpose.
- `dev`: random, with the local example database, a quick budget.
- `thorough`: random and long, for exploration before a release.

Pick one with `pytest --hypothesis-profile NAME`, or `HYPOTHESIS_PROFILE=NAME`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    stateful_step_count=60,
)

settings.register_profile(
    "ci", _common, derandomize=True, database=None, max_examples=300, print_blob=True
)
settings.register_profile("dev", _common, max_examples=100)
settings.register_profile("thorough", _common, max_examples=2000, stateful_step_count=120)

PROFILES = ("ci", "dev", "thorough")


def default_profile() -> str:
    explicit = os.environ.get("HYPOTHESIS_PROFILE")
    if explicit:
        return explicit
    return "ci" if os.environ.get("CI") else "dev"


def load_default() -> str:
    name = default_profile()
    settings.load_profile(name)
    return name
