"""A library that crashes wherever a campaign or an exhaustive run goes: the C reference whose
`xr_gc` dies by SIGSEGV (built by `isolation/misbehaving.py`). A seeded bug's crash depends on the
words it happens to read (`c-wild-read` reads the non-ref words of unmapped slots, most of which are
mapped memory, so it may corrupt before it crashes); this one cannot miss."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_MISBEHAVING = Path(__file__).resolve().parent / "isolation" / "misbehaving.py"


def load_misbehaving() -> ModuleType:
    """`tests/isolation/misbehaving.py`, which builds libraries that misbehave in one way each."""
    spec = importlib.util.spec_from_file_location("misbehaving", _MISBEHAVING)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("misbehaving", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def crashing_gc_library(tmp_path: Path) -> Path:
    library: Path = load_misbehaving().build(tmp_path, "gc-segfaults", gc="raise(SIGSEGV)")
    return library
