"""Coalesce concurrent calls into one round trip: natural batching, no timer.

Every accepted webhook makes one Redis call (the rate-limit script) and one PostgreSQL
INSERT. Each round trip costs the event loop far more CPU (a send, a wakeup, a receive,
the driver's bookkeeping) than the work the server does for it, and the webhook process
is CPU-bound under load. So concurrent callers share round trips: whoever finds a free
*lane* runs a batch of everything queued so far; the callers who arrive while it runs
queue up and go together in the next batch.

Nothing ever waits to fill a batch (no timer, no minimum size): under light load every
batch holds one call and costs what a direct call costs (plus a few microseconds); under
heavy load batches grow by themselves, and the CPU per call falls as the load rises.

There is no background task: the caller at the head of the queue is woken to lead the
next batch, so the batcher needs no nursery and stops being used when its callers stop.
A batch runs shielded from its leader's cancellation (the other callers in it still want
their answers) under its own deadline, so it can neither be abandoned half way nor hang.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import outcome
import trio

In = TypeVar("In")
Out = TypeVar("Out")

RunBatch = Callable[[Sequence[In]], Awaitable[Sequence[outcome.Outcome[Out]]]]


class _Slot(Generic[In, Out]):
    """One caller's item; ``lead`` means it was handed a lane (and left the queue)."""

    __slots__ = ("item", "lead", "result", "wake")

    def __init__(self, item: In) -> None:
        self.item = item
        self.result: outcome.Outcome[Out] | None = None
        self.lead = False
        self.wake = trio.Event()


