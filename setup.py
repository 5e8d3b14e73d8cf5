"""The build's one step beyond `pyproject.toml`: compile the hot modules with mypyc, and build
the C modules (`compiled.C_MODULES`).

`externref_harness/compiled.py` lists them and explains how a process decides to use them. Each
source's digest goes into the manifest beside it, so an extension is never used after its source
changed. `EXTERNREF_HARNESS_COMPILE=0` installs everything interpreted (no C compiler needed).
"""

from __future__ import annotations

import json
import os
import runpy
from pathlib import Path
from typing import Any

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "externref_harness"
compiled = runpy.run_path(str(PACKAGE / "compiled.py"))


def remove_old_extensions() -> None:
    """Extensions of an earlier build: a module no longer compiled must not import a stale one."""
    for directory in (PACKAGE, *(p for p in PACKAGE.iterdir() if p.is_dir())):
        for old in directory.glob("*.so"):
            old.unlink()
    for old in ROOT.glob("*__mypyc.*.so"):
        old.unlink()


def ext_modules() -> list[Any]:
    manifest = PACKAGE / compiled["MANIFEST"]
    remove_old_extensions()
    if os.environ.get("EXTERNREF_HARNESS_COMPILE", "1") == "0":
        manifest.unlink(missing_ok=True)
        return []
    from mypyc.build import mypycify

    sources = {m: compiled["source_path"](m, PACKAGE) for m in compiled["BUILT_MODULES"]}
    def paths(modules: tuple[str, ...]) -> list[str]:
        return [str(sources[m].relative_to(ROOT)) for m in modules]

    groups = [(paths(modules), name) for name, modules in compiled["COMPILED_GROUPS"].items()]
    extensions = mypycify(paths(compiled["COMPILED_MODULES"]), opt_level="3", separate=groups)
    extensions += [
        Extension(m, [str(sources[m].relative_to(ROOT))], extra_compile_args=["-O2"])
        for m in compiled["C_MODULES"]
    ]
    digests = {m: compiled["digest"](path) for m, path in sources.items()}
    manifest.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    return list(extensions)


# The groups' extensions (and the C modules) compile side by side.
setup(ext_modules=ext_modules(), options={"build_ext": {"parallel": 2}})
