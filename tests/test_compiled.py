"""The compiled build: it is used only while it matches its sources, and it computes what the
interpreted model computes.

Each check that needs a fresh decision runs in a child interpreter: the decision is made once per
process, when `externref_harness` is first imported.
"""

from __future__ import annotations

import ast
import importlib.machinery
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from externref_harness import compiled
from externref_harness.explore.driver import explore
from externref_harness.explore.explorer import ExploreBounds

PACKAGE = Path(compiled.__file__).resolve().parent


def _child(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != compiled.ENV_INTERPRETED}
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


_WHERE = (
    "import externref_harness.compiled as c, externref_harness.model.world as w; "
    "print(c.mode()); print(w.__file__); print(c.is_compiled())"
)


@pytest.mark.skipif(not os.environ.get("CI"), reason="a developer's checkout may be interpreted")
def test_ci_runs_the_compiled_model() -> None:
    """`.ci/run` installs with compilation on: a build that silently fell back would hide here."""
    assert compiled.mode() == "compiled (mypyc)"
    assert compiled.is_compiled()


def test_the_environment_switch_runs_every_listed_module_interpreted() -> None:
    mode, world, is_compiled = _child(_WHERE, **{compiled.ENV_INTERPRETED: "1"}).splitlines()
    assert mode == f"interpreted ({compiled.ENV_INTERPRETED} is set)"
    assert world.endswith("world.py") and is_compiled == "False"


def _extension(module: str, package_dir: Path) -> Path:
    source = compiled.source_path(module, package_dir)
    return source.with_name(source.stem + importlib.machinery.EXTENSION_SUFFIXES[0])


def _package_copy(tmp_path: Path) -> Path:
    """The installed package's sources and manifest, and a file where each extension would be
    (only their presence is looked at: the tests' finder never imports them), to edit."""
    copy = tmp_path / "pkg"
    for module in compiled.BUILT_MODULES:
        source = compiled.source_path(module, PACKAGE)
        target = compiled.source_path(module, copy)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        _extension(module, copy).write_bytes(b"")
    digests = {m: compiled.digest(compiled.source_path(m, copy)) for m in compiled.BUILT_MODULES}
    (copy / compiled.MANIFEST).write_text(json.dumps(digests))
    return copy


def test_an_edited_source_is_named_stale(tmp_path: Path) -> None:
    copy = _package_copy(tmp_path)
    assert compiled.stale_modules(copy) == []
    moves = compiled.source_path("externref_harness.model.moves", copy)
    moves.write_text(moves.read_text() + "\n# an edit after the build\n")
    assert compiled.stale_modules(copy) == ["externref_harness.model.moves"]
    (copy / compiled.MANIFEST).unlink()
    assert compiled.stale_modules(copy) is None


def test_a_missing_extension_is_stale(tmp_path: Path) -> None:
    """The manifest lists a module whose extension is gone: that module counts as stale, so the
    whole build does, and every listed module runs from its `.py` (never a mix)."""
    copy = _package_copy(tmp_path)
    _extension("externref_harness.model.world", copy).unlink()
    assert compiled.stale_modules(copy) == ["externref_harness.model.world"]
    code = (
        "import sys, pathlib, importlib.util, externref_harness.compiled as c\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, c._SourceFinder)]\n"
        f"print(c.use_fresh_extensions(pathlib.Path({str(copy)!r})))\n"
        "for m in c.COMPILED_MODULES: print(importlib.util.find_spec(m).origin)\n"
    )
    mode, *origins = _child(code).splitlines()
    assert mode.startswith("interpreted (changed since the build: model/world.py (no extension)")
    assert origins == [str(compiled.source_path(m, copy)) for m in compiled.COMPILED_MODULES]


def test_an_edited_c_source_is_stale_and_refused(tmp_path: Path) -> None:
    """A C module is judged as the mypyc modules are: edited after the build, the whole build is
    stale, and the C module is refused, so its importer runs its Python loop."""
    copy = _package_copy(tmp_path)
    source = compiled.source_path("externref_harness._changes", copy)
    assert source.suffix == ".c"
    source.write_text(source.read_text() + "\n/* edited */\n")
    assert compiled.stale_modules(copy) == ["externref_harness._changes"]
    code = (
        "import sys, pathlib, externref_harness.compiled as c\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, c._SourceFinder)]\n"
        "sys.modules.pop('externref_harness._changes', None)\n"
        f"print(c.use_fresh_extensions(pathlib.Path({str(copy)!r})))\n"
        "try:\n"
        "    import externref_harness._changes\n"
        "except ImportError as e:\n"
        "    print('refused')\n"
    )
    mode, refused = _child(code).splitlines()
    assert mode.startswith("interpreted (changed since the build: _changes.c")
    assert refused == "refused"


def test_a_stale_build_runs_the_sources_not_the_extensions(tmp_path: Path) -> None:
    """A decision against the extensions installs a finder that loads the `.py` of every listed
    module; the reason names the edited file."""
    copy = _package_copy(tmp_path)
    state = compiled.source_path("externref_harness.model.state", copy)
    state.write_text(state.read_text() + "\n# edited\n")
    code = (
        "import sys, pathlib, externref_harness.compiled as c\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, c._SourceFinder)]\n"
        f"print(c.use_fresh_extensions(pathlib.Path({str(copy)!r})))\n"
        "import importlib.util\n"
        "print(importlib.util.find_spec('externref_harness.model.state').origin)\n"
    )
    mode, origin = _child(code).splitlines()
    assert mode.startswith("interpreted (changed since the build: model/state.py")
    assert origin == str(state)


