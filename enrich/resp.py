"""RESP2, the Redis wire protocol, as pure functions over bytes (sans-I/O).

``encode_command`` turns arguments into a request; ``RespParser`` is fed bytes as they
arrive and yields complete replies. The trio client in ``enrich.redis_client`` is a thin
shell around these two.
"""

from __future__ import annotations

from typing import Any

CRLF = b"\r\n"

#: Returned by ``RespParser.next`` when the buffer holds no complete reply yet.
NEED_DATA: Any = object()

MAX_BULK = 512 * 1024 * 1024  # Redis's own proto-max-bulk-len default
MAX_ARRAY = 1024 * 1024


class RespError(Exception):
    """An error reply from the server (``-ERR ...``); ``prefix`` is its first word."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.prefix = message.split(" ", 1)[0]


class ProtocolError(Exception):
    """The peer sent something that is not RESP2."""


def _bytes(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):
        raise TypeError("booleans have no Redis encoding; pass 0/1")
    if isinstance(arg, int | float):
        return repr(arg).encode()
    raise TypeError(f"cannot send {type(arg).__name__} to Redis")


def encode_command(*args: Any) -> bytes:
    """``SET k v`` -> ``*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$1\\r\\nv\\r\\n``."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _bytes(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespParser:
    """Incremental RESP2 reply parser.

    Error replies are returned as ``RespError`` instances (not raised), so the caller
    decides; nested errors inside arrays (EXEC, scripts) stay in place.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray) -> None:
        if self._pos and self._pos > len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next(self) -> Any:
        """The next complete reply, or NEED_DATA."""
        result = self._parse(self._pos)
        if result is NEED_DATA:
            return NEED_DATA
        value, self._pos = result
        return value

    def _line(self, pos: int) -> tuple[bytes, int] | Any:
        end = self._buf.find(CRLF, pos)
        if end < 0:
            return NEED_DATA
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[Any, int] | Any:
        if pos >= len(self._buf):
            return NEED_DATA
        kind = self._buf[pos : pos + 1]
        got = self._line(pos + 1)
        if got is NEED_DATA:
            return NEED_DATA
        line, after = got
        if kind == b"+":
            return line.decode("utf-8", "replace"), after
        if kind == b"-":
            return RespError(line.decode("utf-8", "replace")), after
        if kind == b":":
            return _int(line), after
        if kind == b"$":
            length = _int(line)
            if length == -1:
                return None, after
            if not 0 <= length <= MAX_BULK:
                raise ProtocolError(f"bulk length {length} out of range")
            if len(self._buf) < after + length + 2:
                return NEED_DATA
            if self._buf[after + length : after + length + 2] != CRLF:
                raise ProtocolError("bulk string not terminated by CRLF")
            return bytes(self._buf[after : after + length]), after + length + 2
        if kind == b"*":
            count = _int(line)
            if count == -1:
                return None, after
            if not 0 <= count <= MAX_ARRAY:
                raise ProtocolError(f"array length {count} out of range")
            items: list[Any] = []
            cursor = after
            for _ in range(count):
                got = self._parse(cursor)
                if got is NEED_DATA:
                    return NEED_DATA
                item, cursor = got
                items.append(item)
            return items, cursor
        raise ProtocolError(f"unknown reply type {kind!r}")


def _int(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolError(f"not an integer: {line[:20]!r}") from None