class Batcher(Generic[In, Out]):
    """``await batcher.submit(item)`` returns ``item``'s answer from ``run_batch``.

    ``run_batch(items)`` returns one ``outcome`` per item, in order; an exception it
    raises is every item's answer. At most ``lanes`` batches run at once, each of at
    most ``max_batch`` items and bounded by ``timeout`` seconds and by its leader's own
    deadline (``trio.TooSlowError``).
    """

    def __init__(
        self,
        run_batch: RunBatch[In, Out],
        *,
        max_batch: int = 64,
        lanes: int = 2,
        timeout: float = 10.0,
    ) -> None:
        if max_batch < 1 or lanes < 1 or timeout <= 0:
            raise ValueError(
                f"need max_batch >= 1, lanes >= 1, timeout > 0 "
                f"(got {max_batch}, {lanes}, {timeout})"
            )
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.lanes = lanes
        self.timeout = timeout
        self._queue: deque[_Slot[In, Out]] = deque()
        self._busy = 0  # lanes running or handed to a woken leader
        # Statistics for /api/sms/performance and the benches.
        self.batches = 0
        self.items = 0
        self.largest = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def call(self, item: In, timeout: float | None = None) -> Out:
        """``submit`` with the caller's whole wait, queue included, bounded by
        ``timeout`` (the batcher's own by default; ``trio.TooSlowError``). ``submit``
        alone bounds only the batch the caller is in and leaves its wait in the queue
        to the caller's own deadline."""
        limit = self.timeout if timeout is None else min(timeout, self.timeout)
        if self._busy < self.lanes:
            # A lane is free: the caller leads at once and its whole wait is its batch,
            # so the batch's own scope (shielded, under the earlier of the two
            # deadlines) is the only one needed. Every webhook comes here twice; a
            # trio cancel scope costs several microseconds.
            return await self._submit(item, trio.current_time() + limit)
        # A bare CancelScope, not trio.fail_after: the same deadline without the
        # generator-based context manager.
        with trio.CancelScope(relative_deadline=limit) as scope:
            return await self._submit(item, math.inf)
        assert scope.cancelled_caught
        raise trio.TooSlowError

    async def submit(self, item: In) -> Out:
        return await self._submit(item, math.inf)

    async def _submit(self, item: In, deadline: float) -> Out:
        """``deadline`` bounds the batch when the caller leads at once (``call``)."""
        slot: _Slot[In, Out] = _Slot(item)
        if self._busy < self.lanes:
            # A lane is free, so nobody is queued (a finishing batch always hands its
            # lane to the head of the queue): lead now, without yielding first.
            self._busy += 1
            await self._lead(slot, deadline)
        else:
            self._queue.append(slot)
            while slot.result is None:
                try:
                    await slot.wake.wait()
                except BaseException:
                    self._abandon(slot)
                    raise
                slot.wake = trio.Event()
                if slot.lead:
                    slot.lead = False
                    await self._lead(slot)
        assert slot.result is not None
        return slot.result.unwrap()

    def _abandon(self, slot: _Slot[In, Out]) -> None:
        """A caller gave up while waiting: leave the queue, pass on a lane it was given."""
        if slot.result is not None:
            return  # answered meanwhile: its batch ran (the INSERT, say, committed)
        if slot.lead:  # handed a lane (and taken off the queue) but never ran it
            slot.lead = False
            self._hand_on()
            return
        # Not queued: it is in a batch that is running, whose answer will go unread.
        with contextlib.suppress(ValueError):
            self._queue.remove(slot)

    async def _lead(self, first: _Slot[In, Out], deadline: float = math.inf) -> None:
        """Run ``first`` and whatever queued behind it, then hand the lane on."""
        more = min(self.max_batch - 1, len(self._queue))
        batch = [first, *(self._queue.popleft() for _ in range(more))]
        results: Sequence[outcome.Outcome[Out]] | None = None
        try:
            results = await self._run_shielded([s.item for s in batch], deadline)
        finally:
            if results is None:  # KeyboardInterrupt or the like: nobody may wait forever
                results = [outcome.Error(RuntimeError("batch aborted")) for _ in batch]
            for slot, result in zip(batch, results, strict=True):
                slot.result = result
                slot.wake.set()
            self._hand_on()

    async def _run_shielded(
        self, items: list[In], deadline: float = math.inf
    ) -> Sequence[outcome.Outcome[Out]]:
        self.batches += 1
        self.items += len(items)
        self.largest = max(self.largest, len(items))
        # Shielded: the other callers in this batch still want their answers even if
        # the leader's own request is cancelled. The deadline keeps it bounded: at most
        # ``timeout``, and never past the leader's own deadline (the shield hides it),
        # so a caller that queued first and then leads still answers in time. The
        # leader is the oldest caller in its batch; the others keep their own deadlines
        # while they wait.
        deadline = min(deadline, trio.current_time() + self.timeout,
                       trio.current_effective_deadline())
        # One scope is both the shield and the deadline (a shield blocks only outer
        # cancellation, never the scope's own deadline).
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            try:
                results = await self._run_batch(items)
            except Exception as exc:
                return [outcome.Error(own_copy(exc)) for _ in items]
        if scope.cancelled_caught:
            return [outcome.Error(trio.TooSlowError()) for _ in items]
        if len(results) != len(items):
            message = f"batch of {len(items)} got {len(results)} answers"
            return [outcome.Error(RuntimeError(message)) for _ in items]
        return results

    def _hand_on(self) -> None:
        """A lane is free: give it to the head of the queue, or release it."""
        if self._queue:
            head = self._queue.popleft()
            head.lead = True
            head.wake.set()
        else:
            self._busy -= 1

    def reset_stats(self) -> None:
        """Zero the counters (``/api/sms/performance/reset``); the queue is untouched."""
        self.batches = self.items = self.largest = 0

    def stats(self) -> dict[str, float]:
        return {
            "batches": self.batches,
            "items": self.items,
            "meanBatch": round(self.items / self.batches, 2) if self.batches else 0.0,
            "largestBatch": self.largest,
            "queued": len(self._queue),
        }


def own_copy(exc: Exception) -> Exception:
    """A copy of a batch's error for one caller, caused by the original.

    Raising one exception object in several tasks would stack every task's frames on its
    shared ``__traceback__`` (and each webhook's log would show the others'); each caller
    raises its own copy instead. (One outcome each, too: ``unwrap()`` works once.)
    """
    try:
        mine = copy.copy(exc)
    except Exception:  # an exception type that cannot be copied: share it
        return exc
    mine.__cause__ = exc
    mine.__traceback__ = None
    return mine


__all__ = ["Batcher", "own_copy"]
