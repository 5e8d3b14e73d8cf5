"""Hypothesis profiles, registered once.

- `ci`: derandomized, no example database, a fixed budget: the same run on every machine. It
  replaces Hypothesis's built-in `ci` profile (loaded when `CI` is set) on purpose.
- `dev`: random, with the local example database, the budget that catches every seeded bug in
  every one of 20 random runs (`benchmarks/detection.py`).
- `thorough`: random and long, for exploration before a release.

Pick one with `pytest --hypothesis-profile NAME`, or `HYPOTHESIS_PROFILE=NAME`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, configuration, settings

#: The `dev` profile's examples per search (see `benchmarks/detection.py`).
DEV_EXAMPLES = 1000

_common = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    stateful_step_count=60,
)

settings.register_profile(
    "ci", _common, derandomize=True, database=None, max_examples=300, print_blob=True
)
# `dev`'s budget is what catches every seeded bug in 20 of 20 random runs (`benchmarks/detection.py`):
# at 100 examples the bugs that need a GC deep in Wasm (CVE-2021-39218: a stale stack map read
# after a scalar overwrote a ref slot) were missed in up to 12 of 20 runs, at 500 in 1 of 20; the C
# bugs that omit a debug assertion needed up to 574 examples (a misuse drawn in the right state).
settings.register_profile("dev", _common, max_examples=DEV_EXAMPLES)
settings.register_profile("thorough", _common, max_examples=2000, stateful_step_count=120)

PROFILES = ("ci", "dev", "thorough")


class UnknownProfile(ValueError):
    """`HYPOTHESIS_PROFILE` names no profile of this project (bad input: the CLI exits 2)."""


def default_profile() -> str:
    """`$HYPOTHESIS_PROFILE` if set, else `ci` when `CI` is set, else `dev`."""
    explicit = os.environ.get("HYPOTHESIS_PROFILE")
    if explicit:
        if explicit not in PROFILES:
            plain = len(explicit) <= 40 and explicit.isprintable()
            shown = explicit if plain else ascii(explicit)[:40] + "..."
            raise UnknownProfile(
                f"$HYPOTHESIS_PROFILE={shown} is not a profile; choose from {', '.join(PROFILES)}"
            )
        return explicit
    return "ci" if os.environ.get("CI") else "dev"


@contextmanager
def hypothesis_storage(profile: settings) -> Iterator[None]:
    """Hypothesis keeps its example database and a cache of constants from the source in
    `.hypothesis/` of the working directory. A profile without a database (`ci`) keeps nothing, so
    its runs point that storage at a temporary directory removed afterwards; the others keep the
    local database, as documented."""
    if profile.database is not None:
        yield
        return
    previous = configuration.storage_directory(intent_to_write=False).home_directory
    with tempfile.TemporaryDirectory(prefix="externref-harness-hypothesis-") as tmp:
        configuration.set_hypothesis_home_dir(tmp)
        try:
            yield
        finally:
            configuration.set_hypothesis_home_dir(previous)


def load_default() -> str:
    name = default_profile()
    settings.load_profile(name)
    return name
