"""Registers the project's Hypothesis profiles and loads the test suite's.

The suite runs under `ci` (derandomized, 300 examples: the budget its assertions are written for)
wherever it runs, and so do the commands its tests start (through `$HYPOTHESIS_PROFILE`). `dev`'s
1000 examples are what `check` needs to catch every seeded bug in 20 of 20 random runs, ten times
what a test needs. `HYPOTHESIS_PROFILE=NAME` or `pytest --hypothesis-profile NAME` chooses another.
"""

import os

from externref_harness.search import profiles

os.environ.setdefault("HYPOTHESIS_PROFILE", "ci")
profiles.load_default()
