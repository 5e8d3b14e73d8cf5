"""The conformance corpus: generated from `corpus.scenarios`, checked into `corpus/`, shipped.

    python -m externref_harness.corpus --write corpus       # regenerate the checked-in files
    python -m externref_harness.corpus --check corpus       # exit 1 if they are out of date

Each scenario is run on the model (the seed's semantics) in both builds, followed by the model's
own teardown; the observations become the file's `expect`s, and the seeded bugs of the model under
which that run no longer matches them become its `catches`. The output is deterministic, so the
test suite regenerates it and compares byte for byte. `corpus/schema.json` is generated here too,
its operation definitions from `model.ops`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from externref_harness.corpus.format import (
    CONFIG_FIELDS,
    CORPUS_VERSION,
    RESULT_KINDS,
    TOP_FIELDS,
    CorpusStep,
    CorpusTrace,
    expectation,
)
from externref_harness.corpus.scenarios import Scenario, all_scenarios
from externref_harness.model import ops
from externref_harness.model.moves import next_quiesce_op, quiesce_step_bound
from externref_harness.model.mutants import MODEL_MUTANTS
from externref_harness.model.observation import Panic
from externref_harness.model.state import SEED_CHUNK_SIZE, Build, Config, State
from externref_harness.model.transition import step
from externref_harness.search.path_labels import step_labels
from externref_harness.specs.invariants import first_violation

BUILDS: tuple[Build, ...] = ("debug", "release")
SCHEMA_FILE = "schema.json"


class ScenarioError(RuntimeError):
    """A scenario that does not run clean on the seed's semantics, or misses its path."""


def shipped_corpus_dir() -> Path:
    """The corpus installed with the package (`externref_harness/corpus_data`, a link to `corpus/`)."""
    return Path(str(resources.files("externref_harness") / "corpus_data"))


def model_run(cfg: Config, steps: tuple[ops.Op, ...]) -> tuple[list[CorpusStep], str | None, set[str]]:
    """The model's run of `steps` then its teardown, as corpus steps; its first problem; and the
    coverage labels (`model_check`'s) of the scenario's own steps."""
    state = State.initial(cfg)
    out: list[CorpusStep] = []
    problem: str | None = None
    labels: set[str] = set()

    def take(op: ops.Op, teardown: bool) -> None:
        nonlocal state, problem
        before = state
        state, obs = step(cfg, before, op)
        out.append(CorpusStep(op, expectation(op, obs, state), teardown))
        if not teardown:
            labels.update(step_labels(op, obs))
        if problem is None:
            if isinstance(obs.result, Panic):
                problem = f"step {len(out)} ({op}): the model panicked: {obs.result.message}"
            else:
                bad = first_violation(cfg, state)
                if bad is not None:
                    problem = f"step {len(out)} ({op}): {bad[0].id} {bad[0].name}: {bad[1]}"

    for op in steps:
        take(op, False)
    bound = quiesce_step_bound(state)
    for _ in range(bound):
        quiesce = next_quiesce_op(state)
        if quiesce is None:
            break
        take(quiesce, True)
    if problem is None and next_quiesce_op(state) is not None:
        problem = f"the teardown gave up: {bound} steps did not reach quiescence"
    return out, problem, labels


def catches(cfg: Config, steps: tuple[CorpusStep, ...]) -> tuple[str, ...]:
    """The model's seeded bugs under which running these steps breaks an invariant, panics, or
    observes anything other than the steps' expectations."""
    found = []
    for m in MODEL_MUTANTS:
        mutated = replace(cfg, mutant=m.name)
        state = State.initial(mutated)
        for s in steps:
            state, obs = step(mutated, state, s.op)
            if (
                isinstance(obs.result, Panic)
                or expectation(s.op, obs, state) != s.expect
                or first_violation(mutated, state) is not None
            ):
                found.append(m.name)
                break
    return tuple(found)


#: The chunk sizes `any_chunk_size` is verified at, beyond every size from a trace's own to the
#: largest here below 64: the chunk size enters the model only where an insert finds the chunk full,
#: where the capacity is read and where the protocol compares it with a call's argument count, so a
#: run that observes the same at all of these fills no chunk it could not fill at any larger size.
CHUNK_SIZES_CHECKED = (*range(1, 65), 128, 256, 512, 1024, 4096)


