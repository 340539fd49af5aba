"""The pacing gate (enrich.pipeline.gate): a job holds its token while it works here and
gives it back while it waits on another machine."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from enrich.extraction import Extraction, default_extractor
from enrich.pipeline.gate import JobGate, bind, waiting_elsewhere
from enrich.pipeline.process import MediaOutcome, Processor
from enrich.store import Job


async def test_outside_a_job_waiting_elsewhere_does_nothing() -> None:
    async with waiting_elsewhere():
        await trio.sleep(0)


async def test_the_token_is_given_back_for_the_wait_and_taken_again() -> None:
    limiter = trio.CapacityLimiter(1)
    gate = JobGate(limiter)
    await gate.take()
    bind(gate)
    assert limiter.borrowed_tokens == 1
    async with waiting_elsewhere():
        assert not gate.held and limiter.borrowed_tokens == 0
    assert gate.held and limiter.borrowed_tokens == 1
    gate.give_back()
    gate.give_back()  # idempotent: the runner calls it at every job's end
    assert limiter.borrowed_tokens == 0


async def test_while_one_job_waits_elsewhere_another_works() -> None:
    """A full gate (pacing at one) still lets a second job work while the first waits on a
    download or a Speech call; the first resumes only when the token is free again."""
    limiter = trio.CapacityLimiter(1)
    remote = trio.Event()
    order: list[str] = []

    async def waiting_job(gate: JobGate) -> None:
        bind(gate)
        async with waiting_elsewhere():
            order.append("first waits")
            await remote.wait()
        order.append("first resumes")
        gate.give_back()

    async def working_job(gate: JobGate, task_status: trio.TaskStatus[None]) -> None:
        await gate.take()
        task_status.started()
        order.append("second works")
        await trio.testing.wait_all_tasks_blocked()
        remote.set()  # the first job's answer arrives while the second still works
        await trio.testing.wait_all_tasks_blocked()
        assert "first resumes" not in order  # it waits for the token, not the answer
        order.append("second done")
        gate.give_back()

    first = JobGate(limiter)
    await first.take()
    with trio.fail_after(5):  # a gate that kept the token while waiting would deadlock
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting_job, first)
            await trio.testing.wait_all_tasks_blocked()
            await nursery.start(working_job, JobGate(limiter))
    assert order == ["first waits", "second works", "second done", "first resumes"]
    assert limiter.borrowed_tokens == 0


async def test_a_jobs_parallel_waits_give_back_once_and_take_once() -> None:
    """A message's media items wait side by side: the token goes back at the first wait
    and comes back after the last, never twice (trio would raise on a double release)."""
    limiter = trio.CapacityLimiter(1)
    gate = JobGate(limiter)
    await gate.take()
    bind(gate)
    answers = [trio.Event(), trio.Event()]
    seen: list[int] = []

    async def item(i: int) -> None:
        async with waiting_elsewhere():
            await answers[i].wait()
        seen.append(limiter.borrowed_tokens)

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(item, i)
        await trio.testing.wait_all_tasks_blocked()
        assert not gate.held and limiter.borrowed_tokens == 0
        answers[0].set()
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [0]  # the other item still waits: no token taken yet
        answers[1].set()
    assert seen == [0, 1] and gate.held


async def test_two_branches_taking_at_once_share_one_acquisition() -> None:
    limiter = trio.CapacityLimiter(1)
    blocker = JobGate(limiter)
    await blocker.take()
    gate = JobGate(limiter)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.take)
        nursery.start_soon(gate.take)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().tasks_waiting == 1  # one waits in the limiter
        blocker.give_back()
    assert gate.held and limiter.borrowed_tokens == 1


async def test_cancelled_while_taking_again_leaks_no_token() -> None:
    limiter = trio.CapacityLimiter(1)
    gate = JobGate(limiter)
    await gate.take()
    bind(gate)
    other = JobGate(limiter)
    with trio.move_on_after(0.05) as scope:
        async with waiting_elsewhere():
            other.take_nowait()  # another job takes the token during the wait
        pytest.fail("took a token that another job holds")
    assert scope.cancelled_caught
    assert not gate.held and limiter.borrowed_tokens == 1
    gate.give_back()  # the runner's unconditional give-back must not release other's
    assert other.held and limiter.borrowed_tokens == 1


async def test_bind_is_per_task() -> None:
    limiter = trio.CapacityLimiter(2)
    gate = JobGate(limiter)
    await gate.take()
    bound = trio.Event()
    checked = trio.Event()

    async def bound_job() -> None:
        bind(gate)
        bound.set()
        await checked.wait()  # still bound while the sibling looks
        async with waiting_elsewhere():
            assert not gate.held

    async def unrelated_task() -> None:
        await bound.wait()
        async with waiting_elsewhere():  # a sibling, not the job: leaves gate alone
            assert gate.held
        checked.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bound_job)
            nursery.start_soon(unrelated_task)
    assert gate.held
    async with waiting_elsewhere():  # bind in a child task did not leak to its parent
        assert gate.held


async def test_a_token_taken_again_between_two_waits_goes_back_on_the_next() -> None:
    """Item A's answer comes while another job holds the token, so A waits to take it
    again; meanwhile item B starts waiting. When A gets the token and starts a second
    remote call, the token must go back: both branches of the job wait elsewhere."""
    limiter = trio.CapacityLimiter(1)
    gate = JobGate(limiter)
    await gate.take()
    bind(gate)
    other_job = JobGate(limiter)
    a_answer, both_answers = trio.Event(), trio.Event()

    async def item_a() -> None:
        async with waiting_elsewhere():
            await a_answer.wait()
        async with waiting_elsewhere():  # a second call (the next chunk of a note)
            await both_answers.wait()

    async def item_b() -> None:
        async with waiting_elsewhere():
            await both_answers.wait()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(item_a)
            await trio.testing.wait_all_tasks_blocked()
            other_job.take_nowait()  # another job works: A cannot take the token back
            a_answer.set()
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(item_b)
            await trio.testing.wait_all_tasks_blocked()
            other_job.give_back()  # A takes it, then starts its second call
            await trio.testing.wait_all_tasks_blocked()
            assert not gate.held and limiter.borrowed_tokens == 0  # both wait
            both_answers.set()
    assert gate.held and limiter.borrowed_tokens == 1


async def test_a_job_gives_its_token_back_for_its_media_before_any_text_work() -> None:
    """The processor starts a message's media before it extracts the text, so a job
    dispatched with the gate's only token hands it back at its first wait (another job
    can work here meanwhile), and the text is extracted afterwards, under the token."""
    limiter = trio.CapacityLimiter(1)
    gate = JobGate(limiter)
    gate.take_nowait()
    bind(gate)
    events: list[tuple[str, object]] = []

    class Media:
        async def handle(self, job: Job) -> list[MediaOutcome]:
            events.append(("media", gate.held))
            async with waiting_elsewhere():
                events.append(("free tokens while waiting", limiter.available_tokens))
                await trio.sleep(0.01)
            return [MediaOutcome(index=0)]

    class Text:
        def extract(self, text: str) -> Extraction:
            events.append(("text", gate.held))
            return default_extractor().extract(text)

    job = Job(id=1, message_sid="SM" + "0" * 32, user_id=None, from_number="+15550000000",
              body="Met Ana Lee in Boston", media=({"url": "https://example.com/m"},),
              attempts=1, received_at=datetime.now(UTC))
    result = await Processor(Text(), Media()).process(job)
    assert events == [("media", True), ("free tokens while waiting", 1), ("text", True)]
    assert any(item.item_type == "contact" for item in result.items)
