"""The probe's table facts (`InProcessImpl._table_facts`): read again only when the checking heap's
write record says a block holding the table's words or the chunk's slots changed, as the footers
are. A write to either that no accessor saw must still show in the next probe.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator

import pytest
from probed import probed

from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import plain_op
from externref_harness.lockstep.targets import native_target
from externref_harness.model import ops
from externref_harness.native.build import build_reference

#: A ref in the table's chunk (the table's words and the chunk both written), and two more refs.
SETUP = [ops.New(8, 8), ops.Clone(0), ops.InsertWithGc(1), ops.New(8, 8)]


@pytest.fixture
def impl() -> Iterator[InProcessImpl]:
    """The C reference (its table and chunk are allocated through the hooks, on the checking heap)
    after `SETUP`, probed once."""
    adapter = native_target(build_reference("debug")).adapter_factory()
    assert isinstance(adapter, InProcessImpl)
    yield from probed(adapter, SETUP)


def test_a_step_that_writes_neither_the_table_nor_its_chunk_leaves_them_unread(
    impl: InProcessImpl,
) -> None:
    before = impl.probe().table
    impl.step(plain_op(ops.New(8, 8)))
    assert impl.probe().table is before


def test_a_write_to_the_table_that_no_step_made_is_in_the_next_probe(impl: InProcessImpl) -> None:
    before = impl.probe().table
    assert before.chunk is not None and before.chunk_len > 0
    next_word = ctypes.c_uint64.from_address(impl.world.rt.table_address)
    assert next_word.value == before.next
    next_word.value = before.next + 8
    impl.step(plain_op(ops.New(8, 8)))  # verify() finds the write: the table's block changed
    after = impl.probe().table
    assert after.next == before.next + 8 and after is not before


def test_a_write_to_the_chunk_that_no_step_made_is_in_the_next_probe(impl: InProcessImpl) -> None:
    before = impl.probe().table
    assert before.chunk is not None
    slot = ctypes.c_uint64.from_address(before.chunk_ptr)
    slot.value = 0x1234_5678
    impl.step(plain_op(ops.New(8, 8)))
    after = impl.probe().table
    assert after.chunk is not None and struct.unpack_from("<Q", after.chunk)[0] == 0x1234_5678
