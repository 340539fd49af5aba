"""sd_notify protocol against a real AF_UNIX datagram socket."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from enrich.sdnotify import SystemdNotifier, run_watchdog

# AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
_MAX_SUN_PATH = 100


class Receiver:
    """The systemd side: a bound datagram socket we read from."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self) -> bytes:
        # The sender has already returned, so the datagram is queued; the
        # timeout only turns a missing message into a failure, not a hang.
        self.sock.settimeout(5)
        return self.sock.recv(4096)

    def drain(self) -> list[bytes]:
        self.sock.setblocking(False)
        out: list[bytes] = []
        while True:
            try:
                out.append(self.sock.recv(4096))
            except BlockingIOError:
                return out


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    directory = tmp_path
    if len(str(tmp_path / "notify")) > _MAX_SUN_PATH:
        directory = Path(tempfile.mkdtemp(prefix="sdn-"))
    path = directory / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield Receiver(sock, str(path))
    finally:
        sock.close()
        path.unlink(missing_ok=True)


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"enrich-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Receiver(sock, "@" + name)
    finally:
        sock.close()


def notifier_for(receiver: Receiver, **extra: str) -> SystemdNotifier:
    return SystemdNotifier({"NOTIFY_SOCKET": receiver.env_value, **extra})


# --- messages ---------------------------------------------------------------


async def test_ready_stopping_watchdog_and_status_arrive(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    assert notifier.enabled
    assert await notifier.ready()
    assert receiver.recv() == b"READY=1"
    assert await notifier.watchdog()
    assert receiver.recv() == b"WATCHDOG=1"
    assert await notifier.status("serving on :3000, 2 workers")
    assert receiver.recv() == b"STATUS=serving on :3000, 2 workers"
    assert await notifier.stopping()
    assert receiver.recv() == b"STOPPING=1"


async def test_ready_can_carry_a_status_and_status_stays_one_line(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    assert await notifier.ready(status="up\nand running")
    assert receiver.recv() == b"READY=1\nSTATUS=up and running"


async def test_extend_timeout_is_sent_in_microseconds(receiver: Receiver) -> None:
    assert await notifier_for(receiver).extend_timeout(1.5)
    assert receiver.recv() == b"EXTEND_TIMEOUT_USEC=1500000"


async def test_malformed_assignments_are_rejected(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        await notifier.notify("READY")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        await notifier.notify("STATUS=a\nREADY=1")
    with pytest.raises(ValueError, match="at least one"):
        await notifier.notify()
    assert receiver.drain() == []


def test_sync_fallback_sends_stopping_outside_trio(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    assert notifier.stopping_sync()
    assert receiver.recv() == b"STOPPING=1"


async def test_abstract_socket_names_work(abstract_receiver: Receiver) -> None:
    notifier = notifier_for(abstract_receiver)
    assert await notifier.ready()
    assert abstract_receiver.recv() == b"READY=1"
    assert notifier.notify_sync("STATUS=sync")
    assert abstract_receiver.recv() == b"STATUS=sync"


# --- disabled / broken ------------------------------------------------------


async def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert not await notifier.ready()
    assert not await notifier.watchdog()
    assert not await notifier.status("x")
    assert not notifier.stopping_sync()


async def test_reads_os_environ_by_default(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.env_value)
    assert await SystemdNotifier().ready()
    assert receiver.recv() == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not SystemdNotifier().enabled


async def test_unsupported_socket_kind_disables_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="enrich.sdnotify"):
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not await notifier.ready()
    assert "unsupported NOTIFY_SOCKET" in caplog.text


async def test_unreachable_socket_is_reported_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.DEBUG, logger="enrich.sdnotify"):
        assert not await notifier.ready()
        assert not await notifier.watchdog()
        assert not notifier.stopping_sync()
    levels = [r.levelno for r in caplog.records if "notification failed" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]


async def test_a_full_receiver_queue_does_not_hang_the_sender(
    receiver: Receiver, autojump_clock: trio.testing.MockClock
) -> None:
    # Nobody reads: the kernel queue fills, and then sends give up at their
    # deadline instead of blocking the loop or spinning on EAGAIN.
    notifier = notifier_for(receiver)
    results = [await notifier.watchdog() for _ in range(64)]
    assert results[0] is True
    assert results[-1] is False
    assert len(receiver.drain()) == results.count(True)


def test_a_full_receiver_queue_does_not_block_the_sync_fallback(receiver: Receiver) -> None:
    notifier = notifier_for(receiver)
    results = [notifier.notify_sync("WATCHDOG=1") for _ in range(64)]
    assert results[0] is True
    assert results[-1] is False


def test_unset_environment_removes_the_variables_for_children(receiver: Receiver) -> None:
    env = {
        "NOTIFY_SOCKET": receiver.env_value,
        "WATCHDOG_USEC": "2000000",
        "WATCHDOG_PID": str(os.getpid()),
        "OTHER": "kept",
    }
    notifier = SystemdNotifier(env, unset_environment=True)
    assert env == {"OTHER": "kept"}
    assert notifier.enabled
    assert notifier.watchdog_interval() == 2.0


# --- watchdog interval ----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "self"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(
    receiver: Receiver, extra: dict[str, str], expected: float | None
) -> None:
    assert notifier_for(receiver, **extra).watchdog_interval() == expected


# --- run_watchdog -------------------------------------------------------------


async def test_run_watchdog_pings_every_half_interval(
    receiver: Receiver, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = notifier_for(receiver, WATCHDOG_USEC="30000000")
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, notifier)
        # Pings at 0, 15, 30, 45 and 60 s of virtual time.
        await trio.sleep_until(start + 61)
        nursery.cancel_scope.cancel()
    assert receiver.drain() == [b"WATCHDOG=1"] * 5


async def test_run_watchdog_stops_pinging_while_the_loop_is_blocked(receiver: Receiver) -> None:
    # Real clock on purpose: the pings must come from the trio loop, so a
    # blocking call on the loop (the failure the watchdog exists to catch)
    # must silence them. A pinger thread would keep sending meanwhile.
    notifier = notifier_for(receiver, WATCHDOG_USEC="20000")  # ping every 10 ms
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, notifier)
        receiver.drain()  # whatever was sent before the stall
        time.sleep(0.3)  # the loop is stuck for 30 ping periods
        assert receiver.drain() == []
        await trio.sleep(0.05)  # the loop runs again: pings resume
        assert receiver.drain()
        nursery.cancel_scope.cancel()


async def test_run_watchdog_returns_at_once_without_a_watchdog(
    receiver: Receiver, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = notifier_for(receiver)  # socket set, WATCHDOG_USEC not
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_watchdog, notifier)
    assert receiver.drain() == []


async def test_run_watchdog_respects_a_foreign_watchdog_pid(
    receiver: Receiver, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = notifier_for(receiver, WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid() + 1))
    with trio.fail_after(1):
        await run_watchdog(notifier)
    assert receiver.drain() == []
