"""Exhaustive breadth-first exploration of the model's reachable states, as TLC explores a spec.

The transition relation is the model's own: `model.moves.flat_moves` gives the well-formed moves of
a state and `model.transition.step` takes one. Every newly reached state (its representative, see
below: the invariants read nothing the reduction forgets) is checked against every invariant of
`specs.invariants`; states are discovered in order of depth, so the first violation found is at
the end of a shortest trace.

The parts, one concept each:
- `partition`: `Search` (what is searched) and `Partition`, the search core of one process, which
  takes every transition of a level; it is the hot path and is compiled;
- `symmetry`: `canonical`, the representative of a state's symmetry class;
- `fingerprints`: the seen-set, 64-bit fingerprints with the (parent, move) that first reached
  each, not the states (only the frontier is kept as states), as TLC keeps it;
- `workers`: several partitions over worker processes, partitioned by fingerprint, level
  by level, with exactly the same counts;
- `explorer`: the knobs (`ExploreBounds`), the search of one process, limits and Ctrl-C (which
  stop a search early with an incomplete outcome), the outcome, and the rebuild of a violation's
  trace;
- `driver`: `explore`, one process or several.

This package's `__init__` imports nothing: the compiled modules here (`partition`, `symmetry`,
`fingerprints`) are built before the harness's dependencies are installed, and a package's
`__init__` is part of every build of its modules.

Symmetry reduction (`symmetry`): the search expands one representative per class of states that
differ only by ref names, tombstones, the order of the bump chunk's filled part and dead stack
maps. A violation's trace is then rebuilt on actual states: from `State.initial`, each step takes
the actual state's own move whose successor falls in the next class on the path, so the trace is a
sequence of real operations that `model.transition.run` and `externref-harness replay` reproduce
exactly.

State constraint. `WasmReturn` to the host hands out a new handle whatever `Bounds.handles` says,
so the reachable space is not finite by itself. Like TLC's CONSTRAINT, a state holding more live
handles than `Bounds.handles + Bounds.args` (the most any guarded move creates) is checked but not
expanded.
"""

