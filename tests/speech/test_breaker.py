"""The circuit breaker as a pure state machine, on an injected clock."""

from __future__ import annotations

import pytest

from enrich.speech.breaker import CircuitBreaker, Permit


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


def allowed(b: CircuitBreaker) -> Permit:
    permit = b.allow()
    assert permit is not None
    return permit


def fail(b: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        b.record_failure(allowed(b))


def test_starts_closed_and_lets_everyone_through(clock: Clock) -> None:
    b = breaker(clock)
    assert state(b) == "closed"
    assert all(b.allow() is not None for _ in range(100))  # no probe accounting while closed
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
    b.record_success(allowed(b))
    fail(b, 2)
    assert state(b) == "closed"  # 2 + 2 failures, but never 3 in a row
    fail(b, 1)
    assert state(b) == "open"


def test_fails_fast_while_open(clock: Clock) -> None:
    b = breaker(clock, threshold=1, reset=10.0)
    fail(b, 1)
    clock.advance(9.99)
    assert [b.allow() for _ in range(5)] == [None] * 5
    assert state(b) == "open"


def test_half_open_lets_exactly_one_probe_through(clock: Clock) -> None:
    b = breaker(clock, threshold=1, reset=10.0)
    fail(b, 1)
    clock.advance(10.0)
    assert state(b) == "half_open"
    assert allowed(b).probe  # the probe
    assert [b.allow() for _ in range(5)] == [None] * 5  # everyone else while it runs
    clock.advance(100.0)
    assert b.allow() is None  # even much later: the probe is still out


def test_probe_success_closes(clock: Clock) -> None:
    b = breaker(clock, threshold=2, reset=10.0)
    fail(b, 2)
    clock.advance(10.0)
    b.record_success(allowed(b))
    assert state(b) == "closed"
    assert b.stats().consecutive_failures == 0
    assert all(b.allow() is not None for _ in range(10))
    # Closed again means the full threshold applies again.
    fail(b, 1)
    assert state(b) == "closed"


def test_probe_failure_reopens_for_a_full_cooldown(clock: Clock) -> None:
    b = breaker(clock, threshold=3, reset=10.0)
    fail(b, 3)
    clock.advance(10.0)
    b.record_failure(allowed(b))  # one failure is enough in half-open state
    assert state(b) == "open"
    assert b.stats().opened_count == 2
    clock.advance(9.0)
    assert b.allow() is None
    clock.advance(1.0)
    assert allowed(b).probe  # the next probe, a cooldown after the failed one


def test_abandoned_probe_frees_the_slot(clock: Clock) -> None:
    b = breaker(clock, threshold=1, reset=10.0)
    fail(b, 1)
    clock.advance(10.0)
    probe = allowed(b)
    assert b.allow() is None
    b.record_abandoned(probe)  # cancelled: says nothing about the service
    assert state(b) == "half_open"
    assert b.stats().opened_count == 1
    probe = allowed(b)  # another caller may probe now
    assert b.allow() is None
    b.record_success(probe)
    assert state(b) == "closed"


def test_abandoned_call_while_closed_changes_nothing(clock: Clock) -> None:
    b = breaker(clock, threshold=2)
    fail(b, 1)
    b.record_abandoned(allowed(b))
    assert state(b) == "closed"
    assert b.stats().consecutive_failures == 1


def test_results_of_calls_allowed_before_the_breaker_opened_change_nothing(
    clock: Clock,
) -> None:
    """Calls run concurrently: some let through while closed finish after it opened."""
    b = breaker(clock, threshold=2, reset=10.0)
    early = [allowed(b) for _ in range(4)]  # four calls out at once
    b.record_failure(early[0])
    b.record_failure(early[1])
    assert state(b) == "open"
    b.record_success(early[2])  # a late success must not close an untested breaker
    assert state(b) == "open"
    clock.advance(10.0)
    probe = allowed(b)
    b.record_failure(early[3])  # a late failure neither reopens nor frees the probe slot
    b.record_abandoned(early[3])
    assert state(b) == "half_open" and b.stats().opened_count == 1
    assert b.allow() is None  # the probe is still the only call out
    b.record_success(probe)
    assert state(b) == "closed"
    b.record_failure(early[3])  # stale even now: counted nowhere
    assert b.stats().consecutive_failures == 0


@pytest.mark.parametrize(
    ("threshold", "reset"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -5.0), (1, float("nan"))]
)
def test_rejects_nonsense_settings(threshold: int, reset: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failure_threshold=threshold, reset_timeout_s=reset)
