"""What a lockstep run checks: the harness's Python port, or a native library behind the C ABI.

A `Target` makes the adapters of a run and fixes the parts of its config the implementation
decides: a native library's build (debug or release, from `xr_describe`), its declared
capabilities (`model.capabilities`), and its chunk size (the
model runs at the implementation's chunk size; a library with `xr_table_new_with_chunk_size` can
be run at any, and by default runs at the small chunk that keeps slow paths near).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from externref_harness.errors import UsageError
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.isolation.describe import child_env, describe_library
from externref_harness.isolation.pool import DEFAULT_STEP_TIMEOUT, ChildPool
from externref_harness.lockstep.runner import AdapterFactory
from externref_harness.model.moves import Bounds
from externref_harness.model.state import Build, Config
from externref_harness.native.library import Description

#: A chunk at least this large needs host loops of inserts (`InsertMany`) to fill it.
LARGE_CHUNK = 16


@dataclass(frozen=True)
class Target:
    name: str
    adapter_factory: AdapterFactory
    #: A native library's path and what it says of itself (None: the Python port).
    path: Path | None = None
    description: Description | None = None

    def config(self, base: Config, build: Build | None, chunk_size: int | None) -> Config:
        """`base` with the build and chunk size this target runs at (bad requests: `UsageError`)."""
        desc = self.description
        if desc is None:
            return replace(base, build=build or base.build, chunk_size=chunk_size or base.chunk_size)
        own: Build = "debug" if desc.debug else "release"
        if build is not None and build != own:
            raise UsageError(f"--build {build}: {self.path} is a {own} build")
        if chunk_size is None:
            chunk_size = base.chunk_size if desc.has_set_chunk_size else desc.chunk_size
        elif chunk_size != desc.chunk_size and not desc.has_set_chunk_size:
            raise UsageError(
                f"--chunk-size {chunk_size}: {self.path} has a fixed chunk of {desc.chunk_size} "
                "slots (no xr_table_new_with_chunk_size)"
            )
        return replace(base, build=own, chunk_size=chunk_size, capabilities=desc.capabilities)


def bounds_for(cfg: Config, bounds: Bounds, description: Description | None = None) -> Bounds:
    """Large chunks are filled by host loops of inserts; small ones by single inserts. A native
    library gets only the value layouts it makes: the ones it lists (`xr_value_layouts`), else
    those of `bounds` within its `max_value_size` and `max_value_align` (bad: `UsageError`)."""
    if cfg.chunk_size >= LARGE_CHUNK:
        bounds = replace(bounds, insert_many=True)
    if description is None:
        return bounds
    if description.value_layouts is not None:
        return replace(bounds, layouts=description.value_layouts)
    layouts = tuple((size, align) for size, align in bounds.layouts if description.allows(size, align))
    if not layouts:
        raise UsageError(
            f"the library makes values up to size {description.max_value_size}, align "
            f"{description.max_value_align}: none of the search's layouts {list(bounds.layouts)}; "
            "list the layouts it makes with xr_value_layouts"
        )
    return replace(bounds, layouts=layouts)


PYTHON = Target("ctypes impl", InProcessImpl)


def native_target(path: Path) -> Target:
    """A library loaded and validated (`LibraryError` names it and the problem)."""
    from externref_harness.native.backend import native_runtime, open_library

    library = open_library(path)
    desc = library.description
    factory = native_runtime(library)
    return Target(f"{desc.name} {desc.version}", lambda: InProcessImpl(factory), path, desc)


def target(impl: Path | None) -> Target:
    """In this process: the Python port, or a library loaded here (`check --impl`'s search)."""
    return PYTHON if impl is None else native_target(impl)


def isolated_target(path: Path, description: Description, pool: ChildPool) -> Target:
    """A library run only in `pool`'s children: a crash or a hang is that run's failure."""
    return Target(f"{description.name} {description.version}", pool.adapter, path, description)


def open_isolated(path: Path, step_timeout: float = DEFAULT_STEP_TIMEOUT) -> tuple[Target, ChildPool]:
    """A library described in a confined child (a bad one: a one-line `UsageError`) and the pool
    of children its runs use; the caller closes the pool."""
    env = child_env(path)
    description = describe_library(path, env)
    pool = ChildPool(path, step_timeout, env)
    return isolated_target(path, description, pool), pool
