"""The conformance corpus's file format: a trace with the model's expected observation at every step.

A corpus file is plain JSON that a runner in any language can execute without this harness
(`corpus/FORMAT.md` describes it, `corpus/schema.json` is its JSON Schema):

    {"corpus_version": 1, "name": "...", "scenario": "...", "description": "...", "origin": "...",
     "catches": ["cve-2021-39216"],
     "config": {"chunk_size": 2, "build": "debug", "slots": 3, "n_globals": 2},
     "any_chunk_size": true,
     "steps": [{"operation": {"op": "New", "size": 8, "align": 8}, "teardown": false,
                "expect": {"result": {"kind": "ok", "value": 0}, "dropped": [], "canary": null,
                           "paths": []}}, ...]}

A corpus trace has no mutant: it holds the seed's semantics. Its last steps (`teardown: true`) are
the model's own teardown (`model.moves.next_quiesce_op`), so the file states the whole expected
behaviour, down to quiescence.

A scenario may have versions at several chunk sizes (`scenario` names it in each); a trace with
`any_chunk_size` observes the same at every chunk size of at least its own (the generator verifies
it), so a library with a fixed chunk at least that large runs it at its own chunk. Together they
let an implementation with the seed's fixed 512-slot chunk run every scenario.

Loading validates eagerly: one `TraceFormatError` line naming the file and the place.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from externref_harness.model import ops
from externref_harness.model.observation import Err, Misuse, Observation, Ok
from externref_harness.model.ops import Op, TraceFormatError, op_from_json
from externref_harness.model.state import STACK_TOP, Build, Config, State

CORPUS_VERSION = 1
#: The config fields a corpus trace carries (never `mutant`: corpus traces hold the seed's semantics).
CONFIG_FIELDS = ("chunk_size", "build", "slots", "n_globals")
RESULT_KINDS = ("ok", "err", "misuse", "panic")
TOP_FIELDS = (
    "corpus_version", "name", "scenario", "description", "origin", "catches", "config", "any_chunk_size",
    "steps",
)  # fmt: skip
STEP_FIELDS = ("operation", "teardown", "expect")
EXPECT_FIELDS = ("result", "dropped", "canary", "paths")

#: An expectation as plain JSON: `{"result": {"kind", "value"}, "dropped", "canary", "paths"}`.
Expect = dict[str, Any]


@dataclass(frozen=True)
class CorpusStep:
    op: Op
    expect: Expect
    #: One of the model's teardown steps (`next_quiesce_op`), after the scenario's own steps.
    teardown: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"operation": self.op.to_json(), "teardown": self.teardown, "expect": self.expect}


@dataclass(frozen=True)
class CorpusTrace:
    name: str
    description: str
    origin: str
    config: Config
    steps: tuple[CorpusStep, ...]
    #: The model's seeded bugs under which the model no longer runs this trace as `expect` says.
    catches: tuple[str, ...] = ()
    #: The scenario this trace is a version of ("": its own name): one scenario, several chunk sizes.
    scenario: str = ""
    #: The same expectations hold at every chunk size of at least `config.chunk_size`.
    any_chunk_size: bool = False
    #: Where it was loaded from (None: built in memory).
    path: Path | None = field(default=None, compare=False)

    @property
    def scenario_name(self) -> str:
        return self.scenario or self.name

    def runs_at(self, chunk_size: int) -> bool:
        """Whether the file's expectations hold at this chunk size."""
        own = self.config.chunk_size
        return chunk_size == own or (self.any_chunk_size and chunk_size > own)

    @property
    def id(self) -> str:
        """Unique in the corpus: the build and the name (`debug/explorer-cve-2021-39216`)."""
        return f"{self.config.build}/{self.name}"

    @property
    def build(self) -> Build:
        return self.config.build

    @property
    def operations(self) -> tuple[Op, ...]:
        """The scenario's own steps, without the teardown."""
        return tuple(s.op for s in self.steps if not s.teardown)

    @property
    def all_operations(self) -> tuple[Op, ...]:
        return tuple(s.op for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "corpus_version": CORPUS_VERSION,
            "name": self.name,
            "scenario": self.scenario_name,
            "description": self.description,
            "origin": self.origin,
            "catches": list(self.catches),
            "config": {name: getattr(self.config, name) for name in CONFIG_FIELDS},
            "any_chunk_size": self.any_chunk_size,
            "steps": [s.to_json() for s in self.steps],
        }

    def dumps(self) -> str:
        """The file's text: readable and byte-for-byte deterministic, one step per line."""
        obj = self.to_json()
        lines = ["{"]
        lines += [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in obj.items() if k != "steps"]
        lines.append(' "steps": [')
        steps = [json.dumps(s, separators=(", ", ": ")) for s in obj["steps"]]
        lines += [f"  {s}," for s in steps[:-1]] + [f"  {s}" for s in steps[-1:]]
        lines.append(" ]")
        lines.append("}")
        return "\n".join(lines) + "\n"


