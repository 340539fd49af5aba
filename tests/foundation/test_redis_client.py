"""The trio-native Redis client: calls, statistics, scripts, and real cancellation."""

from __future__ import annotations

import pytest
import trio

from enrich.redis_client import RedisAddress, RedisClient, RedisUnavailable
from enrich.resp import RespError


async def test_calls_and_stats(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=2, max_size=4, timeout=1.0)
    await client.open()
    assert client.stats()["total"] == 2
    assert await client.execute("SET", "k", "v") == "OK"
    assert await client.execute("GET", "k") == b"v"
    assert await client.execute("GET", "missing") is None
    assert await client.execute("RPUSH", "l", 1, 2, 3) == 3
    assert await client.execute("LRANGE", "l", 0, -1) == [b"1", b"2", b"3"]
    stats = client.stats()
    assert (stats["inUse"], stats["waiting"], stats["max"]) == (0, 0, 4)
    await client.close()
    assert client.stats()["total"] == 0


async def test_error_reply_raises_and_keeps_the_connection(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=0, max_size=1)
    await client.execute("SET", "s", "text")
    with pytest.raises(RespError) as info:
        await client.execute("INCR", "s")
    assert info.value.prefix == "ERR"
    assert await client.execute("PING") == "PONG"
    assert client.stats()["total"] == 1  # the same connection, still in step
    await client.close()


async def test_scripts_load_on_first_use(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=0, max_size=2)
    await client.execute("SCRIPT", "FLUSH")
    script = client.script("return {KEYS[1], ARGV[1]}")
    assert await script(["key"], ["arg"]) == [b"key", b"arg"]  # NOSCRIPT -> EVAL
    assert await script(["key2"], ["x"]) == [b"key2", b"x"]  # EVALSHA now
    await client.close()


async def test_concurrency_is_bounded_by_the_limiter(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=0, max_size=3, timeout=2.0)
    results: list[int] = []

    async def incr() -> None:
        results.append(await client.execute("INCR", "counter"))

    async with trio.open_nursery() as nursery:
        for _ in range(300):
            nursery.start_soon(incr)
    assert sorted(results) == list(range(1, 301))
    assert client.stats()["total"] <= 3
    await client.close()


async def test_deadline_interrupts_a_slow_call_and_the_pool_recovers(redis_url: str) -> None:
    """Conformance: a trio deadline around a blocking call returns at the deadline; the
    connection (whose reply is still due) is dropped, never reused out of step."""
    client = RedisClient(redis_url, min_size=0, max_size=1, timeout=3.0)
    start = trio.current_time()
    with pytest.raises(RedisUnavailable):
        await client.execute("BLPOP", "never-filled", 2, timeout=0.2)
    assert trio.current_time() - start < 1.0  # long before BLPOP's 2 s
    assert client.stats() | {"total": 0, "inUse": 0} == client.stats()
    await client.execute("RPUSH", "never-filled", "late")
    # A reused connection would now read the stale BLPOP reply; a fresh one reads ours.
    assert await client.execute("LPOP", "never-filled") == b"late"
    await client.close()


async def test_outer_cancellation_drops_the_connection(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=0, max_size=1, timeout=5.0)
    with trio.move_on_after(0.1):
        await client.execute("BLPOP", "nothing", 1)
    assert client.stats()["inUse"] == 0 and client.stats()["total"] == 0
    assert await client.execute("PING") == "PONG"
    await client.close()


async def test_an_already_cancelled_caller_sends_nothing(redis_url: str) -> None:
    """A free token is taken without a yield, but a caller cancelled before it calls
    must not have its command run (the reply wait would come too late to stop it)."""
    client = RedisClient(redis_url, min_size=1, max_size=1)
    await client.open()  # an idle connection is ready: nothing else would yield first
    await client.execute("DEL", "cancelled:n")
    with trio.CancelScope() as scope:
        scope.cancel()
        await client.execute("INCR", "cancelled:n")
    assert scope.cancelled_caught
    assert await client.execute("GET", "cancelled:n") is None
    assert client.stats()["inUse"] == 0 and client.stats()["total"] == 1  # kept, in step
    await client.close()


async def test_silent_server_raises_unavailable_at_the_deadline(nursery: trio.Nursery) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]

    async def swallow(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, swallow, [listener])
    client = RedisClient(f"redis://127.0.0.1:{port}/0", min_size=0, max_size=2, timeout=0.3)
    with pytest.raises(RedisUnavailable, match="did not answer"):
        await client.execute("PING")
    nursery.cancel_scope.cancel()


