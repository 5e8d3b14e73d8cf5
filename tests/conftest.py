"""Registers the project's Hypothesis profiles and loads the default one.

`pytest --hypothesis-profile NAME` overrides the default (`ci` when CI is set, else `dev`).
"""

from externref_harness.search import profiles

profiles.load_default()
