"""Human-readable traces: numbered steps with their observations, and the state diff at a step.

Long traces stay readable: a list of more than `LIST_LIMIT` values prints as its first and last
few and its length; a path repeated in a row (one per frame walked), or a group of paths repeated
(a host loop of inserts alternating fast and slow paths), prints once with a count; a long list of
slots prints as runs of equal values (`slot_runs`); a diff's consecutive slots with the same change
print as one line, and a diff of more than `DIFF_LIMIT` lines is cut. The caller can ask for
everything (`full_output()`, the `--full` flag of `check` and `replay`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import fields, is_dataclass
from pathlib import Path

from externref_harness import trace as tracefile
from externref_harness.errors import printable
from externref_harness.model.moves import next_quiesce_op
from externref_harness.model.observation import Observation, Ok
from externref_harness.model.ops import Op
from externref_harness.model.state import Config, State, Table, WasmFrame, record_fields
from externref_harness.vec import Vec

#: Lists longer than this print as `[first 3, ..., last 3] (N values)`.
LIST_LIMIT = 8
#: A state diff longer than this many lines is cut.
DIFF_LIMIT = 40
_EDGE = 3
_FULL: ContextVar[bool] = ContextVar("full", default=False)


@contextmanager
def full_output(full: bool = True) -> Iterator[None]:
    """Within this block, print every value of every list and every line of a diff."""
    token = _FULL.set(full)
    try:
        yield
    finally:
        _FULL.reset(token)


def summarised(values: Sequence[object]) -> str:
    """`[0, 1, 2, ..., 1021, 1022, 1023] (1024 values)` for a long list, the list itself otherwise."""
    items = [_value(v) for v in values] if _FULL.get() or len(values) <= LIST_LIMIT else None
    if items is not None:
        return "[" + ", ".join(items) + "]"
    head = [_value(v) for v in values[:_EDGE]]
    tail = [_value(v) for v in values[-_EDGE:]]
    return "[" + ", ".join([*head, "...", *tail]) + f"] ({len(values)} values)"


def _value(v: object) -> str:
    if isinstance(v, Vec):
        v = v.as_tuple()  # shown as the tuple it stands for
    if isinstance(v, tuple) and len(v) > LIST_LIMIT:
        return "(" + summarised(v)[1:].replace("]", ")", 1)
    if isinstance(v, frozenset | set):
        return "{" + summarised(sorted(v))[1:].replace("]", "}", 1) if v else "{}"
    names = _field_names(v)
    if names:
        args = ", ".join(f"{name}={_value(getattr(v, name))}" for name in names)
        return f"{type(v).__name__}({args})"
    return repr(v)


def _field_names(v: object) -> tuple[str, ...]:
    """The fields of a state record or a dataclass value (an operation, a result), else ()."""
    names = record_fields(v)
    if names is not None:
        return names
    if is_dataclass(v) and not isinstance(v, type):
        return tuple(f.name for f in fields(v))
    return ()


def format_op(op: Op) -> str:
    """`WasmCallHost(args=(1,), ret_slot=2, unwind_info=True)`, long argument lists summarised."""
    args = ", ".join(f"{f.name}={_value(getattr(op, f.name))}" for f in fields(op))
    return f"{type(op).__name__}({args})"


#: The longest repeated group of path labels `_runs` looks for (an insert, a GC, a sweep: a loop's
#: body takes a few labels, alternating).
PERIOD_LIMIT = 6


def _repeats(paths: Sequence[str], i: int) -> tuple[int, int]:
    """`(period, count)` of the group at `i` that repeats over the most labels (period 1 first)."""
    best = (1, 1)
    for period in range(1, PERIOD_LIMIT + 1):
        group = paths[i : i + period]
        if len(group) < period:
            break
        count = 1
        while paths[i + count * period : i + (count + 1) * period] == group:
            count += 1
        if count > 1 and count * period > best[0] * best[1]:
            best = (period, count)
    return best


def _runs(paths: Sequence[str]) -> list[str]:
    """`'gc:wasm-frame' x3` for a path taken three times in a row, `('try_insert:chunk-full',
    'insert:gc-and-insert-slow') x256` for a group repeated (a host loop of inserts); more than
    `LIST_LIMIT` groups print as the first and last few and how many were left out."""
    out: list[str] = []
    i = 0
    while i < len(paths):
        period, count = _repeats(paths, i)
        group = paths[i : i + period]
        shown = repr(group[0]) if period == 1 else "(" + ", ".join(map(repr, group)) + ")"
        out.append(shown + (f" x{count}" if count > 1 else ""))
        i += period * count
    if len(out) > 2 * LIST_LIMIT:
        left_out = len(out) - 2 * _EDGE
        out = [*out[:_EDGE], f"... {left_out} more groups ...", *out[-_EDGE:]]
    return out


def slot_runs(slots: Sequence[object], limit: int = LIST_LIMIT) -> str:
    """A long list of slots as runs of equal values: `512 slots: [0-255] 3, [256-511] None`, with
    more than `limit` runs cut to the first and last few (everything under `full_output()`)."""
    runs: list[str] = []
    i = 0
    while i < len(slots):
        j = i
        while j + 1 < len(slots) and slots[j + 1] == slots[i]:
            j += 1
        where = f"[{i}]" if i == j else f"[{i}-{j}]"
        runs.append(f"{where} {_value(slots[i])}")
        i = j + 1
    if not _FULL.get() and len(runs) > 2 * limit:
        runs = [*runs[:limit], f"... {len(runs) - 2 * limit} more runs ...", *runs[-limit:]]
    return f"{len(slots)} slots: " + ", ".join(runs)


def format_observation(obs: Observation) -> str:
    result = obs.result
    shown_result = str(result)
    if isinstance(result, Ok) and isinstance(result.value, tuple):  # `elements()` of a full table
        shown_result = f"Ok({_value(result.value)})"
    parts = [printable(shown_result)]
    if obs.dropped:
        parts.append(f"dropped={summarised(sorted(obs.dropped))}")
    if obs.events:
        shown = [repr(p) for p in obs.events] if _FULL.get() else _runs(obs.events)
        parts.append("paths=[" + ", ".join(shown) + "]")
    return " ".join(parts)


def teardown_start(cfg: Config, steps: Sequence[Op], states: Sequence[State] | None = None) -> int:
    """The index from which `steps` are exactly the harness's teardown (`next_quiesce_op` from each
    state on), `len(steps)` if they do not end in one. `states` starts with the initial state."""
    if states is None:
        from externref_harness.model.transition import run

        states = [State.initial(cfg), *(s for s, _ in run(cfg, steps))]
    k = len(steps)
    while k > 0 and next_quiesce_op(states[k - 1]) == steps[k - 1]:
        k -= 1
    return k


def state_diff(before: State, after: State) -> list[str]:
    """One line per changed part: heap entries, table fields (chunk slots, set members), handles,
    raws, globals, and each frame's changed slots and fields, never two whole tuples."""
    lines: list[str] = []
    for name in State.FIELDS:
        a, b = getattr(before, name), getattr(after, name)
        if a == b:
            continue
        if isinstance(a, Vec) and isinstance(b, Vec):
            a, b = a.as_tuple(), b.as_tuple()  # the heap and the handles, position by position
        if name == "table":
            for tname in Table.FIELDS:
                ta, tb = getattr(a, tname), getattr(b, tname)
                if ta == tb:
                    continue
                if isinstance(ta, frozenset):
                    lines.append(f"table.{tname}: {_set_change(ta, tb)}")
                elif isinstance(ta, tuple):
                    lines += _indexed(f"table.{tname}", ta, tb)
                else:
                    lines.append(f"table.{tname}: {_value(ta)} -> {_value(tb)}")
        elif name == "frames":
            lines += _frames_diff(a, b)
        elif name == "faults":
            lines += [f"faults: + {printable(x)}" for x in b[len(a) :]] if b[: len(a)] == a else [
                f"faults: {_value(a)} -> {_value(b)}"
            ]
        elif isinstance(a, tuple):
            lines += _indexed(name, a, b)
        else:
            lines.append(f"{name}: {printable(_value(a))} -> {printable(_value(b))}")
    if not _FULL.get() and len(lines) > DIFF_LIMIT:
        lines = [*lines[:DIFF_LIMIT], f"... and {len(lines) - DIFF_LIMIT} more changed parts"]
    return lines


