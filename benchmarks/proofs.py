"""What the cuts buy the bounded sweep proof: z3 on the plain encoding against the cut one, in one run.

For growing bounds, the same four properties are proven twice: once directly (`gc`'s terms as they
are) and once in SSA form with the per-step invariants of `specs.sweep_lemmas` as proven cuts. The
direct query's cost grows exponentially with the number of stack words; the cut proof's roughly
linearly. A direct query that exceeds `--timeout` is reported as such. The last line is
`cut_speedup=<x>` at the largest bounds where both finished.

    .venv/bin/python benchmarks/proofs.py [--timeout S] [--build debug|release]
"""

from __future__ import annotations

import argparse
import time

from externref_harness.specs.proving import check_valid
from externref_harness.specs.sweep_encoding import Bounds, GcState, Switches, gc
from externref_harness.specs.sweep_proofs import PROPERTIES, VARIANTS, BoundedProof, assumptions

SIZES = (Bounds(2, 2, 2, 2), Bounds(3, 2, 3, 3), Bounds(3, 3, 3, 3), Bounds(4, 3, 3, 3), Bounds(4, 4, 4, 4))


def direct(bounds: Bounds, debug: bool, timeout_ms: int) -> float | None:
    """Seconds for all four properties without cuts; None if one times out."""
    s = GcState.symbolic(bounds)
    out = gc(s, Switches(debug))
    premises = [a.formula for a in assumptions(s, VARIANTS[None])]
    started = time.perf_counter()
    for prop in PROPERTIES:
        if not check_valid(premises, prop.formula(s, out), timeout_ms).proven:
            return None
    return time.perf_counter() - started


def with_cuts(bounds: Bounds, debug: bool, timeout_ms: int) -> float:
    started = time.perf_counter()
    proof = BoundedProof(bounds, debug=debug, timeout_ms=timeout_ms)
    assert all(lemma.status == "proven" for lemma in proof.prove_cuts())
    assert all(proof.prove(p).proven for p in PROPERTIES)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per direct query")
    parser.add_argument("--build", choices=("debug", "release"), default="debug")
    args = parser.parse_args()
    debug = args.build == "debug"
    speedup = None
    for bounds in SIZES:
        cut = with_cuts(bounds, debug, int(args.timeout * 1000))
        plain = direct(bounds, debug, int(args.timeout * 1000))
        shown = "timeout" if plain is None else f"{plain:.2f}s"
        print(f"{bounds}: direct {shown}, with cuts {cut:.2f}s")
        if plain is not None:
            speedup = plain / cut
    print(f"cut_speedup={speedup:.1f}" if speedup is not None else "cut_speedup=n/a")


if __name__ == "__main__":
    main()