def _generated(scenario: Scenario, build: Build) -> tuple[CorpusTrace, set[str]]:
    """The scenario's trace in this build, and the path labels its own steps reach."""
    cfg = replace(scenario.config, build=build, mutant=None)
    steps, problem, labels = model_run(cfg, scenario.ops)
    if problem is not None:
        raise ScenarioError(f"{scenario.name} ({build}): {problem}")
    if scenario.reaches is not None and scenario.reaches not in labels:
        raise ScenarioError(f"{scenario.name} ({build}): never reaches {scenario.reaches}")
    frozen = tuple(steps)
    trace = CorpusTrace(
        scenario.name,
        scenario.description,
        scenario.origin,
        cfg,
        frozen,
        catches(cfg, frozen),
        scenario.version_of or scenario.name,
        same_at_larger_chunks(cfg, scenario.ops, frozen),
    )
    return trace, labels


def same_at_larger_chunks(
    cfg: Config, scenario_ops: tuple[ops.Op, ...], steps: tuple[CorpusStep, ...]
) -> bool:
    """Whether the model runs these operations, teardown included, with the same observations at
    every larger chunk size of `CHUNK_SIZES_CHECKED`."""
    for size in CHUNK_SIZES_CHECKED:
        if size <= cfg.chunk_size:
            continue
        other, problem, _ = model_run(replace(cfg, chunk_size=size), scenario_ops)
        if problem is not None or tuple(other) != steps:
            return False
    return True


def corpus_trace(scenario: Scenario, build: Build) -> CorpusTrace:
    return _generated(scenario, build)[0]


def build_corpus() -> list[CorpusTrace]:
    """Every corpus trace, in both builds (the explorer runs here: a few seconds).

    Refused (`ScenarioError`): a name used twice; a scenario that runs neither at the seed's chunk
    size nor at any chunk size, and has no version that does; a version at the seed's chunk that
    misses a path its scenario reaches."""
    scenarios = all_scenarios()
    names = [s.name for s in scenarios]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ScenarioError(f"scenario names used twice: {duplicates}")
    out = []
    for build in BUILDS:
        generated = {s.name: _generated(s, build) for s in scenarios}
        for s in scenarios:
            labels = generated[s.name][1]
            if s.version_of is not None:
                missed = sorted(generated[s.version_of][1] - labels)
                if missed:
                    raise ScenarioError(f"{s.name} ({build}): misses {missed}, which {s.version_of} reaches")
        for group in {t.scenario_name for t, _ in generated.values()}:
            if not any(t.runs_at(SEED_CHUNK_SIZE) for t, _ in generated.values() if t.scenario_name == group):
                raise ScenarioError(
                    f"{group} ({build}): no version runs at the seed's chunk of {SEED_CHUNK_SIZE} slots "
                    "(add one to scenarios.SEED_CHUNK_VERSIONS)"
                )
        out += [generated[s.name][0] for s in scenarios]
    return out


def relative_path(trace: CorpusTrace) -> Path:
    return Path(trace.config.build) / f"{trace.name}.json"


def rendered(traces: list[CorpusTrace]) -> dict[Path, str]:
    """Every file of the corpus directory, by path relative to it, with its text."""
    files = {relative_path(t): t.dumps() for t in traces}
    files[Path(SCHEMA_FILE)] = json.dumps(schema(), indent=1) + "\n"
    return files


def write_corpus(directory: Path, traces: list[CorpusTrace] | None = None) -> list[Path]:
    """Write the corpus into `directory`, removing trace files no scenario makes any more."""
    files = rendered(build_corpus() if traces is None else traces)
    for build in BUILDS:
        for old in sorted((directory / build).glob("*.json")):
            if old.relative_to(directory) not in files:
                old.unlink()
    written = []
    for rel, text in sorted(files.items()):
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_files(directory: Path, traces: list[CorpusTrace] | None = None) -> list[str]:
    """What differs between `directory` and a fresh generation (empty: up to date)."""
    files = rendered(build_corpus() if traces is None else traces)
    problems = []
    for rel, text in sorted(files.items()):
        path = directory / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{rel}: differs from the generated file")
    for build in BUILDS:
        for path in sorted((directory / build).glob("*.json")):
            if path.relative_to(directory) not in files:
                problems.append(f"{path.relative_to(directory)}: no scenario makes it")
    return problems


# --- the JSON Schema -------------------------------------------------------------------------------