_ABSENT = object()


def _indexed(name: str, a: tuple[object, ...], b: tuple[object, ...]) -> list[str]:
    """One line per changed index; consecutive slots with the same change (a chunk of 512 slots
    allocated or swept) as one line, `table.chunk[0-511]: (none) -> None (512 slots)`."""
    out = []
    n = max(len(a), len(b))
    i = 0
    while i < n:
        va = a[i] if i < len(a) else _ABSENT
        vb = b[i] if i < len(b) else _ABSENT
        i += 1
        if va == vb:
            continue
        names = _field_names(va)
        if type(va) is type(vb) and names:
            changed = [
                f"{f} {_value(getattr(va, f))} -> {_value(getattr(vb, f))}"
                for f in names
                if getattr(va, f) != getattr(vb, f)
            ]
            out.append(f"{name}[{i - 1}]: " + ", ".join(changed))
            continue
        first = i - 1
        while (
            not _FULL.get()
            and i < n
            and (a[i] if i < len(a) else _ABSENT) == va
            and (b[i] if i < len(b) else _ABSENT) == vb
        ):
            i += 1
        change = f"{_shown_or_absent(va)} -> {_shown_or_absent(vb)}"
        if i - first > 1:
            out.append(f"{name}[{first}-{i - 1}]: {change} ({i - first} slots)")
        else:
            out.append(f"{name}[{first}]: {change}")
    return out


