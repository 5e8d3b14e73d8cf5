"""`InProcessImpl.start` keeps the `Config` it made of the last config it was given: a child
serves every run of a search with the same one. A different config is checked and used."""

from __future__ import annotations

from dataclasses import replace

import pytest

from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import plain_config
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG


def test_each_start_runs_with_the_config_it_was_given() -> None:
    impl = InProcessImpl()
    try:
        for chunk in (2, 3, 3, 2):
            impl.start(plain_config(replace(LOCKSTEP_CONFIG, chunk_size=chunk)))
            assert impl.world.cfg == replace(LOCKSTEP_CONFIG, chunk_size=chunk)
        with pytest.raises(ValueError, match="chunk_size must be >= 1"):
            impl.start({**plain_config(LOCKSTEP_CONFIG), "chunk_size": 0})
    finally:
        impl.close()
