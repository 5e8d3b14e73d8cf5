"""Generated bad input fed to the command line in-process: traces mutated by type and structure,
truncated and non-UTF-8 bytes, huge and deep values, special files, bad values for every option and
a bad environment. For each: no traceback, no hang (a time bound per case), and either exit 2 with
exactly one line on stderr, or (where the input is in fact a valid trace) the documented 0 or 1
with nothing on stderr. Output goes to strict UTF-8 streams, as a terminal's can be."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from externref_harness import trace as tracefile
from externref_harness.catalogue import mutant_names
from externref_harness.checks.plan import CHECKS
from externref_harness.cli.main import build_parser, main
from externref_harness.errors import shown_path
from externref_harness.explore.explorer import LIMITS
from externref_harness.model import ops
from externref_harness.model.state import Config
from externref_harness.native.build import C_BUGS, C_VARIANTS, build_reference
from externref_harness.search.profiles import PROFILES
from externref_harness.specs.sweep_encoding import Bounds

#: A case (parsing, validating, and where valid replaying a short trace) takes milliseconds.
CASE_SECONDS = 5.0
BASE_TRACE = tracefile.Trace(
    Config(chunk_size=2, slots=2, n_globals=1),
    (
        ops.New(8, 8), ops.InitGlobals(1), ops.HostGlobalSet(0, 0), ops.CallWasm((0,)),
        ops.WasmCallHost((0,), 1, False), ops.ReturnToWasm(None), ops.WasmReturn(0), ops.Gc(),
    ),
    "a note",
).to_json()  # fmt: skip


@dataclass
class Outcome:
    status: int
    out: str
    err: str
    seconds: float


def strict_stream() -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)


@contextmanager
def environment(changes: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_cli(argv: list[str], env: dict[str, str] | None = None) -> Outcome:
    out, err = strict_stream(), strict_stream()
    started = time.monotonic()
    with environment(env or {}), redirect_stdout(out), redirect_stderr(err):
        status = main(argv)
    seconds = time.monotonic() - started

    def text(stream: io.TextIOWrapper) -> str:
        stream.flush()
        raw = stream.buffer
        assert isinstance(raw, io.BytesIO)
        return raw.getvalue().decode("utf-8")

    return Outcome(status, text(out), text(err), seconds)


def assert_refused(o: Outcome, command: str) -> str:
    assert o.status == 2, (o.status, o.out[-500:], o.err)
    lines = o.err.splitlines()
    assert len(lines) == 1, o.err
    assert lines[0].startswith(f"externref-harness {command}: error: "), lines[0]
    assert "Traceback" not in o.err and "error::" not in o.err
    assert len(lines[0]) < 600
    assert o.out == ""
    assert o.seconds < CASE_SECONDS
    return lines[0]


# --- traces mutated by type and structure, and bytes that are no trace ------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**20, max_value=10**60),
    st.integers(min_value=-(10**60), max_value=-1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.just("x" * 5000),
    st.sampled_from(["New", "Gc", "debug", "release", "externref-harness-trace", "\ud800"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


ALL_PATHS = list(_paths(BASE_TRACE))


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = json.loads(json.dumps(obj))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def _delete(obj: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return None
    copy = json.loads(json.dumps(obj))
    target = copy
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return copy


@st.composite
def mutated_traces(draw: st.DrawFn) -> bytes:
    kind = draw(
        st.sampled_from(["set", "delete", "add", "deep", "truncate", "bytes", "many-steps", "valid-edit"])
    )
    obj: Any = BASE_TRACE
    if kind == "valid-edit":  # still a trace: a new note, a mutant, another build
        field_, values = draw(
            st.sampled_from(
                [
                    (("note",), st.text(max_size=30)),
                    (("config", "mutant"), st.sampled_from(mutant_names())),
                    (("config", "build"), st.sampled_from(["debug", "release"])),
                ]
            )
        )
        obj = _set(obj, field_, draw(values))
    elif kind == "set":
        obj = _set(obj, draw(st.sampled_from(ALL_PATHS)), draw(json_values))
    elif kind == "delete":
        obj = _delete(obj, draw(st.sampled_from(ALL_PATHS)))
    elif kind == "add":
        where = draw(st.sampled_from([p for p in ALL_PATHS if isinstance(_get(BASE_TRACE, p), dict)]))
        obj = _set(obj, (*where, draw(st.text(min_size=1, max_size=8))), draw(json_values))
    elif kind == "deep":
        depth = draw(st.sampled_from([50, 2000, 30_000]))
        opener = draw(st.sampled_from(["[", '{"a":']))
        inner = "[" * depth if opener == "[" else '{"a":' * depth
        obj = None
        text = inner + "1" + ("]" * depth if opener == "[" else "}" * depth)
        where = draw(st.sampled_from(["top", "steps", "note"]))
        if where == "top":
            return text.encode()
        base = json.dumps(BASE_TRACE)
        key = '"steps": ' if where == "steps" else '"note": '
        return base.replace(key, key + text + ", " + '"x": ', 1).encode()
    elif kind == "many-steps":
        n = draw(st.sampled_from([10_001, 100_000]))
        obj = _set(BASE_TRACE, ("steps",), [{"op": "Gc"}] * n)
    text = json.dumps(obj, allow_nan=True, ensure_ascii=draw(st.booleans()))
    data = text.encode("utf-8", "surrogatepass")
    if kind == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif kind == "bytes":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    return data


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


TALLY: Counter[str] = Counter()


def check_trace_case(tmp: Path, data: bytes) -> None:
    path = tmp / "case.json"
    path.write_bytes(data)
    o = run_cli(["replay", str(path)])
    try:
        tracefile.load(path, 5_000)
        loads = True
    except tracefile.TraceFormatError:
        loads = False
    TALLY[f"trace exit {o.status}"] += 1
    if o.status == 2:
        line = assert_refused(o, "replay")
        assert shown_path(path) in line
    else:
        # Accepted: it is a valid trace, replayed with the documented statuses and a quiet stderr.
        assert loads and o.status in (0, 1), (o.status, o.err)
        assert o.err == "" and o.seconds < CASE_SECONDS


# --- special files and bad paths -----------------------------------------------------------------


@dataclass
class Files:
    root: Path
    fifo: Path = field(init=False)
    plain: Path = field(init=False)
    readonly: Path = field(init=False)
    directory: Path = field(init=False)
    loop: Path = field(init=False)

    def __post_init__(self) -> None:
        self.fifo = self.root / "fifo"
        os.mkfifo(self.fifo)
        self.plain = self.root / "plain.txt"
        self.plain.write_text("not a trace")
        self.readonly = self.root / "ro.json"
        self.readonly.write_text("{}")
        self.readonly.chmod(0o444)
        self.directory = self.root / "dir"
        self.directory.mkdir()
        self.loop = self.root / "loop"
        os.symlink(self.loop, self.loop)

    def not_a_trace(self) -> list[str]:
        return [
            "", str(self.fifo), "/dev/zero", "/dev/null", str(self.directory), str(self.loop),
            str(self.root / "missing.json"), str(self.plain / "below"), "/proc/self/mem",
        ]  # fmt: skip

    def not_a_directory(self) -> list[str]:
        return ["", str(self.fifo), str(self.plain), str(self.plain / "below"), "/dev/null", str(self.loop)]

    def not_a_writable_file(self) -> list[str]:
        return [
            "", str(self.fifo), "/dev/zero", str(self.directory), str(self.readonly),
            str(self.plain / "below"), "/", str(self.loop),
        ]  # fmt: skip


def _fails(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except Exception:
        return True
    return False


def _bad_text(valid: Any) -> st.SearchStrategy[str]:
    """Texts `valid` rejects: short junk, numbers out of range, kilobytes of junk."""
    return st.one_of(
        st.text(max_size=12),
        st.integers(-(10**12), 10**12).map(str),
        st.sampled_from(["", " ", "-1", "0", "1e3", "nan", "inf", "9" * 5000, "x" * 3000, "\n", "~"]),
    ).filter(lambda s: "\x00" not in s and _fails(valid, s))


def _int_in(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def _float_in(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise ValueError(text)
    return value


def _positive_finite(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(text)
    return value


def _one_of(names: list[str] | tuple[str, ...]) -> Any:
    def parse(text: str) -> str:
        if text not in names:
            raise ValueError(text)
        return text

    return parse


EXPLORE_BASE = ["explore", "--frames", "1", "--slots", "1", "--chunk", "1", "--quiet"]
CHECK_BASE = ["check", "--only", "model", "--max-examples", "1", "--hypothesis-profile", "ci"]
PROVE_BASE = ["prove", "--bounds", "1,1,1,1", "--timeout", "0.01", "--build", "debug"]
#: `fuzz`'s bad arguments are tested in tests/campaign/test_fuzz.py (its --database needs a real Redis).
NOT_FUZZED_HERE = {"fuzz"}


def GATE_BASE(files: Files) -> list[str]:
    """A gate of the C reference: every bad option is refused before the library is loaded."""
    return ["gate", str(build_reference("debug")), "--no-threads"]


def value_options(files: Files) -> dict[str, dict[str, st.SearchStrategy[str]]]:
    """Per command, each option that takes a value, with values it must refuse."""
    mutants = _one_of(mutant_names())
    common_paths = {
        "--failures": st.sampled_from(files.not_a_directory()),
        "--json": st.sampled_from(files.not_a_writable_file()),
    }
    options: dict[str, dict[str, st.SearchStrategy[str]]] = {
        "check": {
            "--max-examples": _bad_text(_int_in(1, 10**9)),
            "--build": _bad_text(_one_of(("debug", "release"))),
            "--hypothesis-profile": _bad_text(_one_of(PROFILES)),
            "--mutant": _bad_text(mutants),
            "--only": _bad_text(_one_of([c.name for c in CHECKS])),
            **common_paths,
        },
        "prove": {
            "--bounds": _bad_text(Bounds.parse),
            "--timeout": _bad_text(_float_in),
            "--build": _bad_text(_one_of(("debug", "release", "both"))),
            "--mutant": _bad_text(mutants),
            "--traces": st.sampled_from(files.not_a_directory()),
            **common_paths,
        },
        "explore": {
            **{f"--{name}": _bad_text(_int_in(low, high)) for name, (low, high) in LIMITS.items()},
            "--mutant": _bad_text(mutants),
            "--build": _bad_text(_one_of(("debug", "release"))),
            "--failures": st.sampled_from(files.not_a_directory()),
            "--workers": _bad_text(_int_in(1, 64)),
            "--time-limit": _bad_text(_positive_finite),
            "--max-states": _bad_text(_int_in(1, 10**12)),
            "--json": st.sampled_from(files.not_a_writable_file()),
            "--progress-every": _bad_text(_positive_finite),
            # A directory is a valid --out (the trace goes inside it).
            "--out": st.sampled_from(
                [p for p in files.not_a_writable_file() if p not in ("/", str(files.directory))]
            ),
        },
        "replay": {
            "--max-steps": _bad_text(_int_in(1, 10_000_000)),
            "--json": st.sampled_from(files.not_a_writable_file()),
            "TRACE": st.sampled_from(files.not_a_trace()),
            "--impl": st.sampled_from(files.not_a_trace()),
            "--mutant": _bad_text(mutants),
            # A sequential trace refuses any --runs (it replays exactly); bad numbers too.
            "--runs": st.sampled_from(["1", "100", "-1", "0", "x", "9" * 5000]),
            "--step-timeout": _bad_text(_positive_finite),
        },
        "gate": {
            "TRACE": st.sampled_from(files.not_a_trace()),
            "--level": _bad_text(_one_of(("strict", "conformant"))),
            "--expect": st.sampled_from(files.not_a_trace()),
            "--time-limit": _bad_text(_positive_finite),
            "--step-timeout": _bad_text(_positive_finite),
            "--junit": st.sampled_from(files.not_a_writable_file()),
            "--json": st.sampled_from(files.not_a_writable_file()),
            "--failures": st.sampled_from(files.not_a_directory()),
            "--hypothesis-profile": _bad_text(_one_of(PROFILES)),
            "--max-examples": _bad_text(_int_in(1, 10**9)),
            "--chunk-size": _bad_text(_int_in(1, 10**9)),
            "--seed": _bad_text(_int_in(0, 2**64 - 1)),
        },
        "reference": {
            "--build": _bad_text(_one_of(("debug", "release"))),
            "--bug": _bad_text(_one_of(sorted(C_BUGS))),
            "--variant": _bad_text(_one_of(sorted(C_VARIANTS))),
        },
    }
    # The bounds of --exhaustive (given without it, any value is refused as well).
    bounds = {f"--{name}": _bad_text(_int_in(low, high)) for name, (low, high) in LIMITS.items()}
    options["gate"] |= bounds
    options["check"] |= bounds
    options["check"] |= {
        "--impl": st.sampled_from(files.not_a_trace()),
        "--chunk-size": _bad_text(_int_in(1, 10**9)),
        "--database": st.sampled_from(["redis://", "redis://:x@", "ftp://host/0", "redis://host:notaport/0"]),
    }
    return options


def flags() -> list[tuple[str, str]]:
    """Every (command, option) that takes no value (`--help` aside): given a value, it is refused."""
    parser, _ = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [
        (name, option)
        for name, sub in sorted(commands.choices.items())
        for action in sub._actions
        if action.nargs == 0 and "--help" not in action.option_strings
        for option in action.option_strings
    ]


@st.composite
def bad_arguments(draw: st.DrawFn, files: Files) -> tuple[str, list[str], dict[str, str]]:
    """(command, argv, environment) with exactly one bad piece."""
    options = value_options(files)
    bases = {"check": CHECK_BASE, "prove": PROVE_BASE, "explore": EXPLORE_BASE, "gate": [*GATE_BASE(files)]}
    kind = draw(st.sampled_from(["option"] * 4 + ["flag", "environment", "command"]))
    if kind == "flag":
        command, flag = draw(st.sampled_from(flags()))
        base = bases.get(command, [command])
        if command == "replay":
            base = ["replay", str(files.root / "good.json")]
        return command, [*base, f"{flag}={draw(st.sampled_from(['1', 'yes', '']))}"], {}
    if kind == "command":
        commands = [
            "check",
            "mutants",
            "explore",
            "replay",
            "prove",
            "gate",
            "reference",
            "fuzz",
            "--help",
            "--version",
        ]
        name = draw(_bad_text(_one_of(commands)))
        return "", [name] if name else [], {}
    if kind == "environment":
        var, values = draw(
            st.sampled_from(
                [
                    ("HYPOTHESIS_PROFILE", _bad_text(_one_of(PROFILES)).filter(bool)),
                    ("EXTERNREF_HARNESS_FAILURES", st.sampled_from(files.not_a_directory())),
                    ("EXTERNREF_HARNESS_PROGRESS_SECONDS", _bad_text(_seconds)),
                ]
            )
        )
        value = draw(values.filter(_env_safe))
        return "check", CHECK_BASE[:-2], {var: value}
    command = draw(st.sampled_from(sorted(options)))
    option = draw(st.sampled_from(sorted(options[command])))
    value = draw(options[command][option])
    if command == "replay":
        good_trace = str(files.root / "good.json")
        argv = ["replay", value] if option == "TRACE" else ["replay", good_trace, f"{option}={value}"]
        return "replay", argv, {}
    if command == "gate" and option == "TRACE":
        return "gate", ["gate", value], {}
    return command, [*bases.get(command, [command]), f"{option}={value}"], {}


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 86400:
        raise ValueError(text)
    return value


def _env_safe(value: str) -> bool:
    try:
        os.fsencode(value)
    except UnicodeError:
        return False
    return "\x00" not in value


def check_argument_case(case: tuple[str, list[str], dict[str, str]]) -> None:
    command, argv, env = case
    o = run_cli(argv, env)
    TALLY[f"{command or 'no command'} {'environment' if env else 'arguments'}"] += 1
    if command == "":  # argparse's own refusal of the command name
        assert o.status == 2 and len(o.err.splitlines()) <= 2 and "Traceback" not in o.err, o.err
        assert o.err.splitlines()[-1].startswith("externref-harness: error: ") and o.seconds < CASE_SECONDS
        return
    assert_refused(o, command)


# --- the tests ---------------------------------------------------------------------------------------


def _fuzz(tmp_path: Path, examples: int) -> None:
    files = Files(tmp_path)
    tracefile.save(tracefile.Trace.from_json(BASE_TRACE), tmp_path / "good.json")
    cwd_before = sorted(os.listdir(tmp_path))

    traces = mutated_traces().map(lambda d: ("trace", d))
    arguments = bad_arguments(files).map(lambda a: ("args", a))

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(traces, arguments))
    def case(drawn: tuple[str, Any]) -> None:
        kind, value = drawn
        if kind == "trace":
            check_trace_case(tmp_path, value)
        else:
            check_argument_case(value)

    case()
    # Nothing was created beside the files the cases wrote themselves.
    assert sorted(os.listdir(tmp_path)) == sorted({*cwd_before, "case.json"} & {*os.listdir(tmp_path)})


def test_generated_bad_input_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    TALLY.clear()
    _fuzz(tmp_path, 150)
    assert TALLY["trace exit 2"] > 20
    assert sum(n for k, n in TALLY.items() if not k.startswith("trace")) > 20


@pytest.mark.slow
def test_generated_bad_input_thousands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    TALLY.clear()
    _fuzz(tmp_path, 2000)
    print(dict(TALLY))
    assert {"check arguments", "prove arguments", "explore arguments", "replay arguments"} <= set(TALLY)
    assert TALLY["check environment"] > 0 and TALLY["trace exit 2"] > 200
    # Some mutated traces were still valid: the 0/1 branch of the check is live.
    assert TALLY["trace exit 0"] > 0 and TALLY["trace exit 1"] > 0


def test_the_generator_covers_every_option_of_every_command(tmp_path: Path) -> None:
    parser, _ = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    table = value_options(Files(tmp_path))
    for name, sub in commands.choices.items():
        if name in NOT_FUZZED_HERE:
            continue
        for action in sub._actions:
            if action.nargs == 0:
                assert (name, action.option_strings[0]) in flags() or "--help" in action.option_strings
                continue
            key = action.option_strings[0] if action.option_strings else "TRACE"
            assert key in table.get(name, {}), f"{name} {key} is never fed bad values"


def test_the_generators_produce_what_they_claim() -> None:
    """The bad-value filters reject what the command line accepts (so a case is truly bad)."""
    assert _fails(_int_in(1, 10), "0") and not _fails(_int_in(1, 10), "5")
    assert _fails(_float_in, "nan") and _fails(_float_in, "inf") and not _fails(_float_in, "1.5")
    assert math.isclose(_float_in("1e1"), 10.0)
    assert _fails(Bounds.parse, "1,1,1") and not _fails(Bounds.parse, "1,1,1,1")
