"""The circuit breaker as a pure state machine, on an injected clock."""

from __future__ import annotations

import pytest

from enrich.speech.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def state(b: CircuitBreaker) -> str:
    """The breaker's state (a call, so that mypy does not narrow it across actions)."""
    return b.state


def breaker(clock: Clock, threshold: int = 3, reset: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=threshold, reset_timeout_s=reset, clock=clock)


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        assert b.allow()
        b.record_failure()


def test_starts_closed_and_lets_everyone_through(clock: Clock) -> None:
    b = breaker(clock)
    assert state(b) == "closed"
    assert all(b.allow() for _ in range(100))  # no probe accounting while closed
    assert b.stats().to_dict() == {"state": "closed", "consecutiveFailures": 0, "openedCount": 0}


def test_opens_after_n_consecutive_failures(clock: Clock) -> None:
    b = breaker(clock, threshold=3)
    fail(b, 2)
    assert state(b) == "closed"
    assert b.stats().consecutive_failures == 2
    fail(b, 1)
    assert state(b) == "open"
    assert b.stats().opened_count == 1


def test_a_success_resets_the_count(clock: Clock) -> None:
    b = breaker(clock, threshold=3)
    fail(b, 2)
    assert b.allow()
    b.record_success()
    fail(b, 2)
    assert state(b) == "closed"  # 2 + 2 failures, but never 3 in a row
    fail(b, 1)
    assert state(b) == "open"


def test_fails_fast_while_open(clock: Clock) -> None:
    b = breaker(clock, threshold=1, reset=10.0)
    fail(b, 1)
    clock.advance(9.99)
    assert [b.allow() for _ in range(5)] == [False] * 5
    assert state(b) == "open"


def test_half_open_lets_exactly_one_probe_through(clock: Clock) -> None:
    b = breaker(clock, threshold=1, reset=10.0)
    fail(b, 1)
    clock.advance(10.0)
    assert state(b) == "half_open"
    assert b.allow()  # the probe
    assert [b.allow() for _ in range(5)] == [False] * 5  # everyone else while it runs
    clock.advance(100.0)
    assert not b.allow()  # even much later: the probe is still out


def test_probe_success_closes(clock: Clock) -> None:
    b = breaker(clock, threshold=2, reset=10.0)
    fail(b, 2)
    clock.advance(10.0)
    assert b.allow()
    b.record_success()
    assert state(b) == "closed"
    assert b.stats().consecutive_failures == 0
    assert all(b.allow() for _ in range(10))
    # Closed again means the full threshold applies again.
    fail(b, 1)
    assert state(b) == "closed"


def test_probe_failure_reopens_for_a_full_cooldown(clock: Clock) -> None:
    b = breaker(clock, threshold=3, reset=10.0)
    fail(b, 3)
    clock.advance(10.0)
    assert b.allow()
    b.record_failure()  # one failure is enough in half-open state
    assert state(b) == "open"
    assert b.stats().opened_count == 2
    clock.advance(9.0)
    assert not b.allow()
    clock.advance(1.0)
    assert b.allow()  # the next probe, a cooldown after the failed one


def test_abandoned_probe_frees_the_slot(clock: Clock) -> None:
    b = breaker(clock, threshold=1, reset=10.0)
    fail(b, 1)
    clock.advance(10.0)
    assert b.allow()
    assert not b.allow()
    b.record_abandoned()  # cancelled: says nothing about the service
    assert state(b) == "half_open"
    assert b.stats().opened_count == 1
    assert b.allow()  # another caller may probe now
    assert not b.allow()
    b.record_success()
    assert state(b) == "closed"


def test_abandoned_call_while_closed_changes_nothing(clock: Clock) -> None:
    b = breaker(clock, threshold=2)
    fail(b, 1)
    assert b.allow()
    b.record_abandoned()
    assert state(b) == "closed"
    assert b.stats().consecutive_failures == 1


@pytest.mark.parametrize(
    ("threshold", "reset"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -5.0), (1, float("nan"))]
)
def test_rejects_nonsense_settings(threshold: int, reset: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=threshold, reset_timeout_s=reset)
