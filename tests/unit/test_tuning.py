"""CPU affinity and the startup heap (enrich.tuning)."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
from collections.abc import Iterator

import pytest

from enrich.tuning import (
    AffinityError,
    format_cpu_list,
    freeze_startup_heap,
    parse_cpu_list,
    pin_process,
)


@pytest.mark.parametrize(
    ("raw", "cpus"),
    [("", set()), ("0", {0}), ("1-3", {1, 2, 3}), ("0, 2-3,7", {0, 2, 3, 7}), ("3,3", {3})],
)
def test_cpu_lists_parse_like_the_kernel_writes_them(raw: str, cpus: set[int]) -> None:
    assert parse_cpu_list(raw) == cpus


@pytest.mark.parametrize("raw", ["a", "1-", "3-1", "-2", "1.5", "0-5000"])
def test_bad_cpu_lists_say_what_is_allowed(raw: str) -> None:
    with pytest.raises(ValueError, match="a CPU list such as 0 or 1-3"):
        parse_cpu_list(raw)


@pytest.mark.parametrize(
    ("cpus", "text"),
    [(set(), ""), ({4}, "4"), ({0, 1, 2, 5}, "0-2,5"), ({7, 1, 3, 2}, "1-3,7")],
)
def test_cpu_lists_format_folded_and_round_trip(cpus: set[int], text: str) -> None:
    assert format_cpu_list(cpus) == text
    assert parse_cpu_list(text) == cpus


@pytest.fixture
def restore_affinity() -> Iterator[set[int]]:
    saved = os.sched_getaffinity(0)
    yield saved
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), saved)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                    reason="pinning to one CPU of one changes nothing to observe")
def test_pinning_moves_every_thread_and_later_ones(restore_affinity: set[int]) -> None:
    target = frozenset({min(restore_affinity)})
    assert target != restore_affinity
    started = threading.Event()
    stop = threading.Event()
    ids: list[int] = []

    def idle() -> None:
        ids.append(threading.get_native_id())
        started.set()
        stop.wait(10)

    early = threading.Thread(target=idle)
    early.start()
    started.wait(5)
    try:
        assert pin_process(target) == target
        # A thread that already ran is moved too, not only the calling one.
        assert os.sched_getaffinity(ids[0]) == target
        assert os.sched_getaffinity(0) == target
        seen: list[set[int]] = []
        later = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        later.start()
        later.join(5)
        assert seen == [target]
    finally:
        stop.set()
        early.join(5)


def test_pinning_to_no_usable_cpu_is_an_error_and_changes_nothing(
    restore_affinity: set[int],
) -> None:
    with pytest.raises(AffinityError, match=r"CPU_AFFINITY=4000 names no CPU"):
        pin_process(frozenset({4000}))
    assert os.sched_getaffinity(0) == restore_affinity


def test_freezing_exempts_startup_objects_from_collections() -> None:
    try:
        survivor = [object()]  # a tracked container that stays alive
        assert any(o is survivor for o in gc.get_objects())
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        # Collections no longer walk it (nor anything else alive at startup).
        assert not any(o is survivor for o in gc.get_objects())
        assert len(gc.get_objects()) < frozen
    finally:
        gc.unfreeze()


def test_pinning_keeps_only_the_cpus_that_exist(restore_affinity: set[int]) -> None:
    """A list naming a CPU the machine lacks pins to the others; the caller compares and
    warns (enrich serve logs "pinned to fewer CPUs than CPU_AFFINITY names")."""
    first = min(restore_affinity)
    assert pin_process(frozenset({first, 4000})) == {first}
    assert os.sched_getaffinity(0) == {first}
