"""rpn_lib.readahead.read_ahead: in order, the same values as loading one by one, never more
than ``depth`` items ahead, one failure per item, cancelled when the loop stops early."""

from __future__ import annotations

import threading
import time

import pytest

from rpn_lib.errors import DataError
from rpn_lib.readahead import read_ahead


class Recorder:
    """A ``load`` that records which items it started, and in which thread."""

    def __init__(self, delay_s: float = 0.0, fail: int | None = None) -> None:
        self.started: list[int] = []
        self.threads: set[int] = set()
        self.delay_s = delay_s
        self.fail = fail

    def __call__(self, item: int) -> int:
        self.started.append(item)
        self.threads.add(threading.get_ident())
        time.sleep(self.delay_s)
        if item == self.fail:
            raise DataError(f"item {item} is broken")
        return item * item


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
@pytest.mark.parametrize("n", [0, 1, 3, 8])
def test_same_items_and_values_in_order(depth: int, n: int) -> None:
    load = Recorder()
    pairs = [(item, fut.result()) for item, fut in read_ahead(range(n), load, depth)]
    assert pairs == [(i, i * i) for i in range(n)]
    assert sorted(load.started) == list(range(n))


@pytest.mark.parametrize("depth", [1, 3])
def test_never_more_than_depth_items_ahead(depth: int) -> None:
    load = Recorder()
    for item, fut in read_ahead(range(20), load, depth):
        fut.result()
        time.sleep(0.02)  # time for the thread to load all it was given
        assert max(load.started) <= item + depth
    assert load.threads and threading.get_ident() not in load.threads


def test_depth_zero_loads_in_this_thread_when_its_turn_comes() -> None:
    load = Recorder()
    for item, fut in read_ahead(range(5), load, 0):
        assert load.started[-1] == item
        assert fut.done()
    assert load.threads == {threading.get_ident()}


@pytest.mark.parametrize("depth", [0, 2])
def test_a_failed_item_raises_in_the_loop_and_the_others_still_load(depth: int) -> None:
    got, failed = [], []
    for item, fut in read_ahead(range(5), Recorder(fail=2), depth):
        try:
            got.append(fut.result())
        except DataError as e:
            failed.append((item, str(e)))
    assert got == [0, 1, 9, 16]
    assert failed == [(2, "item 2 is broken")]


def test_stopping_early_cancels_the_loads_not_started() -> None:
    """With depth 2, items 0 and 1 start in the two threads and item 2 waits; a break before
    they finish leaves item 2 never started."""
    load = Recorder(delay_s=0.3)
    for item, fut in read_ahead(range(100), load, 2):
        break
    time.sleep(0.8)  # item 2 would start in this time if it were not cancelled
    assert max(load.started) <= 1


def test_items_ahead_load_at_the_same_time() -> None:
    """``depth`` threads: two loads that each wait for the other finish (one thread would
    time out)."""
    both = threading.Barrier(2, timeout=5)

    def load(item: int) -> int:
        both.wait()
        return item

    assert [fut.result() for _, fut in read_ahead(range(4), load, 2)] == [0, 1, 2, 3]


def test_a_negative_depth_is_refused_at_the_call() -> None:
    with pytest.raises(ValueError, match="depth must be >= 0"):
        read_ahead(range(3), Recorder(), -1)