def _shown_or_absent(v: object) -> str:
    return "(none)" if v is _ABSENT else _value(v)


def _set_change(a: frozenset[int], b: frozenset[int]) -> str:
    added, removed = sorted(b - a), sorted(a - b)
    parts = ([f"+{summarised(added)}"] if added else []) + ([f"-{summarised(removed)}"] if removed else [])
    return " ".join(parts) + f" (now {len(b)})"


def _frames_diff(a: tuple[object, ...], b: tuple[object, ...]) -> list[str]:
    out = []
    for i in range(max(len(a), len(b))):
        fa = a[i] if i < len(a) else _ABSENT
        fb = b[i] if i < len(b) else _ABSENT
        if fa == fb:
            continue
        if isinstance(fa, WasmFrame) and isinstance(fb, WasmFrame):
            out += _indexed(f"frames[{i}].slots", fa.slots, fb.slots)
            for fname in WasmFrame.FIELDS:
                if fname != "slots" and getattr(fa, fname) != getattr(fb, fname):
                    va, vb = _value(getattr(fa, fname)), _value(getattr(fb, fname))
                    out.append(f"frames[{i}].{fname}: {va} -> {vb}")
        else:
            out.append(f"frames[{i}]: {_shown_or_absent(fa)} -> {_shown_or_absent(fb)}")
    return out


def format_steps(
    steps: Sequence[Op],
    observations: Sequence[Observation],
    failing: int | None = None,
    teardown_from: int | None = None,
) -> str:
    """`  1. New(size=8, align=8)  -> Ok(0)`, `>>` marking the failing step; the steps from
    `teardown_from` (0-based) on are headed as the harness's teardown."""
    width = len(str(len(steps)))
    out = []
    for i, (op, obs) in enumerate(zip(steps, observations, strict=False), 1):
        if teardown_from is not None and i == teardown_from + 1:
            out.append(f"  {'':>{width}}  -- teardown from here: unwind, drop everything, GC --")
        mark = ">>" if failing == i else "  "
        out.append(f"{mark}{i:>{width}}. {format_op(op)}  -> {format_observation(obs)}")
    return "\n".join(out)


def format_failure(
    title: str,
    steps: Sequence[Op],
    observations: Sequence[Observation],
    before: State,
    after: State,
    saved: str | None = None,
    teardown_from: int | None = None,
) -> str:
    parts = [
        printable(title) if "\n" not in title else title,
        "",
        "Steps:",
        format_steps(steps, observations, len(steps), teardown_from),
    ]
    diff = state_diff(before, after)
    parts += ["", f"State diff at step {len(steps)}:"]
    parts += [f"    {line}" for line in diff] or ["    (no change)"]
    if saved:
        parts += ["", f"Saved for replay: externref-harness replay {printable(saved)}"]
    return "\n".join(parts)


def save_and_format(
    title: str,
    cfg: Config,
    steps: Sequence[Op],
    observations: Sequence[Observation],
    states: Sequence[State],
    problem: str,
    save_as: Path | None,
    teardown_from: int | None = None,
    replay_args: str = "",
) -> str:
    """Save a shrunk failing trace for replay and print it; `states` starts with the initial one.

    `teardown_from` (0-based) is where the harness's teardown begins, if the caller knows; else the
    longest tail of quiescing steps is shown as the teardown. `replay_args` are the options
    `replay` needs besides the trace (e.g. `--impl PATH.so`)."""
    saved = None
    if save_as is not None:
        tracefile.save(tracefile.Trace(cfg, tuple(steps), problem), save_as)
        saved = f"{save_as} {replay_args}".rstrip()
    if teardown_from is None:
        teardown_from = teardown_start(cfg, steps, states)
    before = states[-2] if len(states) >= 2 else states[-1]
    return format_failure(title, steps, observations, before, states[-1], saved, teardown_from)
