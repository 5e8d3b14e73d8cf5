"""A test that patches what compiled code calls directly runs again in an interpreted child.

Compiled modules (`compiled.COMPILED_MODULES`) call each other's functions and methods directly:
a patched module global or class attribute is never seen by them, and a compiled class's methods
cannot be patched at all. Such a test calls `ran_interpreted(request)` first: in a compiled process
it runs the very test again in a child with `EXTERNREF_HARNESS_INTERPRETED=1`, asserts it passed
there, and returns True (the caller returns); interpreted, it returns False and the test goes on.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from externref_harness import compiled


def ran_interpreted(request: pytest.FixtureRequest) -> bool:
    if not compiled.is_compiled():
        return False
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
        capture_output=True, text=True, timeout=300, cwd=request.config.rootpath,
        env={**os.environ, compiled.ENV_INTERPRETED: "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout, done.stdout
    return True
