"""A circuit breaker as a pure state machine with an injected clock.

A speech service that is down should not be called by every voice note in the queue:
each call would wait for its deadline, hold a worker and a limiter slot, and then fail
anyway. The breaker counts *consecutive* failures; at ``failure_threshold`` it opens and
callers fail fast (a recoverable error: the job is retried later). After
``reset_timeout_s`` one caller is let through as a probe (half-open): its success closes
the breaker, its failure opens it for another cooldown. While the probe is in flight
everyone else still fails fast, so a dead service sees one call per cooldown, not a herd.

Every allowed call gets a :class:`Permit`, and its result is recorded with it. Calls run
concurrently, so results arrive late: a call let through before the breaker opened may
fail or succeed while a probe is out. Such a stale result (an older *epoch*: the breaker
has opened since the permit was given) changes nothing: a late success must not close a
breaker the probe has not tested, nor a late failure or cancellation free the probe's slot.

Pure: no I/O, no trio. The clock is any ``() -> float`` in seconds (``time.monotonic``,
``trio.current_time`` so that tests can drive it with ``trio.testing.MockClock``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["BreakerState", "BreakerStats", "CircuitBreaker", "Permit"]

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class Permit:
    """One allowed call: record its result with it."""

    epoch: int  # how often the breaker had opened when the call was allowed
    probe: bool  # the half-open probe


@dataclass(frozen=True, slots=True)
class BreakerStats:
    state: BreakerState
    consecutive_failures: int
    opened_count: int  # how often the breaker has opened since it was made

    def to_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "consecutiveFailures": self.consecutive_failures,
            "openedCount": self.opened_count,
        }


class CircuitBreaker:
    """closed -> open after N consecutive failures -> half-open probe after a cooldown.

    Protocol for a caller: ``permit = breaker.allow()``; if None, fail fast; otherwise
    exactly one of :meth:`record_success`, :meth:`record_failure` or
    :meth:`record_abandoned` (the call was cancelled and says nothing about the service's
    health), with the permit.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if not reset_timeout_s > 0:
            raise ValueError("reset_timeout_s must be > 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._opened_count = 0

    @property
    def state(self) -> BreakerState:
        """The state as of now: an open breaker whose cooldown passed reads half-open."""
        if self._state == "open" and self._cooled_down():
            return "half_open"
        return self._state

    def allow(self) -> Permit | None:
        """May a call go out now? In half-open state only one probe at a time may."""
        if self._state == "closed":
            return Permit(self._opened_count, probe=False)
        if self._state == "open":
            if not self._cooled_down():
                return None
            self._state = "half_open"
        if self._probe_in_flight:
            return None
        self._probe_in_flight = True
        return Permit(self._opened_count, probe=True)

    def record_success(self, permit: Permit) -> None:
        if self._stale(permit):
            return
        self._state = "closed"
        self._failures = 0
        self._probe_in_flight = False

    def record_failure(self, permit: Permit) -> None:
        if self._stale(permit):
            return
        self._failures += 1
        if permit.probe or self._failures >= self.failure_threshold:
            self._open()
        self._probe_in_flight = False

    def record_abandoned(self, permit: Permit) -> None:
        """The call was cancelled before it told us anything: free the probe slot."""
        if permit.probe and not self._stale(permit):
            self._probe_in_flight = False

    def stats(self) -> BreakerStats:
        return BreakerStats(self.state, self._failures, self._opened_count)

    def _stale(self, permit: Permit) -> bool:
        """Given before the breaker last opened; or a closed-state call finishing while a
        probe is out (the probe's result decides)."""
        return permit.epoch != self._opened_count or (
            not permit.probe and self._state != "closed"
        )

    def _open(self) -> None:
        self._state = "open"
        self._opened_at = self._clock()
        self._opened_count += 1

    def _cooled_down(self) -> bool:
        return self._clock() - self._opened_at >= self.reset_timeout_s