def is_corpus_json(obj: object) -> bool:
    """Whether a parsed JSON document claims to be a corpus trace (as opposed to a saved trace)."""
    return isinstance(obj, dict) and "corpus_version" in obj


# --- the model's observation as plain JSON ----------------------------------------------------------


def plain_value(value: object) -> object:
    """Tuples as lists, recursively; everything else a result holds is already JSON."""
    if isinstance(value, tuple | list):
        return [plain_value(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    raise TypeError(f"an observation holds {value!r}, which has no JSON form")


def expectation(op: Op, obs: Observation, after: State) -> Expect:
    """What a runner must see at this step: the result, the values dropped, the canary, the paths.

    Addresses are never shown: refs are model ids (allocation order), handles and raw pointers
    indexes, and a stack address (the canary) is its distance in bytes below the top of the stack.
    """
    result = obs.result
    value: object
    if isinstance(result, Ok):
        kind, value = "ok", plain_value(result.value)
        if isinstance(op, ops.StackCanary) and isinstance(value, int):
            value = STACK_TOP - value
    elif isinstance(result, Err):
        kind, value = "err", result.kind
    elif isinstance(result, Misuse):
        kind, value = "misuse", result.kind
    else:
        kind, value = "panic", result.message
    canary = after.table.stack_canary
    return {
        "result": {"kind": kind, "value": value},
        "dropped": sorted(obs.dropped),
        "canary": None if canary is None else STACK_TOP - canary,
        "paths": list(obs.events),
    }


def expect_diff(expected: Expect, observed: Expect) -> str:
    """`result: expected ..., observed ...; paths: ...` for the fields that differ."""
    parts = [
        f"{name}: expected {json.dumps(expected.get(name))}, observed {json.dumps(observed.get(name))}"
        for name in EXPECT_FIELDS
        if expected.get(name) != observed.get(name)
    ]
    return "; ".join(parts)


# --- loading ---------------------------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_fields(obj: dict[str, Any], allowed: Sequence[str], where: str) -> None:
    missing = [f for f in allowed if f not in obj]
    if missing:
        raise TraceFormatError(f"{where}missing field(s) {missing}")
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise TraceFormatError(f"{where}unexpected field(s) {extra}")


def _config(raw: object) -> Config:
    if not isinstance(raw, dict):
        raise TraceFormatError("config: expected an object")
    if "mutant" in raw:
        raise TraceFormatError("config: a corpus trace has no mutant (it holds the seed's semantics)")
    _check_fields(raw, CONFIG_FIELDS, "config: ")
    try:
        return Config.from_untyped(raw)
    except (TypeError, ValueError) as e:
        raise TraceFormatError(f"config: {e}") from None


def _expect(raw: object, where: str) -> Expect:
    if not isinstance(raw, dict):
        raise TraceFormatError(f"{where}expect: expected an object")
    _check_fields(raw, EXPECT_FIELDS, f"{where}expect: ")
    result = raw["result"]
    if not isinstance(result, dict) or set(result) != {"kind", "value"}:
        raise TraceFormatError(f"{where}expect.result: expected an object with kind and value")
    if result["kind"] not in RESULT_KINDS:
        raise TraceFormatError(f"{where}expect.result.kind: {result['kind']!r} is not one of {RESULT_KINDS}")
    value = result["value"]
    if result["kind"] != "ok" and not isinstance(value, str):
        raise TraceFormatError(f"{where}expect.result.value: a {result['kind']} result names its kind")
    scalar = value is None or isinstance(value, bool | int | str)
    if not scalar and not (isinstance(value, list) and all(v is None or _is_int(v) for v in value)):
        raise TraceFormatError(
            f"{where}expect.result.value: expected null, a boolean, an int or a list of ints"
        )
    dropped = raw["dropped"]
    if not isinstance(dropped, list) or not all(_is_int(r) and r >= 0 for r in dropped):
        raise TraceFormatError(f"{where}expect.dropped: expected a list of ref ids")
    if dropped != sorted(set(dropped)):
        raise TraceFormatError(f"{where}expect.dropped: ref ids must be sorted and distinct")
    canary = raw["canary"]
    if canary is not None and not (_is_int(canary) and canary >= 0):
        raise TraceFormatError(f"{where}expect.canary: expected a byte offset or null")
    paths = raw["paths"]
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise TraceFormatError(f"{where}expect.paths: expected a list of path labels")
    return raw


def trace_from_json(obj: object) -> CorpusTrace:
    if not isinstance(obj, dict):
        raise TraceFormatError("a corpus trace must be a JSON object")
    version = obj.get("corpus_version")
    if version != CORPUS_VERSION:
        raise TraceFormatError(f"corpus_version {version!r} is not supported (expected {CORPUS_VERSION})")
    _check_fields(obj, TOP_FIELDS, "")
    for name in ("name", "scenario", "description", "origin"):
        if not isinstance(obj[name], str) or not obj[name]:
            raise TraceFormatError(f"{name}: expected a non-empty string")
    catches = obj["catches"]
    if not isinstance(catches, list) or not all(isinstance(c, str) for c in catches):
        raise TraceFormatError("catches: expected a list of seeded bug names")
    config = _config(obj["config"])
    if not isinstance(obj["any_chunk_size"], bool):
        raise TraceFormatError("any_chunk_size: expected true or false")
    raw_steps = obj["steps"]
    if not isinstance(raw_steps, list) or not raw_steps:
        raise TraceFormatError("steps: expected a non-empty list")
    steps = []
    in_teardown = False
    for i, raw in enumerate(raw_steps, 1):
        where = f"step {i}: "
        if not isinstance(raw, dict):
            raise TraceFormatError(f"{where}expected an object")
        _check_fields(raw, STEP_FIELDS, where)
        try:
            op = op_from_json(raw["operation"])
        except (TraceFormatError, TypeError, ValueError) as e:
            raise TraceFormatError(f"{where}{e}") from None
        teardown = raw["teardown"]
        if not isinstance(teardown, bool):
            raise TraceFormatError(f"{where}teardown: expected true or false")
        if in_teardown and not teardown:
            raise TraceFormatError(f"{where}a scenario step after the teardown began")
        in_teardown = teardown
        steps.append(CorpusStep(op, _expect(raw["expect"], where), teardown))
    return CorpusTrace(
        obj["name"],
        obj["description"],
        obj["origin"],
        config,
        tuple(steps),
        tuple(catches),
        obj["scenario"],
        obj["any_chunk_size"],
    )


def load_file(path: Path) -> CorpusTrace:
    """One corpus file (bad input: one `TraceFormatError` line naming the file)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise TraceFormatError(f"cannot read {path}: {reason}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceFormatError(f"{path} is not JSON: {e.msg} at line {e.lineno}") from None
    try:
        trace = trace_from_json(obj)
    except TraceFormatError as e:
        raise TraceFormatError(f"{path}: {e}") from None
    return replace(trace, path=Path(path))
