"""Long campaigns (`externref-harness fuzz`): worker processes with their own seeds sharing one
Hypothesis example database; every failure shrunk, deduplicated, saved and replayable.

The example databases themselves (directory or Redis) are `search.databases`: the Hypothesis
machines of `search` read and write them outside campaigns too.
"""
