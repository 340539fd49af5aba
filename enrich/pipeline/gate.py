"""The pacing gate: a job holds it while it works on this machine, not while it waits elsewhere.

Pacing (``enrich.core.pacing``) keeps the pipeline from taking the CPU and the database
from the acks. But a job spends most of its life waiting on other machines: queued for a
download slot and inside the download, queued for a Speech slot and inside the call. Those
waits cost the webhooks nothing, and pacing them starves the pipeline's bottleneck.
Measured in ``bench.e2e --split --pin`` while webhooks arrived at 200/s: with every job
paced end to end, the Speech slots averaged 2-9 of 10 busy and the pipeline reached 82-90 %
of its bound; with pacing off, 104 %, for an ack p99 of 15 ms instead of 12.

So the runner's paced limiter is a *gate* on work done here. Each job holds one token of
it through a ``JobGate``, and code that waits on a remote service wraps the wait in
``waiting_elsewhere()``: the job gives its token back for the span of the wait and takes
one again (waiting, if pacing is holding work back) before it goes on. How many jobs exist
at once stays bounded by PROCESSING_CONCURRENCY, whatever they wait on.

Outside a job (tests, the CLI tools) ``waiting_elsewhere()`` does nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

import trio

__all__ = ["JobGate", "bind", "waiting_elsewhere"]

_CURRENT: ContextVar[JobGate | None] = ContextVar("enrich_job_gate", default=None)


class JobGate:
    """One job's hold on the paced limiter.

    A message's media items run side by side, as branches of one job. Any branch's wait
    gives the token back, and it is taken again when the last wait ends. Meanwhile the
    siblings' local work (decoding, parsing) goes unpaced: that is bounded by the items of
    one message (Twilio sends at most 10) and by the decode limiter, and counting working
    branches instead would need every fan-out to register its tasks.
    """

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self._limiter = limiter
        self._held = False
        self._waits = 0
        self._taking: trio.Event | None = None

    @property
    def held(self) -> bool:
        return self._held

    def take_nowait(self) -> None:
        """Take the token now or raise ``trio.WouldBlock``."""
        self._limiter.acquire_on_behalf_of_nowait(self)
        self._held = True

    async def take(self) -> None:
        """Take the token, waiting while the paced limiter is full. Several branches of
        one job may ask at once: one waits in the limiter, the others wait for it."""
        while not self._held:
            if self._taking is not None:
                await self._taking.wait()
                continue
            self._taking = taking = trio.Event()
            try:
                await self._limiter.acquire_on_behalf_of(self)
                self._held = True
            finally:
                self._taking = None
                taking.set()

    def give_back(self) -> None:
        """Return the token if held (idempotent: the job's end calls it unconditionally)."""
        if self._held:
            self._held = False
            self._limiter.release_on_behalf_of(self)

    @asynccontextmanager
    async def waiting_elsewhere(self) -> AsyncIterator[None]:
        self._waits += 1
        # Every time, not only on the first wait: a sibling may have taken the token
        # again between two waits (idempotent when it is not held).
        self.give_back()
        try:
            yield
        finally:
            self._waits -= 1
            if self._waits == 0:
                # Also after a failure: what the job does next (a retry, its failure
                # record) is work here again. If this is cancelled the job goes on only
                # to unwind (no caller puts a deadline around a wait and carries on).
                await self.take()


def bind(gate: JobGate) -> None:
    """Make ``gate`` the current task's (and its future children's) job gate."""
    _CURRENT.set(gate)


@asynccontextmanager
async def waiting_elsewhere() -> AsyncIterator[None]:
    """Wrap a wait on another machine: the current job, if any, is not paced meanwhile."""
    gate = _CURRENT.get()
    if gate is None:
        yield
        return
    async with gate.waiting_elsewhere():
        yield