def _field_schema(annotation: str) -> dict[str, Any]:
    """The JSON Schema of an operation's field, from its annotation in `model.ops`."""
    if annotation == "bool":
        return {"type": "boolean"}
    if annotation.startswith("tuple"):
        return {"type": "array", "items": {"type": "integer"}}
    if "None" in annotation:
        return {"type": ["integer", "null"]}
    return {"type": "integer"}


def _operation_schema(cls: type[ops.Op]) -> dict[str, Any]:
    import dataclasses

    fs = dataclasses.fields(cls)
    properties: dict[str, Any] = {"op": {"const": cls.__name__}}
    properties.update({f.name: _field_schema(str(f.type)) for f in fs})
    required = ["op"] + [f.name for f in fs if f.default is dataclasses.MISSING]
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a corpus file."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://externref-harness.invalid/corpus/schema.json",
        "title": "externref-harness conformance corpus trace",
        "description": f"Version {CORPUS_VERSION}; see FORMAT.md beside this file.",
        "type": "object",
        "required": list(TOP_FIELDS),
        "additionalProperties": False,
        "properties": {
            "corpus_version": {"const": CORPUS_VERSION},
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
            "scenario": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
            "description": {"type": "string", "minLength": 1},
            "origin": {"type": "string", "minLength": 1},
            "catches": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            "config": {
                "type": "object",
                "required": list(CONFIG_FIELDS),
                "additionalProperties": False,
                "properties": {
                    "chunk_size": {"type": "integer", "minimum": 1},
                    "build": {"enum": ["debug", "release"]},
                    "slots": {"type": "integer", "minimum": 1},
                    "n_globals": {"type": "integer", "minimum": 0},
                },
            },
            "any_chunk_size": {"type": "boolean"},
            "steps": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/step"}},
        },
        "$defs": {
            "step": {
                "type": "object",
                "required": ["operation", "teardown", "expect"],
                "additionalProperties": False,
                "properties": {
                    "operation": {"$ref": "#/$defs/operation"},
                    "teardown": {"type": "boolean"},
                    "expect": {"$ref": "#/$defs/expect"},
                },
            },
            "operation": {
                "type": "object",
                "required": ["op"],
                "properties": {"op": {"enum": [cls.__name__ for cls in ops.ALL_OPS]}},
                "allOf": [
                    {
                        "if": {"properties": {"op": {"const": cls.__name__}}},
                        "then": {"$ref": f"#/$defs/op-{cls.__name__}"},
                    }
                    for cls in ops.ALL_OPS
                ],
            },
            **{f"op-{cls.__name__}": _operation_schema(cls) for cls in ops.ALL_OPS},
            "expect": {
                "type": "object",
                "required": ["result", "dropped", "canary", "paths"],
                "additionalProperties": False,
                "properties": {
                    "result": {"$ref": "#/$defs/result"},
                    "dropped": {"type": "array", "items": {"$ref": "#/$defs/ref"}, "uniqueItems": True},
                    "canary": {"type": ["integer", "null"], "minimum": 0},
                    "paths": {"type": "array", "items": {"type": "string"}},
                },
            },
            "result": {
                "type": "object",
                "required": ["kind", "value"],
                "additionalProperties": False,
                "properties": {"kind": {"enum": list(RESULT_KINDS)}, "value": {"$ref": "#/$defs/value"}},
                "if": {"properties": {"kind": {"enum": ["err", "misuse", "panic"]}}},
                "then": {"properties": {"value": {"type": "string"}}},
            },
            "ref": {"type": "integer", "minimum": 0},
            "value": {
                "anyOf": [
                    {"type": ["null", "boolean", "integer", "string"]},
                    {"type": "array", "items": {"type": ["integer", "null"]}},
                ],
            },
        },
    }


# --- the command -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m externref_harness.corpus", description="Regenerate the conformance corpus."
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", type=Path, metavar="DIR", help="write the corpus into DIR")
    group.add_argument("--check", type=Path, metavar="DIR", help="exit 1 unless DIR is up to date")
    args = parser.parse_args(argv)
    try:
        traces = build_corpus()
    except ScenarioError as e:
        print(f"corpus: error: {e}", file=sys.stderr)
        return 2
    if args.write is not None:
        written = write_corpus(args.write, traces)
        print(f"wrote {len(written)} files into {args.write}")
        return 0
    problems = stale_files(args.check, traces)
    for p in problems:
        print(p)
    print("up to date" if not problems else f"{len(problems)} file(s) out of date")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
