"""cropcore.hostmem: the host-memory pool the numba and torch backends take large results from."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from cropcore import hostmem

MIB = 1 << 20


def test_small_and_over_budget_results_are_plain_allocations():
    pool = hostmem.HostPool(max_bytes=8 * MIB, min_bytes=MIB)
    assert pool.empty((10,), np.float32).base is None
    assert pool.empty((3 * MIB,), np.float32).base is None  # 12 MiB > the budget
    assert pool.empty((MIB // 4,), np.float32).base is not None  # 1 MiB: lent


def test_a_dropped_result_returns_its_block_and_the_next_one_reuses_it():
    pool = hostmem.HostPool(max_bytes=64 * MIB)
    first = pool.empty((2 * MIB,), np.float32)
    address = first.ctypes.data
    view = first[::2]
    del first
    assert pool.free_bytes() == 0  # a view still uses the block
    del view
    assert pool.free_bytes() == 8 * MIB
    again = pool.empty((2, MIB), np.float32)
    assert again.ctypes.data == address
    assert again.shape == (2, MIB)
    assert again.dtype == np.float32
    assert again.flags.c_contiguous
    assert pool.free_bytes() == 0


def test_the_smallest_block_less_than_twice_too_big_is_taken():
    pool = hostmem.HostPool(max_bytes=64 * MIB)
    blocks = [pool.empty((n * MIB,), np.uint8) for n in (3, 8, 5)]
    addresses = [b.ctypes.data for b in blocks]
    del blocks
    four = pool.empty((4 * MIB,), np.uint8)
    assert four.ctypes.data == addresses[2]  # 5 MiB, not 8
    two = pool.empty((2 * MIB,), np.uint8)
    assert two.ctypes.data == addresses[0]  # 3 MiB
    three = pool.empty((3 * MIB,), np.uint8)
    assert three.ctypes.data not in addresses  # 8 MiB is too big


def test_the_pool_keeps_at_most_its_budget_dropping_the_oldest():
    pool = hostmem.HostPool(max_bytes=3 << 22, min_bytes=1 << 22)
    arrays = [pool.empty((1 << 20,), np.float32) for _ in range(5)]  # 4 MiB each
    newest = arrays[-1].ctypes.data
    while arrays:
        arrays.pop(0)  # given back in order of creation
    assert pool.free_bytes() <= 3 << 22
    assert any(block.ctypes.data == newest for block in pool._free)
    pool.clear()
    assert pool.free_bytes() == 0


def test_a_zero_budget_turns_the_pool_off():
    pool = hostmem.HostPool(max_bytes=0)
    assert pool.empty((4 * MIB,), np.uint8).base is None


def test_live_results_never_share_memory_across_threads():
    pool = hostmem.HostPool(max_bytes=64 * MIB)
    errors = []

    def work(value: int) -> None:
        for _ in range(50):
            array = pool.empty((MIB // 4,), np.int32)
            array[:] = value
            gc.collect(0)
            if not (array == value).all():
                errors.append(value)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, hostmem.DEFAULT_MAX_BYTES),
        ({"CROPCORE_HOST_POOL_BYTES": "1048576"}, MIB),
        ({"CROPCORE_HOST_POOL_BYTES": "0"}, 0),
        ({"CROPCORE_HOST_POOL_BYTES": "5", "CROPCORE_NUMBA_POOL_BYTES": "7"}, 5),
    ],
)
def test_the_budget_comes_from_one_environment_variable(environ, expected):
    assert hostmem.budget_from_environment(environ) == expected


def test_the_old_variables_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="CROPCORE_HOST_POOL_BYTES"):
        assert hostmem.budget_from_environment({"CROPCORE_NUMBA_POOL_BYTES": "7"}) == 7
    with pytest.warns(DeprecationWarning, match="CROPCORE_HOST_POOL_BYTES=0"):
        assert hostmem.budget_from_environment({"CROPCORE_TORCH_RECYCLE": "0"}) == 0


@pytest.mark.parametrize("value", ["lots", "-1"])
def test_a_bad_budget_is_an_error_naming_the_variable(value):
    with pytest.raises(ValueError, match="CROPCORE_HOST_POOL_BYTES"):
        hostmem.budget_from_environment({"CROPCORE_HOST_POOL_BYTES": value})


def test_one_pool_per_process():
    assert hostmem.pool() is hostmem.pool()
