"""Each seeded bug's detection rate: how many of `--seeds` random seeds catch it at the dev budget.

A seeded bug must be caught reliably by every check that claims it, not only by the derandomized
`ci` profile's one fixed run. For each bug and each check that claims it, the check runs once per
seed, with the `dev` profile's budget (random, `profiles.DEV_EXAMPLES` examples of up to 60
steps) and no example database (a database would replay the last failure and measure nothing),
until its first failing example; no shrinking, so a run costs only its search.

    bug layer        the checks that claim it (what `check --mutant NAME` runs)
    model, protocol  model     the model state machine
                     lockstep  the model against the Python port
    impl             lockstep  the model against the Python port
    specs            proofs    z3 (no seed: one run, deterministic)
    C reference      lockstep  the model against `reference --bug NAME` (debug build), the library
                               in a child process as the gate runs it (a crash or a hang there is a
                               failing step); at the seed's 512 slots for the bugs that need it

The race bugs (`c-nonatomic-count`, `c-drop-reread`) are the parallel check's: `benchmarks/threads.py`
measures them. Every (bug, check) runs in its own worker process (this script with `--job`), so a
check that dies takes only its own seed with it, and says so.

    .venv/bin/python benchmarks/detection.py [--seeds 20] [--seed-base N] [--only NAME ...] [--check C ...]

One line per (bug, check): caught/seeds, the median and largest number of examples to detection,
the seconds it took. The seeds are printed first (random unless `--seed-base` fixes them). The last
line is `min_detection=<lowest rate>`; the target is 1.0.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace

from hypothesis import settings

from externref_harness.catalogue import all_mutants
from externref_harness.checks.plan import CHECKS
from externref_harness.native.build import C_BUGS
from externref_harness.search import profiles  # noqa: F401  (registers the `dev` profile)

#: The race bugs: the parallel check's own measurement (`benchmarks/threads.py`).
RACE_BUGS = frozenset(name for name, bug in C_BUGS.items() if "threads" in bug.needs)
#: The seed's chunk, for the C bugs that show only there.
SEED_CHUNK = 512


@dataclass(frozen=True)
class Job:
    bug: str
    layer: str
    check: str


def jobs() -> list[Job]:
    """Every (bug, check that claims it), in the catalogue's order, then the C reference's bugs."""
    out = []
    for mutant in all_mutants():
        for check in CHECKS:
            if not check.needs_impl and check.exercises(mutant.name):
                out.append(Job(mutant.name, mutant.layer, check.name))
    out += [Job(name, "c", "lockstep") for name in C_BUGS if name not in RACE_BUGS]
    return out


# --- the worker: one (bug, check), every seed ------------------------------------------------------


def _dev_settings() -> settings:
    from externref_harness.search.model_check import search_settings

    return search_settings(settings(settings.get_profile("dev"), database=None, derandomize=False))


def _run_model(bug: str, seed: int) -> tuple[bool, int]:
    from hypothesis.stateful import run_state_machine_as_test

    from externref_harness.search.model_check import InvariantViolation, RunStats, make_model_machine
    from externref_harness.search.space import MACHINE_BOUNDS, MACHINE_CONFIG

    stats = RunStats()
    machine = make_model_machine(replace(MACHINE_CONFIG, mutant=bug), MACHINE_BOUNDS, stats)
    machine._hypothesis_internal_use_seed = seed
    try:
        run_state_machine_as_test(machine, settings=_dev_settings())
    except InvariantViolation:
        return True, stats.examples
    return False, stats.examples


def _run_lockstep(
    bug: str, layer: str, seed: int, pool: object | None, capabilities: tuple[str, ...] = ()
) -> tuple[bool, int]:
    from hypothesis.stateful import run_state_machine_as_test

    from externref_harness.lockstep.check import make_lockstep_machine
    from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG, AdapterFactory
    from externref_harness.lockstep.targets import PYTHON, bounds_for
    from externref_harness.search.model_check import InvariantViolation, RunStats

    stats = RunStats()
    if layer == "c":
        from externref_harness.isolation.pool import ChildPool

        assert isinstance(pool, ChildPool)
        chunk = SEED_CHUNK if "chunk-512" in C_BUGS[bug].needs else LOCKSTEP_CONFIG.chunk_size
        # The library's declared capabilities, as `Target.config` gives a gate's run.
        cfg = replace(LOCKSTEP_CONFIG, chunk_size=chunk, capabilities=capabilities)
        factory: AdapterFactory = pool.adapter
    else:
        cfg = replace(PYTHON.config(LOCKSTEP_CONFIG, None, None), mutant=bug)
        factory = PYTHON.adapter_factory
    machine = make_lockstep_machine(cfg, bounds_for(cfg, LOCKSTEP_BOUNDS), stats, factory)
    machine._hypothesis_internal_use_seed = seed
    try:
        run_state_machine_as_test(machine, settings=_dev_settings())
    except InvariantViolation:
        return True, stats.examples
    return False, stats.examples


def _run_proofs(bug: str) -> tuple[bool, int]:
    from externref_harness.checks.plan import CheckOptions

    check = next(c for c in CHECKS if c.name == "proofs")
    result = check.run(CheckOptions(_dev_settings(), mutant=bug, failures=None))
    return not result.passed, 0


def worker(bug: str, layer: str, check: str, seeds: list[int]) -> None:
    """Print one JSON line per seed: {"seed", "caught", "examples", "seconds"}."""
    pool = None
    capabilities: tuple[str, ...] = ()
    if layer == "c":
        from externref_harness.isolation.describe import child_env, describe_library
        from externref_harness.isolation.pool import ChildPool
        from externref_harness.native.build import build_reference

        library = build_reference("debug", bug=bug)
        capabilities = describe_library(library, child_env(library)).capabilities
        pool = ChildPool(library)
    try:
        for seed in seeds:
            started = time.perf_counter()
            if check == "model":
                caught, examples = _run_model(bug, seed)
            elif check == "lockstep":
                caught, examples = _run_lockstep(bug, layer, seed, pool, capabilities)
            else:
                caught, examples = _run_proofs(bug)
            line = {"seed": seed, "caught": caught, "examples": examples}
            print(json.dumps({**line, "seconds": round(time.perf_counter() - started, 2)}), flush=True)
    finally:
        if pool is not None:
            pool.close()


# --- the parent ----------------------------------------------------------------------------------


@dataclass
class Rate:
    job: Job
    caught: int
    runs: int
    examples: list[int]
    seconds: float
    notes: list[str]

    @property
    def rate(self) -> float:
        return self.caught / self.runs if self.runs else 0.0


def measure(job: Job, seeds: list[int]) -> Rate:
    """Run the job's worker until every seed has a result; a seed whose worker died is missed."""
    out = Rate(job, 0, 0, [], 0.0, [])
    left = list(seeds[:1] if job.check == "proofs" else seeds)  # z3 has no seed: one run decides
    started = time.perf_counter()
    while left:
        args = [sys.executable, __file__, "--job", job.bug, job.layer, job.check, ",".join(map(str, left))]
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        for line in done.stdout.splitlines():
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            left.remove(row["seed"])
            out.runs += 1
            if row["caught"]:
                out.caught += 1
                out.examples.append(row["examples"])
        if left:
            # The worker died on the seed it was running: that seed counts as missed.
            tail = (done.stderr.strip().splitlines() or ["(nothing printed)"])[-1][:200]
            out.notes.append(f"seed {left.pop(0)}: worker exited with {done.returncode}: {tail}")
            out.runs += 1
    out.seconds = time.perf_counter() - started
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="random seeds per (bug, check)")
    parser.add_argument("--seed-base", type=int, help="use seeds N, N+1, ... instead of random ones")
    parser.add_argument("--only", action="append", metavar="NAME", help="a bug's name (repeatable)")
    parser.add_argument(
        "--check", action="append", choices=("model", "lockstep", "proofs"),
        help="only this check (repeatable)",
    )  # fmt: skip
    parser.add_argument("--job", nargs=4, metavar=("BUG", "LAYER", "CHECK", "SEEDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job is not None:
        bug, layer, check, seeds = args.job
        worker(bug, layer, check, [int(s) for s in seeds.split(",")])
        return 0
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    chosen = jobs()
    if args.only:
        unknown = sorted(set(args.only) - {j.bug for j in chosen})
        if unknown:
            parser.error(f"--only: unknown bug(s) {', '.join(unknown)} (race bugs: benchmarks/threads.py)")
        chosen = [j for j in chosen if j.bug in args.only]
    if args.check:
        chosen = [j for j in chosen if j.check in args.check]
    if args.seed_base is not None:
        seeds = [args.seed_base + i for i in range(args.seeds)]
    else:
        rng = random.SystemRandom()
        seeds = [rng.getrandbits(32) for _ in range(args.seeds)]
    print(f"seeds: {', '.join(map(str, seeds))}", flush=True)
    lowest = 1.0
    for job in chosen:
        rate = measure(job, seeds)
        lowest = min(lowest, rate.rate)
        shown = "-"
        if rate.examples:
            shown = f"median {statistics.median(rate.examples):g}, most {max(rate.examples)} examples"
        print(
            f"{job.bug:38} {job.layer:8} {job.check:8} {rate.caught:3}/{rate.runs:<3} "
            f"{shown:32} {rate.seconds:7.1f} s",
            flush=True,
        )
        for note in rate.notes:
            print(f"    {note}", flush=True)
    print(f"min_detection={lowest:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
