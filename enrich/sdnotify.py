"""The systemd notify protocol (sd_notify(3)) without libsystemd.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for a Linux
abstract socket) to a ``Type=notify`` service; the service sends newline-
separated ``KEY=VALUE`` datagrams to it: ``READY=1`` once it serves,
``STOPPING=1`` when shutdown begins, ``STATUS=...`` for ``systemctl status``
and ``WATCHDOG=1`` at least every ``WatchdogSec``.

Watchdog pings are sent from a task on the trio loop itself, never from a
thread: if the loop stalls (a blocking call, a CPU-bound hot loop) the pings
stop and systemd restarts the service. A thread would keep pinging for a
wedged server, which defeats the point.

Everything here is best effort: a missing or broken notify socket is logged
and otherwise ignored, because failing to tell systemd about our state must
never take the server down.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Mapping, MutableMapping

import trio

__all__ = ["SystemdNotifier", "run_watchdog"]

_log = logging.getLogger(__name__)

# A datagram to a live systemd is accepted at once; the timeout only matters
# if the receiver's queue is full (systemd wedged), where waiting longer would
# not help and the caller has better things to do.
_SEND_TIMEOUT_SECONDS = 1.0

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _socket_address(value: str | None) -> bytes | None:
    """Encode NOTIFY_SOCKET as an AF_UNIX address, or None if unusable.

    ``@name`` means the abstract namespace (leading NUL byte). Other forms
    systemd may use (``vsock:``) are not supported and disable notification.
    """
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    return None


def _parse_watchdog(environ: Mapping[str, str]) -> float | None:
    usec_text = environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        _log.warning("ignoring malformed WATCHDOG_USEC=%r", usec_text)
        return None
    if usec <= 0:
        return None
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text:
        # Set when the watchdog is meant for one process of several (a
        # wrapper that execs us, or a parent whose children inherited the
        # environment): only the named process should ping.
        try:
            pid = int(pid_text)
        except ValueError:
            _log.warning("ignoring malformed WATCHDOG_PID=%r", pid_text)
            return None
        if pid != os.getpid():
            return None
    return usec / 1_000_000


def _one_line(text: str) -> str:
    # The protocol is line based: a newline would start a new assignment.
    return " ".join(text.splitlines())


class SystemdNotifier:
    """Send sd_notify messages; every method is a no-op without NOTIFY_SOCKET.

    ``environ`` defaults to :data:`os.environ`. With ``unset_environment``
    the three variables are removed from it after reading, as
    ``sd_notify(unset_environment=1)`` does: child processes (the embedded
    PostgreSQL notably, which speaks sd_notify itself) must not talk to our
    notify socket, where ``NotifyAccess=main`` would reject and log them.
    """

    def __init__(
        self,
        environ: MutableMapping[str, str] | None = None,
        *,
        unset_environment: bool = False,
    ) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        self._address = _socket_address(raw)
        if raw and self._address is None:
            _log.warning("unsupported NOTIFY_SOCKET %r: systemd notification disabled", raw)
        self._watchdog = _parse_watchdog(env) if self._address is not None else None
        self._failures = 0
        if unset_environment:
            for key in _ENV_KEYS:
                env.pop(key, None)

    @property
    def enabled(self) -> bool:
        """True when a notify socket is configured."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """``WatchdogSec`` in seconds, or None when we are not to ping.

        None when the watchdog is off, when ``WATCHDOG_PID`` names another
        process, or when there is no notify socket to ping. Ping at half of it.
        """
        return self._watchdog

    # -- async API (for use on the trio loop) -----------------------------

    async def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True if sent."""
        if self._address is None:
            return False
        data = self._encode(assignments)
        try:
            with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                with trio.move_on_after(_SEND_TIMEOUT_SECONDS):
                    # connect() then send(), not sendto(): only a connected
                    # datagram socket reports "not writable" while the
                    # receiver's queue is full, so trio waits instead of
                    # spinning on EAGAIN.
                    await sock.connect(self._address)
                    await sock.send(data)
                    return self._sent()
            return self._failed("timed out")
        except OSError as exc:
            return self._failed(str(exc))

    async def ready(self, status: str | None = None) -> bool:
        """Tell systemd startup finished (``Type=notify`` units wait for it)."""
        extra = () if status is None else (f"STATUS={_one_line(status)}",)
        return await self.notify("READY=1", *extra)

    async def stopping(self) -> bool:
        """Tell systemd shutdown started, so it does not count as a hang."""
        return await self.notify("STOPPING=1")

    async def watchdog(self) -> bool:
        """Reset systemd's watchdog timer."""
        return await self.notify("WATCHDOG=1")

    async def status(self, text: str) -> bool:
        """Set the free-form status line shown by ``systemctl status``."""
        return await self.notify(f"STATUS={_one_line(text)}")

    async def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (slow migrations, long drains)."""
        return await self.notify(f"EXTEND_TIMEOUT_USEC={math.ceil(seconds * 1_000_000)}")

    # -- sync fallback (outside trio, e.g. STOPPING from an exit path) ----

    def notify_sync(self, *assignments: str) -> bool:
        """Like :meth:`notify` but from synchronous code; never blocks.

        The socket is non-blocking: if systemd's queue is full the message is
        dropped rather than stalling process exit.
        """
        if self._address is None:
            return False
        data = self._encode(assignments)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.connect(self._address)
                sock.send(data)
        except OSError as exc:
            return self._failed(str(exc))
        return self._sent()

    def stopping_sync(self) -> bool:
        """:meth:`stopping` for synchronous exit paths."""
        return self.notify_sync("STOPPING=1")

    # -- internals ----------------------------------------------------------

    @staticmethod
    def _encode(assignments: tuple[str, ...]) -> bytes:
        if not assignments:
            raise ValueError("notify needs at least one KEY=VALUE assignment")
        for item in assignments:
            if "=" not in item or "\n" in item:
                raise ValueError(f"not a single-line KEY=VALUE assignment: {item!r}")
        return "\n".join(assignments).encode()

    def _sent(self) -> bool:
        if self._failures:
            _log.info("systemd notification works again after %d failure(s)", self._failures)
            self._failures = 0
        return True

    def _failed(self, reason: str) -> bool:
        # First failure at WARNING, the rest at DEBUG: a broken socket would
        # otherwise log on every watchdog ping.
        level = logging.WARNING if self._failures == 0 else logging.DEBUG
        self._failures += 1
        _log.log(level, "systemd notification failed: %s", reason)
        return False


async def run_watchdog(
    notifier: SystemdNotifier,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ping systemd's watchdog every half interval, forever.

    Returns at once when no watchdog is configured, so it can always be
    started in the supervisor's nursery. It runs on the trio loop on purpose:
    a stalled loop stops the pings and lets systemd restart us.
    """
    interval = notifier.watchdog_interval()
    task_status.started()
    if interval is None:
        return
    period = interval / 2
    while True:
        await notifier.watchdog()
        await trio.sleep(period)
