"""RESP2 encoding and incremental parsing, sans-I/O."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrich.resp import NEED_DATA, ProtocolError, RespError, RespParser, encode_command


def test_encode_command() -> None:
    assert encode_command("SET", "k", b"v\r\n", 10) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n10\r\n"
    )
    with pytest.raises(TypeError):
        encode_command("SET", "k", None)


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b"+OK\r\n", "OK"),
        (b":42\r\n", 42),
        (b"$5\r\nhello\r\n", b"hello"),
        (b"$0\r\n\r\n", b""),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*3\r\n:1\r\n$1\r\nx\r\n*1\r\n+y\r\n", [1, b"x", ["y"]]),
    ],
)
def test_parse_every_reply_type(wire: bytes, value: object) -> None:
    p = RespParser()
    p.feed(wire)
    assert p.next() == value
    assert p.next() is NEED_DATA


def test_error_replies_are_values() -> None:
    p = RespParser()
    p.feed(b"-NOSCRIPT No matching script\r\n")
    err = p.next()
    assert isinstance(err, RespError) and err.prefix == "NOSCRIPT"


@given(st.lists(st.binary(max_size=50), max_size=8), st.integers(1, 7))
def test_any_split_of_the_stream_parses_the_same(items: list[bytes], step: int) -> None:
    wire = b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(i), i) for i in items)
    wire += b":7\r\n"
    p = RespParser()
    got: list[object] = []
    for i in range(0, len(wire), step):
        p.feed(wire[i : i + step])
        while (reply := p.next()) is not NEED_DATA:
            got.append(reply)
    assert got == [items, 7]


@pytest.mark.parametrize("wire", [b"?x\r\n", b":abc\r\n", b"$3\r\nabcXX", b"*-5\r\n"])
def test_garbage_is_a_protocol_error(wire: bytes) -> None:
    p = RespParser()
    p.feed(wire)
    with pytest.raises(ProtocolError):
        p.next()
