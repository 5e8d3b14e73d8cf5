"""Which modules the install compiles with mypyc, and whether this process runs them compiled.

The model and the explorer's inner loop are ordinary, fully typed Python. `setup.py` compiles the
modules of `COMPILED_MODULES` with mypyc into C extensions beside their sources (about three times
faster; the explorer needs it) and records each source's digest in `MANIFEST`. Python prefers an
extension to a source of the same name, so an extension built from an older source would silently
run old code after an edit. `use_fresh_extensions`, run by the package's `__init__` before any of
these modules is imported, prevents that:

    digests == MANIFEST, every extension present ?  ──yes──>  import the extensions (compiled)
            │ no (an edited source, a missing extension, no build, EXTERNREF_HARNESS_INTERPRETED=1)
            └──────────────────────────────────────────────────>  a finder loads every listed .py

It is all or none: compiled modules call each other directly, so one stale module means none is
used. `mode()` says which way this process runs, and why; `explore` and `--version` print it.

This module imports nothing of the package: `setup.py` reads `COMPILED_MODULES` from it before the
package is installed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

#: The modules compiled, in the groups `setup.py` passes to mypyc: a group is one C extension whose
#: modules call each other directly; calls between groups go through mypyc's exported tables, a
#: little slower, so each group holds a hot path whole. The two groups compile in parallel.
#: All or none are used (they call each other directly, so a test that patches one of their
#: globals runs interpreted, see `ENV_INTERPRETED`).
COMPILED_GROUPS: dict[str, tuple[str, ...]] = {
    "model": (
        "externref_harness.model.state",
        "externref_harness.model.observation",
        "externref_harness.model.runtime",
        "externref_harness.model.host",
        "externref_harness.model.protocol",
        "externref_harness.model.world",
        "externref_harness.model.moves",
        "externref_harness.model.transition",
        # The explorer's per-transition path: canonical form, seen-set, path labels, invariants
        # and the search core that calls them all (`partition`).
        "externref_harness.explore.symmetry",
        "externref_harness.explore.fingerprints",
        "externref_harness.search.path_labels",
        "externref_harness.specs.invariants",
        "externref_harness.explore.partition",
        # The lockstep's per-step diff of heap-sized tuples, and the check of every reply that
        # crosses from the implementation's process (the gate's parent checks one per step).
        "externref_harness.changes",
        # The model's heap: a persistent vector, read and written at every step.
        "externref_harness.vec",
        "externref_harness.isolation.wire",
        # `--exhaustive`'s plan (a search over concrete states) and each run's chain of moves (a
        # breadth-first walk per run): the parent's share of every exhaustive step.
        "externref_harness.exhaustive.plan",
        "externref_harness.exhaustive.chain",
    ),
    # The lockstep's step: the host world that drives the runtime, the checking heap, the stack,
    # the adapter's probe, the native library's calls, and the comparisons and memory checks of
    # each step (`lockstep.check`, Hypothesis's side, stays interpreted).
    "lockstep": (
        "externref_harness.impl.code",
        "externref_harness.impl.nonref",
        "externref_harness.impl.memory",
        "externref_harness.impl.heap",
        "externref_harness.impl.stack",
        "externref_harness.impl.world",
        "externref_harness.impl.adapter",
        "externref_harness.native.backend",
        "externref_harness.lockstep.projection",
        "externref_harness.lockstep.identity",
        "externref_harness.lockstep.memory_checks",
        "externref_harness.lockstep.deadline",
        "externref_harness.lockstep.runner",
        # The gate's side of the implementation's process: every request and reply of a run,
        # and their frames through msgspec (both processes, every step).
        "externref_harness.isolation.pool",
        "externref_harness.isolation.fast_wire",
    ),
}
COMPILED_MODULES: tuple[str, ...] = tuple(m for group in COMPILED_GROUPS.values() for m in group)
#: Modules written in C (`<name>.c` beside where the `.py` would be), built by `setup.py` with the
#: mypyc modules and used on the same terms: all of them, fresh, or none. Each has a pure-Python
#: fallback in the module that imports it, which computes the same thing more slowly.
C_MODULES: tuple[str, ...] = ("externref_harness._changes", "externref_harness.native._calls")
#: Everything the install builds, whose sources the manifest records.
BUILT_MODULES: tuple[str, ...] = COMPILED_MODULES + C_MODULES
#: Written by `setup.py` beside this file: {module: sha256 of the source it was compiled from}.
MANIFEST = "_compiled.json"
#: Set to 1 to run every module interpreted although it is compiled (to compare, or to debug).
ENV_INTERPRETED = "EXTERNREF_HARNESS_INTERPRETED"

_PACKAGE_DIR = Path(__file__).resolve().parent
_mode = "interpreted (not yet decided)"


def source_path(module: str, package_dir: Path = _PACKAGE_DIR) -> Path:
    """`externref_harness.model.state` -> `<package>/model/state.py`; a C module's `.c`."""
    parts = module.split(".")
    if parts[0] != "externref_harness":
        raise ValueError(f"{module} is not a module of externref_harness")
    suffix = ".c" if module in C_MODULES else ".py"
    return package_dir.joinpath(*parts[1:-1], parts[-1] + suffix)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def has_extension(module: str, package_dir: Path = _PACKAGE_DIR) -> bool:
    """Whether the module's compiled extension is beside its source (any suffix this Python loads)."""
    source = source_path(module, package_dir)
    stem = source.with_suffix("")
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return any(stem.with_name(stem.name + suffix).is_file() for suffix in suffixes)


