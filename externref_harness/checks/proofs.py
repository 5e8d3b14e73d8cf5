"""Every z3 proof of `specs/`, in the order `externref-harness prove` prints them, and the replay
of a seeded bug's counterexamples as traces on the model and the implementation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from externref_harness import trace as tracefile
from externref_harness.impl import mutants as impl_mutants
from externref_harness.lockstep import runner as lockstep
from externref_harness.model.protocol import CVE_2021_39216
from externref_harness.model.runtime import CVE_2022_24791, CVE_2022_31146, SWEEP_WITHOUT_CANARY
from externref_harness.specs.counterexamples import find_counterexample, replay_on_model, scenario_trace
from externref_harness.specs.layout_proofs import prove_layout
from externref_harness.specs.offset_proofs import prove_offsets
from externref_harness.specs.proving import Status, Verdict
from externref_harness.specs.sweep_encoding import Bounds
from externref_harness.specs.sweep_induction import prove_unbounded
from externref_harness.specs.sweep_proofs import PROPERTIES, VARIANTS, BoundedProof, LemmaResult

#: Seeded bugs of the model's runtime that the implementation carries too, under its own name. The
#: compiler's and the protocol's bugs need none: the implementation runs the same code for them.
IMPL_COUNTERPART = {SWEEP_WITHOUT_CANARY: impl_mutants.SWEEP_WITHOUT_CANARY}
#: Seeded bugs the implementation runs exactly as the model does (shared compiler and protocol).
SHARED = frozenset({CVE_2022_31146, CVE_2022_24791, CVE_2021_39216})

#: The bounds `prove` uses unless told otherwise: (F, S, R, C) = (4, 4, 4, 4).
DEFAULT_BOUNDS = Bounds(4, 4, 4, 4)
#: The budget of one solver query, in seconds.
DEFAULT_TIMEOUT_S = 10.0


def covers(mutant: str | None) -> bool:
    """Whether the proofs model this seeded bug (others leave every proof as for the seed)."""
    return mutant is None or mutant in VARIANTS or mutant == impl_mutants.REFCOUNT_OFFSET


@dataclass(frozen=True)
class ProofOptions:
    mutant: str | None = None
    bounds: Bounds = DEFAULT_BOUNDS
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: Which builds the sweep proofs run for (True: debug).
    debug_builds: tuple[bool, ...] = (True, False)

    @property
    def timeout_ms(self) -> int:
        return max(1, int(self.timeout_s * 1000))


def _cuts_verdict(lemmas: list[LemmaResult], build: str) -> Verdict:
    seconds = sum(lemma.seconds for lemma in lemmas)
    failed = [lemma for lemma in lemmas if lemma.status != "proven"]
    name = f"sweep.bounded.cuts ({build})"
    if not failed:
        return Verdict(
            name, "proven", seconds, f"{len(lemmas)} step invariants (specs.sweep_lemmas)", lemma=True
        )
    first = failed[0]
    status: Status = "counterexample" if first.status == "counterexample" else "unknown"
    return Verdict(
        name,
        status,
        seconds,
        f"cut {first.name}: {first.status}; {len(failed)} of {len(lemmas)} cuts unproven, "
        "the properties are decided without them",
        lemma=True,
    )


def run_proofs(opts: ProofOptions) -> Iterator[Verdict]:
    """Layout, offsets, bounded sweep safety, unbounded sweep safety (each build), in order."""
    yield from prove_layout(opts.timeout_ms)
    yield from prove_offsets(opts.mutant)
    variant = VARIANTS.get(opts.mutant, VARIANTS[None])
    for debug in opts.debug_builds:
        proof = BoundedProof(opts.bounds, variant, debug, opts.timeout_ms)
        yield _cuts_verdict(proof.prove_cuts(), proof.build)
        for prop in PROPERTIES:
            yield proof.prove(prop)
    for debug in opts.debug_builds:
        yield from prove_unbounded(variant, debug, opts.timeout_ms)


@dataclass(frozen=True)
class ReplayedCounterexample:
    """A seeded bug's bounded counterexample, rebuilt as a trace and run on both sides."""

    build: str
    property_id: str
    counterexample: str
    trace: tracefile.Trace
    model: str
    report: lockstep.ReplayReport
    saved: Path | None = None
    seed_report: lockstep.ReplayReport | None = field(default=None)
    #: The trace with the implementation's own copy of the bug (the model then runs the seed).
    counterpart: str | None = None
    counterpart_report: lockstep.ReplayReport | None = None

    @property
    def fails_on_both(self) -> bool:
        return self.report.model_failure is not None and self.report.impl_failure is not None

    @property
    def impl_shares_the_bug(self) -> bool:
        return self.trace.config.mutant in SHARED


def replay_counterexamples(
    opts: ProofOptions, verdicts: list[Verdict], save_in: Path | None
) -> tuple[list[ReplayedCounterexample], list[str]]:
    """For each build, a property with a bounded counterexample under the seeded bug (the one the
    variant is known to break, if it is among them): a normal-form counterexample, its trace, and
    that trace replayed on the model and the impl; and a note for each build where no buildable
    counterexample exists within the bounds."""
    variant = VARIANTS.get(opts.mutant)
    if variant is None or variant.mutant is None:
        return [], []
    out: list[ReplayedCounterexample] = []
    notes: list[str] = []
    for debug in opts.debug_builds:
        build = "debug" if debug else "release"
        failing = [
            p.id
            for p in PROPERTIES
            for v in verdicts
            if v.name == f"sweep.bounded.{p.id} ({build})" and v.status == "counterexample"
        ]
        if not failing:
            continue
        chosen = variant.breaks if variant.breaks in failing else failing[0]
        cex = find_counterexample(opts.bounds, variant, debug, chosen, opts.timeout_ms)
        if cex is None:
            notes.append(
                f"{chosen} ({build}): no counterexample within the bounds has the shape operations "
                "can build (a host frame at each end, no two host frames adjacent); try a larger F"
            )
            continue
        trace = scenario_trace(cex)
        saved = None
        if save_in is not None:
            saved = tracefile.save(trace, save_in / f"proof-{variant.mutant}-{build}.json")
        seed = replace(trace, config=replace(trace.config, mutant=None))
        counterpart = IMPL_COUNTERPART.get(variant.mutant)
        counterpart_report = None
        if counterpart is not None:
            counterpart_report = lockstep.replay(
                replace(trace, config=replace(trace.config, mutant=counterpart))
            )
        out.append(
            ReplayedCounterexample(
                build,
                chosen,
                cex.describe(),
                trace,
                replay_on_model(trace).describe(),
                lockstep.replay(trace),
                saved,
                lockstep.replay(seed),
                counterpart,
                counterpart_report,
            )
        )
    return out, notes