async def test_refused_connection_raises_unavailable() -> None:
    client = RedisClient("redis://127.0.0.1:1/0", min_size=0, max_size=1, timeout=0.3)
    with pytest.raises(RedisUnavailable, match="cannot connect"):
        await client.execute("PING")
    assert client.stats()["inUse"] == 0


async def test_select_database_from_the_url(redis_url: str) -> None:
    base = redis_url + ("&" if "?" in redis_url else "?")
    url = base + "db=3" if redis_url.startswith("unix:") else redis_url.rstrip("/0") + "/3"
    client = RedisClient(url, min_size=0)
    await client.execute("SET", "in-db-3", "x")
    other = RedisClient(redis_url, min_size=0)
    assert await other.execute("GET", "in-db-3") is None
    await client.close()
    await other.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost:6380/2", ("localhost", 6380, None, 2, None, None, False)),
        ("redis://:s3cret@h/0", ("h", 6379, None, 0, None, "s3cret", False)),
        ("rediss://u:p@h:1", ("h", 1, None, 0, "u", "p", True)),
        ("unix:///tmp/r.sock?db=4", (None, 0, "/tmp/r.sock", 4, None, None, False)),
    ],
)
def test_url_parsing(url: str, expected: tuple[object, ...]) -> None:
    a = RedisAddress.parse(url)
    assert (a.host, a.port, a.path, a.db, a.username, a.password, a.tls) == expected


async def test_pipelined_commands_answer_in_order_with_errors_in_place(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=0, max_size=1)
    await client.execute("SET", "text", "v")
    replies = await client.execute_many(
        [("INCR", "n"), ("INCR", "text"), ("GET", "text"), ("INCR", "n")]
    )
    assert replies[0] == 1 and replies[2] == b"v" and replies[3] == 2
    assert isinstance(replies[1], RespError) and replies[1].prefix == "ERR"
    assert await client.execute_many([]) == []
    assert client.stats()["total"] == 1  # one connection, still in step
    assert client.calls == 5  # SET + four pipelined
    await client.close()


async def test_pipelined_scripts_reload_when_the_server_lost_them(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=0, max_size=1)
    script = client.script("return {KEYS[1], ARGV[1]}")
    assert await script(["a"], ["1"]) == [b"a", b"1"]
    await client.execute("SCRIPT", "FLUSH")  # as after a Redis restart
    calls = [(["k1"], ["x"]), (["k2"], ["y"]), (["k3"], ["z"])]
    assert await script.run_many(calls) == [[b"k1", b"x"], [b"k2", b"y"], [b"k3", b"z"]]
    assert await script.run_many(calls[:1]) == [[b"k1", b"x"]]  # EVALSHA works again
    await client.close()


async def test_pipeline_deadline_drops_the_connection(redis_url: str) -> None:
    client = RedisClient(redis_url, min_size=0, max_size=1, timeout=0.2)
    with pytest.raises(RedisUnavailable, match="within"):
        await client.execute_many([("PING",), ("BLPOP", "never", 5), ("PING",)])
    assert client.stats()["total"] == 0  # replies were in flight: not reused
    assert await client.execute("PING") == "PONG"
    await client.close()


async def test_a_pipeline_larger_than_the_socket_buffers_is_sent_whole(redis_url: str) -> None:
    """Several MB in one write: the socket takes it in parts, the client waits for room
    between them (a plain socket is written through its descriptor), and every reply
    comes back in order."""
    client = RedisClient(redis_url, min_size=0, max_size=1)
    value = "v" * 4096
    commands = [("SET", f"big:{i}", value) for i in range(1500)]  # ~6 MB
    assert await client.execute_many(commands) == ["OK"] * 1500
    assert await client.execute("STRLEN", "big:1499") == 4096
    assert client.stats()["total"] == 1  # still in step, reused
    await client.close()


async def test_a_server_hanging_up_mid_call_raises_unavailable(nursery: trio.Nursery) -> None:
    """The reply never comes because the peer closed: a clear RedisUnavailable, the
    connection dropped, the pool's token given back."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]

    async def read_then_hang_up(stream: trio.SocketStream) -> None:
        await stream.receive_some(1024)
        await stream.aclose()

    nursery.start_soon(trio.serve_listeners, read_then_hang_up, [listener])
    client = RedisClient(f"redis://127.0.0.1:{port}/0", min_size=0, max_size=1, timeout=2)
    with pytest.raises(RedisUnavailable, match="closed the connection"):
        await client.execute("PING")
    assert client.stats()["total"] == 0 and client.stats()["inUse"] == 0
    nursery.cancel_scope.cancel()
