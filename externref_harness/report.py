"""Human-readable traces: numbered steps with their observations, and the state diff at a step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from externref_harness import trace as tracefile
from externref_harness.model.observation import Observation
from externref_harness.model.ops import Op
from externref_harness.model.state import Config, State


def state_diff(before: State, after: State) -> list[str]:
    """One line per top-level field that changed (the table field by field)."""
    lines: list[str] = []
    for f in fields(State):
        a, b = getattr(before, f.name), getattr(after, f.name)
        if a == b:
            continue
        if f.name == "table":
            for tf in fields(a):
                ta, tb = getattr(a, tf.name), getattr(b, tf.name)
                if ta != tb:
                    lines.append(f"table.{tf.name}: {ta!r} -> {tb!r}")
        elif f.name == "heap":
            for r in range(max(len(a), len(b))):
                ba = a[r] if r < len(a) else None
                bb = b[r] if r < len(b) else None
                if ba != bb:
                    lines.append(f"heap[{r}]: {ba!r} -> {bb!r}")
        else:
            lines.append(f"{f.name}: {a!r} -> {b!r}")
    return lines


def format_steps(
    steps: Sequence[Op], observations: Sequence[Observation], failing: int | None = None
) -> str:
    """`  1. New(8, 8)  -> Ok(0)`, with `>>` marking the failing step."""
    width = len(str(len(steps)))
    out = []
    for i, (op, obs) in enumerate(zip(steps, observations, strict=False), 1):
        mark = ">>" if failing == i else "  "
        out.append(f"{mark}{i:>{width}}. {op}  -> {obs}")
    return "\n".join(out)


def format_failure(
    title: str,
    steps: Sequence[Op],
    observations: Sequence[Observation],
    before: State,
    after: State,
    saved: str | None = None,
) -> str:
    parts = [title, "", "Steps:", format_steps(steps, observations, failing=len(steps))]
    diff = state_diff(before, after)
    parts += ["", f"State diff at step {len(steps)}:"]
    parts += [f"    {line}" for line in diff] or ["    (no change)"]
    if saved:
        parts += ["", f"Saved for replay: externref-harness replay {saved}"]
    return "\n".join(parts)


def save_and_format(
    title: str,
    cfg: Config,
    steps: Sequence[Op],
    observations: Sequence[Observation],
    states: Sequence[State],
    problem: str,
    save_as: Path | None,
    replay_args: str = "",
) -> str:
    """Save a shrunk failing trace for replay and print it; `states` starts with the initial one.

    `replay_args` are the options `replay` needs besides the trace (e.g. `--impl PATH.so`)."""
    saved = None
    if save_as is not None:
        tracefile.save(tracefile.Trace(cfg, tuple(steps), problem), save_as)
        saved = f"{save_as} {replay_args}".rstrip()
    before = states[-2] if len(states) >= 2 else states[-1]
    return format_failure(title, steps, observations, before, states[-1], saved)