def stale_modules(package_dir: Path = _PACKAGE_DIR) -> list[str] | None:
    """The compiled modules that cannot be used: the source changed since the build, or the
    manifest lists the module but its extension is missing (deleted, or a partial build; Python
    would silently import that one module from its source, a mix the compiled modules' direct calls
    do not allow). None if nothing was compiled."""
    try:
        recorded = json.loads((package_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict):
        return None
    stale = []
    for module in BUILT_MODULES:
        try:
            same = recorded.get(module) == digest(source_path(module, package_dir))
        except OSError:
            same = False
        if not same or not has_extension(module, package_dir):
            stale.append(module)
    return stale


class _SourceFinder:
    """A meta-path finder that loads the listed modules from their `.py`, never an extension, and
    refuses the C modules (their importers fall back to Python)."""

    def __init__(self, modules: Sequence[str], package_dir: Path) -> None:
        self.sources = {m: source_path(m, package_dir) for m in modules}

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname in C_MODULES:
            raise ModuleNotFoundError(f"{fullname} is not used: {_mode}", name=fullname)
        source = self.sources.get(fullname)
        if source is None:
            return None
        loader = importlib.machinery.SourceFileLoader(fullname, str(source))
        return importlib.util.spec_from_file_location(fullname, source, loader=loader)


def use_fresh_extensions(package_dir: Path = _PACKAGE_DIR) -> str:
    """Decide, once per process, whether the compiled extensions may be imported; returns `mode()`."""
    global _mode
    if any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        return _mode
    stale = stale_modules(package_dir)
    if os.environ.get(ENV_INTERPRETED, "") not in ("", "0"):
        reason = f"{ENV_INTERPRETED} is set"
    elif stale is None:
        reason = "not compiled by this install"
    elif stale:
        names = ", ".join(
            str(source_path(m, package_dir).relative_to(package_dir))
            + ("" if has_extension(m, package_dir) else " (no extension)")
            for m in stale
        )
        reason = f"changed since the build: {names}; reinstall to compile them again"
    else:
        _mode = "compiled (mypyc)"
        return _mode
    sys.meta_path.insert(0, _SourceFinder(COMPILED_MODULES, package_dir))
    _mode = f"interpreted ({reason})"
    return _mode


def mode() -> str:
    """`compiled (mypyc)` or `interpreted (why)`, for this process."""
    return _mode


def is_compiled() -> bool:
    """Whether the listed modules really are extensions in this process (not just meant to be)."""
    modules = [importlib.import_module(m) for m in COMPILED_MODULES]
    return all(not (m.__file__ or "").endswith(".py") for m in modules)