def _figures(mutants: list[str | None], interpreted: bool) -> list[object]:
    """States, transitions, op and path counts and the shortest violation of a depth-9 search
    per mutant, in this process or in an interpreted child."""
    code = (
        "import json, sys\n"
        "from externref_harness.explore.driver import explore\n"
        "from externref_harness.explore.explorer import ExploreBounds\n"
        "out = [explore(ExploreBounds(depth=9, mutant=m).search()) for m in json.loads(sys.argv[1])]\n"
        "print(json.dumps([[o.states, o.transitions, o.op_counts, o.path_counts,"
        " None if o.violation is None else [o.violation.title, [str(s) for s in o.violation.trace]]]"
        " for o in out]))\n"
    )
    if not interpreted:
        out = [explore(ExploreBounds(depth=9, mutant=m).search()) for m in mutants]
        return [
            [o.states, o.transitions, o.op_counts, o.path_counts,
             None if o.violation is None else [o.violation.title, [str(s) for s in o.violation.trace]]]
            for o in out
        ]  # fmt: skip
    environment = {**os.environ, compiled.ENV_INTERPRETED: "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(mutants)],
        capture_output=True, text=True, env=environment, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_compiled_and_interpreted_searches_count_the_same() -> None:
    """The same counts, op counts, path counts and shortest violation both ways (in CI this
    process runs the compiled model, the child the interpreted one); a different model differs."""
    mine = _figures([None, "cve-2022-31146"], interpreted=False)
    assert mine == _figures([None, "cve-2022-31146"], interpreted=True)
    assert mine[1][-1] is not None  # type: ignore[index]
    assert mine != _figures([None, "cve-2022-24791"], interpreted=True)


def test_the_packages_of_compiled_modules_import_only_compiled_modules_in_their_init() -> None:
    """mypyc builds a module with its packages' `__init__`s, before the dependencies are installed
    (a fresh install compiles first): an `__init__` that imports, say, Hypothesis breaks the build."""
    import ast

    allowed = set(compiled.COMPILED_MODULES) | {"externref_harness.compiled", "__future__"}
    for module in compiled.COMPILED_MODULES:
        parts = module.split(".")
        for depth in range(1, len(parts)):
            init = PACKAGE.joinpath(*parts[1:depth], "__init__.py")
            tree = ast.parse(init.read_text())
            imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            assert imported <= allowed, f"{init} imports {sorted(imported - allowed)}"


def _except_names_of_two_types(source: str) -> list[str]:
    """Functions where one name is bound by `except` clauses of different types: compiled, the
    name keeps the first clause's type, and binding the second raises `TypeError` at run time."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        types: dict[str, set[str]] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
                types.setdefault(node.name, set()).add(ast.unparse(node.type))
        found += [f"{fn.name}:{fn.lineno} {name}" for name, kinds in types.items() if len(kinds) > 1]
    return found


def test_no_compiled_function_binds_one_name_to_two_exception_types() -> None:
    assert _except_names_of_two_types(
        "def f():\n    try:\n        pass\n    except KeyError as e:\n        pass\n"
        "    except OSError as e:\n        pass\n"
    ) == ["f:1 e"], "the scan misses the pattern it is for"
    sources = {m: compiled.source_path(m).read_text() for m in compiled.COMPILED_MODULES}
    assert not {m: found for m, source in sources.items() if (found := _except_names_of_two_types(source))}


_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
#: Third-party packages mypyc may meet in pip's build environment: `pyproject.toml`'s
#: `[build-system]` requirements, mypy's own, and z3, which the mypy configuration lets be missing.
_BUILD_ENVIRONMENT = {
    re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].replace("-", "_")
    for requirement in tomllib.loads(_PYPROJECT.read_text())["build-system"]["requires"]
} | {"mypy_extensions", "typing_extensions", "z3"}


def _third_party_closure(modules: tuple[str, ...]) -> dict[str, str]:
    """Each third-party package imported by `modules` or any module of the package they import
    (mypyc type-checks them all), with a module that imports it."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        path = compiled.source_path(module)
        if path.suffix != ".py" or module in seen:
            continue
        seen.add(module)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                top = name.split(".")[0]
                if top == "externref_harness":
                    parts = name.split(".")
                    for k in range(2, len(parts) + 1):
                        sub = ".".join(parts[:k])
                        if compiled.source_path(sub).is_file():
                            todo.append(sub)
                        elif (PACKAGE.joinpath(*parts[1:k]) / "__init__.py").is_file():
                            todo.append(f"{sub}.__init__")
                elif top not in sys.stdlib_module_names:
                    found.setdefault(top, module)
    return found


def test_the_compiled_modules_import_only_what_the_build_environment_has() -> None:
    """pip builds in an environment of setuptools and mypy alone: a compiled module that imports
    (through any module of the package) Hypothesis, redis or rich fails a fresh install, though a
    developer's venv, which has them, builds it."""
    assert "hypothesis" in _third_party_closure(("externref_harness.search.model_check",))
    found = _third_party_closure(compiled.COMPILED_MODULES)
    extra = {package: module for package, module in found.items() if package not in _BUILD_ENVIRONMENT}
    assert not extra, f"imported by compiled modules, missing at build time: {extra}"
