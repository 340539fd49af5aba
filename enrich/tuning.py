"""Process-level tuning for a latency-critical server: CPU affinity and the startup heap.

Both are measured in bench/RESULTS.md ("What kept the acks' tail short"):

* **CPU affinity.** On a small host the web process shares its cores with PostgreSQL,
  Redis, the workers and whatever else runs there. Every time the scheduler puts one of
  them on the web process's core, or moves the web process, the acks waiting in its
  event loop wait too: at 500 webhooks/s on 2 cores that, not the web process's own
  CPU, made most of the ack tail. ``CPU_AFFINITY`` pins the process (all its threads)
  to the given CPUs: keep PostgreSQL and Redis off the web process's core (systemd's
  ``CPUAffinity=`` does the same from the unit); niced workers paced on the acks may
  share it.
* **The startup heap.** A full garbage collection walks every tracked object in the
  process, and after startup most of them (modules, routes, compiled patterns, clients)
  live until exit: ~100k objects, 30-80 ms with the event loop stopped, every few
  seconds under load. ``freeze_startup_heap`` moves them to the permanent generation
  (``gc.freeze``), so later collections walk only what the traffic allocates.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable


class AffinityError(OSError):
    """The CPUs asked for cannot be used by this process (none of them is allowed)."""


def parse_cpu_list(raw: str) -> frozenset[int]:
    """``"0"``, ``"2-3"``, ``"0,2-3"`` (the kernel's cpu-list format) -> CPU numbers.

    Raises ValueError naming what is allowed; an empty text is the empty set (no pinning).
    """
    cpus: set[int] = set()
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        first, dash, last = (p.strip() for p in part.partition("-"))
        # Digits only: int() would also take "+1" and "1_0".
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError("a CPU list such as 0 or 1-3 or 0,2 (or unset)")
        lo = int(first)
        hi = int(last) if dash else lo
        if hi < lo or hi > 4095:
            raise ValueError("a CPU list such as 0 or 1-3 or 0,2 (or unset)")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """The inverse of ``parse_cpu_list``, with ranges folded: {0, 1, 2, 5} -> "0-2,5"."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    start = prev = None
    for cpu in [*ordered, None]:
        if cpu is not None and prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(parts)


def pin_process(cpus: frozenset[int]) -> frozenset[int]:
    """Pin every thread of this process to ``cpus`` (threads started later inherit it).

    The kernel keeps only the CPUs the process's cpuset allows (a container may allow
    fewer than the machine has); returns the CPUs in effect. Raises AffinityError when
    none of ``cpus`` can be used: starting anyway, unpinned or on the wrong core, would
    hide the mistake. Child processes started later inherit the affinity too, so start
    the ones that must not share it (embedded servers) first.
    """
    if not hasattr(os, "sched_setaffinity"):
        raise AffinityError("CPU_AFFINITY needs Linux (sched_setaffinity); unset it here")
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:  # EINVAL: no CPU of the set exists or is allowed
        raise AffinityError(
            f"CPU_AFFINITY={format_cpu_list(cpus)} names no CPU this process may use "
            f"({exc.strerror})"
        ) from None
    usable = frozenset(os.sched_getaffinity(0))
    # sched_setaffinity(0) changes only the calling thread: set every other one too.
    for tid in _thread_ids():
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(tid, usable)
    return usable


def _thread_ids() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except FileNotFoundError:  # no /proc: the calling thread only
        return [0]


def freeze_startup_heap() -> int:
    """Collect once, then exempt every surviving object from later collections.

    Call it when startup is complete (pools open, routes registered, background tasks
    started); returns how many objects are now frozen.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw_startup_heap() -> None:
    """Undo ``freeze_startup_heap`` at shutdown: the objects are collectable again (tests
    start and stop many apps in one process)."""
    gc.unfreeze()
