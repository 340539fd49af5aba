"""enrich.batching.Batcher: coalescing, answers in place, failure and cancellation paths."""

from __future__ import annotations

from collections.abc import Sequence

import outcome
import pytest
import trio
import trio.testing

from enrich.batching import Batcher


class Recorder:
    """A run_batch that doubles its inputs, remembering every batch and the overlap."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.gate: trio.Event | None = None
        self.on_return: list[object] = []

    async def __call__(self, items: Sequence[int]) -> list[outcome.Outcome[int]]:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await trio.sleep(self.delay)
        finally:
            self.running -= 1
        return [outcome.Value(i * 2) for i in items]


async def test_single_call_runs_at_once_and_answers() -> None:
    run = Recorder(delay=0)
    batcher: Batcher[int, int] = Batcher(run)
    assert await batcher.submit(21) == 42
    assert run.batches == [[21]]
    assert batcher.stats()["batches"] == 1


async def test_concurrent_calls_share_batches_and_each_gets_its_own_answer() -> None:
    run = Recorder()
    batcher: Batcher[int, int] = Batcher(run, max_batch=8, lanes=2)
    answers: dict[int, int] = {}

    async def call(i: int) -> None:
        answers[i] = await batcher.submit(i)

    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(call, i)

    assert answers == {i: i * 2 for i in range(100)}
    sent = sorted(i for batch in run.batches for i in batch)
    assert sent == list(range(100))  # every item exactly once
    assert len(run.batches) < 100 / 4  # coalesced
    assert max(len(b) for b in run.batches) <= 8
    assert run.most_running <= 2
    assert batcher.stats()["largestBatch"] <= 8
    assert batcher.queued == 0


async def test_lanes_are_released_when_idle() -> None:
    run = Recorder(delay=0)
    batcher: Batcher[int, int] = Batcher(run, lanes=1)
    for i in range(5):  # one after another: each leads its own batch
        assert await batcher.submit(i) == i * 2
    assert run.batches == [[0], [1], [2], [3], [4]]


async def _errors_of_failing_batches(callers: int) -> list[BaseException]:
    """Every caller's error when every batch raises ConnectionError("down")."""

    async def boom(items: Sequence[int]) -> list[outcome.Outcome[int]]:
        await trio.sleep(0.01)
        raise ConnectionError("down")

    batcher: Batcher[int, int] = Batcher(boom, lanes=1)
    errors: list[BaseException] = []

    async def call(i: int) -> None:
        try:
            await batcher.submit(i)
        except ConnectionError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(callers):
            nursery.start_soon(call, i)
    return errors


async def test_batch_wide_error_reaches_every_caller() -> None:
    assert len(await _errors_of_failing_batches(10)) == 10


async def test_an_item_error_reaches_only_its_caller() -> None:
    async def picky(items: Sequence[int]) -> list[outcome.Outcome[int]]:
        await trio.sleep(0.01)
        return [outcome.Error(ValueError(i)) if i == 3 else outcome.Value(i) for i in items]

    batcher: Batcher[int, int] = Batcher(picky, lanes=1)
    got: dict[int, object] = {}

    async def call(i: int) -> None:
        try:
            got[i] = await batcher.submit(i)
        except ValueError as exc:
            got[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(call, i)
    assert isinstance(got.pop(3), ValueError)
    assert got == {i: i for i in (0, 1, 2, 4, 5)}


async def test_wrong_number_of_answers_is_an_error_not_a_hang() -> None:
    async def short(items: Sequence[int]) -> list[outcome.Outcome[int]]:
        return []

    batcher: Batcher[int, int] = Batcher(short)
    with pytest.raises(RuntimeError, match="got 0 answers"):
        await batcher.submit(1)


async def _hang(items: Sequence[int]) -> list[outcome.Outcome[int]]:
    await trio.sleep_forever()
    raise AssertionError


@pytest.mark.parametrize(("method", "expected"), [
    # submit: the first leads alone; the other two go together in the second batch.
    ("submit", [3, 6, 6]),
    # call: the queued callers give up at the timeout too, not a batch later.
    ("call", [3, 3, 3]),
])
async def test_a_hung_batch_times_out_for_everyone(
    autojump_clock: trio.abc.Clock, method: str, expected: list[float]
) -> None:
    batcher: Batcher[int, int] = Batcher(_hang, lanes=1, timeout=3)
    failures: list[float] = []

    async def call(i: int) -> None:
        with pytest.raises(trio.TooSlowError):
            await getattr(batcher, method)(i)
        failures.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(call, i)
    assert failures == expected
    assert batcher.queued == 0


async def test_a_call_timeout_bounds_every_callers_wait_but_never_stretches_the_batchers(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``call(item, timeout=...)``: the leader (whose only scope is its batch's) and the
    queued callers give up at the caller's timeout; a longer one does not lift the
    batcher's own."""
    batcher: Batcher[int, int] = Batcher(_hang, lanes=1, timeout=3)
    failures: list[float] = []

    async def call(i: int, timeout: float) -> None:
        start = trio.current_time()
        with pytest.raises(trio.TooSlowError):
            await batcher.call(i, timeout=timeout)
        failures.append(trio.current_time() - start)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(call, i, 1.0)
    assert failures == [1.0, 1.0, 1.0]
    assert batcher.queued == 0
    failures.clear()
    await call(9, 10.0)
    assert failures == [3.0]


async def test_a_caller_that_queued_then_leads_keeps_its_own_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The shield around a batch must not stretch its leader's deadline: a caller that
    waited 3.95 s of its 4 s in the queue and then leads gives up at 4 s, not 7.95 s."""
    recorder = Recorder(delay=3.95)
    batcher: Batcher[int, int] = Batcher(recorder, lanes=1, timeout=4)
    ended: dict[int, tuple[float, str]] = {}

    async def call(i: int) -> None:
        try:
            with trio.fail_after(4):
                await batcher.submit(i)
            ended[i] = (trio.current_time(), "answered")
        except trio.TooSlowError:
            ended[i] = (trio.current_time(), "too slow")

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(call, i)
            await trio.testing.wait_all_tasks_blocked()
    assert recorder.batches == [[0], [1, 2]]
    assert ended[0] == (pytest.approx(3.95), "answered")
    assert ended[1] == (pytest.approx(4.0), "too slow")
    assert ended[2] == (pytest.approx(4.0), "too slow")


@pytest.mark.parametrize("method", ["submit", "call"])
async def test_leader_cancelled_mid_batch_still_answers_the_others(method: str) -> None:
    """``call``'s leader runs under its batch's scope alone: the shield still holds."""
    run = Recorder(delay=0)
    run.gate = trio.Event()
    batcher: Batcher[int, int] = Batcher(run, lanes=1)
    answers: dict[int, int] = {}

    async def call(i: int) -> None:
        answers[i] = await batcher.submit(i)

    leader_scope = trio.CancelScope()
    leader_cancelled = trio.Event()

    async def leader() -> None:
        with leader_scope:
            # Its batch ran to the end (an INSERT would have committed), so it gets
            # the answer; the cancellation lands at its next checkpoint.
            answers[0] = await getattr(batcher, method)(0)
            await trio.lowlevel.checkpoint()
            raise AssertionError("not reached")
        leader_cancelled.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leader)
        await trio.testing.wait_all_tasks_blocked()
        for i in (1, 2):
            nursery.start_soon(call, i)
        await trio.testing.wait_all_tasks_blocked()
        leader_scope.cancel()  # the leader's batch [0] is shielded: it keeps running
        await trio.testing.wait_all_tasks_blocked()
        assert run.batches == [[0]]
        run.gate.set()
        await leader_cancelled.wait()
    assert leader_scope.cancelled_caught
    assert answers == {0: 0, 1: 2, 2: 4}
    assert [sorted(b) for b in run.batches] == [[0], [1, 2]]  # start order may vary


async def test_queued_caller_cancelled_is_never_sent() -> None:
    run = Recorder(delay=0)
    run.gate = trio.Event()
    batcher: Batcher[int, int] = Batcher(run, lanes=1)
    answers: dict[int, int] = {}

    async def call(i: int) -> None:
        answers[i] = await batcher.submit(i)

    scope = trio.CancelScope()

    async def doomed() -> None:
        with scope:
            await batcher.submit(99)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, 0)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(doomed)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call, 1)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        run.gate.set()
    assert answers == {0: 0, 1: 2}
    assert run.batches == [[0], [1]]
    assert await batcher.submit(5) == 10  # the lane was not lost


async def test_caller_handed_a_lane_then_cancelled_passes_it_on() -> None:
    """The head of the queue is chosen to lead just as it is cancelled: the lane must go
    to the next caller, or every later call would wait forever."""
    scopes: dict[int, trio.CancelScope] = {}

    async def run(items: Sequence[int]) -> list[outcome.Outcome[int]]:
        await trio.sleep(0.01)
        if items == [0]:
            scopes[1].cancel()  # 1 is cancelled, and then handed the lane on our return
        return [outcome.Value(i) for i in items]

    batcher: Batcher[int, int] = Batcher(run, lanes=1)
    answers: dict[int, int] = {}

    async def call(i: int) -> None:
        with trio.CancelScope() as scope:
            scopes[i] = scope
            answers[i] = await batcher.submit(i)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(call, i)
                await trio.testing.wait_all_tasks_blocked()
        assert answers == {0: 0, 2: 2}
        assert await batcher.submit(7) == 7


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"lanes": 0}, {"timeout": 0}])
def test_invalid_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="need max_batch"):
        Batcher(Recorder(), **kwargs)  # type: ignore[arg-type]


async def test_each_caller_raises_its_own_copy_of_a_batch_error() -> None:
    errors = await _errors_of_failing_batches(8)
    assert len({id(e) for e in errors}) == 8  # no object shared between tasks
    assert all(str(e) == "down" and isinstance(e.__cause__, ConnectionError) for e in errors)
    depths = set()
    for e in errors:
        tb, depth = e.__traceback__, 0
        while tb is not None:
            tb, depth = tb.tb_next, depth + 1
        depths.add(depth)
    assert len(depths) == 1  # each traceback holds its own caller's frames only
