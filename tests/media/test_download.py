"""The media fetcher against the fake Twilio over real HTTP on loopback.

Every test talks to :mod:`enrich.testing.fake_twilio` through real sockets: the API
origin (Basic auth, redirects) and the CDN origin (signed URLs, records whether
credentials came) listen on different ports of 127.0.0.1, so the policy tells them apart
exactly as it tells api.twilio.com from Twilio's CDN. Deadlines are real but short, with
generous hang guards (``trio.fail_after``) that only stop a broken run from hanging.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

from enrich.media.download import (
    DownloadedMedia,
    MediaFetcher,
    MediaRefused,
    MediaTimeout,
    MediaTooLarge,
    MediaUnavailable,
    MediaUnreachable,
    Resolver,
)
from enrich.media.policy import MediaPolicy
from enrich.media.sniff import SNIFF_BYTES
from enrich.metrics import Metrics
from enrich.pipeline.errors import ProcessingError
from enrich.testing.fake_twilio import FakeTwilio, new_sid, open_fake_twilio

ACCOUNT = "AC" + "5" * 32
TOKEN = "media-test-token-" + "9" * 16
KIB = 1024
MIB = 1024 * 1024
# Hang guards: far above anything a passing run needs; never a speed assertion.
HANG_GUARD_S = 30.0


def payload(size: int) -> bytes:
    """Bytes whose every position is distinguishable, so truncation or reordering shows."""
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def local_policy(fake: FakeTwilio, *extra_hosts: str) -> MediaPolicy:
    """What the app builds from TWILIO_API_BASE_URL=<fake api> and MEDIA_REDIRECT_HOSTS."""
    cdn = fake.cdn_url.removeprefix("http://")
    return MediaPolicy.from_settings(fake.api_url, fake.account_sid, [cdn, *extra_hosts])


class Harness:
    """A fake Twilio plus fetchers built against it; every fetcher is closed at the end."""

    def __init__(self, fake: FakeTwilio, temp_dir: Path) -> None:
        self.fake = fake
        self.temp_dir = temp_dir
        self.fetchers: list[MediaFetcher] = []

    def fetcher(
        self,
        *,
        policy: MediaPolicy | None = None,
        max_bytes: int = MIB,
        timeout_s: float = 10.0,
        concurrency: int = 4,
        metrics: Metrics | None = None,
        resolver: Resolver | None = None,
        auth_token: str | None = TOKEN,
    ) -> MediaFetcher:
        fetcher = MediaFetcher(
            policy or local_policy(self.fake),
            account_sid=self.fake.account_sid,
            auth_token=auth_token,
            temp_dir=self.temp_dir,
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            concurrency=concurrency,
            metrics=metrics,
            resolver=resolver,
        )
        self.fetchers.append(fetcher)
        return fetcher

    def temp_files(self) -> list[str]:
        return sorted(os.listdir(self.temp_dir)) if self.temp_dir.exists() else []


@asynccontextmanager
async def open_harness(
    temp_dir: Path, *, cdn_hostname: str = "127.0.0.1"
) -> AsyncIterator[Harness]:
    async with open_fake_twilio(ACCOUNT, TOKEN, cdn_hostname=cdn_hostname) as fake:
        harness = Harness(fake, temp_dir)
        try:
            yield harness
        finally:
            for fetcher in harness.fetchers:
                await fetcher.aclose()


@pytest.fixture
def temp_dir(tmp_path: Path) -> Path:
    return tmp_path / "media-temp" / "instance-1"


@pytest.fixture
async def harness(temp_dir: Path) -> AsyncIterator[Harness]:
    async with open_harness(temp_dir) as h:
        yield h


async def fetch(fetcher: MediaFetcher, url: str) -> tuple[DownloadedMedia, bytes, bool]:
    """Download ``url``; the media, the file's bytes, and whether the file existed."""
    with trio.fail_after(HANG_GUARD_S):
        async with fetcher.download(url) as media:
            exists = media.path.exists()
            data = media.path.read_bytes()
    return media, data, exists


async def fetch_error(fetcher: MediaFetcher, url: str) -> ProcessingError:
    with trio.fail_after(HANG_GUARD_S):
        with pytest.raises(ProcessingError) as info:
            async with fetcher.download(url):
                pytest.fail("the download should not have succeeded")
    return info.value


# -- success ---------------------------------------------------------------------------


@pytest.mark.parametrize("hops", [1, 2])
async def test_download_through_redirects(harness: Harness, hops: int) -> None:
    data = payload(300 * KIB)  # several 64 KiB chunks
    url = harness.fake.add_media(None, data, "audio/amr", hops=hops)
    metrics = Metrics()

    media, on_disk, existed = await fetch(harness.fetcher(metrics=metrics), url)

    assert existed
    assert on_disk == data
    assert media.size == len(data)
    assert media.head == data[:SNIFF_BYTES]
    assert media.content_type == "audio/amr"
    assert media.redirects == hops
    assert media.path.parent == harness.temp_dir
    assert not media.path.exists()  # deleted when the block ended
    assert harness.temp_files() == []
    assert metrics.media_bytes == len(data)
    assert not metrics.media_aborts
    cdn = harness.fake.requests_to("cdn")
    assert len(cdn) == hops
    assert [r.status for r in cdn] == [302] * (hops - 1) + [200]


async def test_small_item_head_is_the_whole_file(harness: Harness) -> None:
    data = b"BEGIN:VCARD\r\nFN:A\r\nEND:VCARD\r\n"
    url = harness.fake.add_media(None, data, "text/vcard")
    media, on_disk, _ = await fetch(harness.fetcher(), url)
    assert (media.head, on_disk, media.size) == (data, data, len(data))


async def test_empty_item(harness: Harness) -> None:
    url = harness.fake.add_media(None, b"", "image/jpeg")
    media, on_disk, existed = await fetch(harness.fetcher(), url)
    assert existed
    assert (media.size, media.head, on_disk) == (0, b"", b"")


async def test_large_item_written_in_batches_is_byte_exact(harness: Harness) -> None:
    data = payload(3 * 256 * 1024 + 12345)  # several write batches and a partial one
    url = harness.fake.add_media(None, data, "video/mp4")
    media, on_disk, _ = await fetch(harness.fetcher(max_bytes=4 * MIB), url)
    assert (media.size, on_disk) == (len(data), data)


async def test_temp_directory_swept_away_between_downloads(harness: Harness) -> None:
    fetcher = harness.fetcher()
    first = harness.fake.add_media(None, payload(100), "image/png")
    await fetch(fetcher, first)
    shutil.rmtree(harness.temp_dir)  # e.g. an operator's cleanup while we run
    second = harness.fake.add_media(None, payload(200), "image/png")
    _, on_disk, _ = await fetch(fetcher, second)
    assert on_disk == payload(200)
    assert harness.temp_files() == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_every_redirect_status_is_followed(harness: Harness, status: int) -> None:
    data = payload(1000)
    url = harness.fake.add_media(None, data, "image/png", redirect_status=status)
    media, on_disk, _ = await fetch(harness.fetcher(), url)
    assert on_disk == data
    assert media.redirects == 1


async def test_served_from_the_api_origin_without_redirect(harness: Harness) -> None:
    data = payload(5000)
    url = harness.fake.add_media(None, data, "image/jpeg", hops=0)
    media, on_disk, _ = await fetch(harness.fetcher(), url)
    assert on_disk == data
    assert media.redirects == 0
    assert harness.fake.requests_to("cdn") == ()


async def test_connections_are_reused_for_many_downloads(harness: Harness) -> None:
    fetcher = harness.fetcher(concurrency=3)
    items = {harness.fake.add_media(None, payload(n * 1000 + 1), "audio/amr"): n for n in range(9)}
    results: dict[str, bytes] = {}

    async def one(url: str) -> None:
        _, on_disk, _ = await fetch(fetcher, url)
        results[url] = on_disk

    async with trio.open_nursery() as nursery:
        for url in items:
            nursery.start_soon(one, url)

    assert {url: len(data) for url, data in results.items()} == {
        url: n * 1000 + 1 for url, n in items.items()
    }
    assert harness.temp_files() == []
    assert fetcher.stats() == {"total": 3, "available": 3, "inUse": 0, "waiting": 0}


# -- credentials -------------------------------------------------------------------------


@pytest.mark.parametrize("cdn_hostname", ["127.0.0.1", "localhost"])
@pytest.mark.parametrize("hops", [1, 2])
async def test_credentials_only_on_the_api_hop(
    temp_dir: Path, cdn_hostname: str, hops: int
) -> None:
    async with open_harness(temp_dir, cdn_hostname=cdn_hostname) as h:
        data = payload(2000)
        url = h.fake.add_media(None, data, "audio/amr", hops=hops)

        _, on_disk, _ = await fetch(h.fetcher(), url)

        assert on_disk == data
        api, cdn = h.fake.requests_to("api"), h.fake.requests_to("cdn")
        assert [(r.has_authorization, r.status) for r in api] == [(True, 307)]
        assert len(cdn) == hops
        assert all(not r.has_authorization for r in cdn)
        assert all(r.host == f"{cdn_hostname}:{port_of(h.fake.cdn_url)}" for r in cdn)


async def test_api_to_api_redirects_keep_credentials(harness: Harness) -> None:
    """Hops that stay on the API origin are still Twilio: they get the credentials."""
    data = payload(100)
    fake = harness.fake
    last = fake.add_media(None, data, "audio/amr")
    first = fake.add_media(None, b"", "audio/amr", redirect_to=last)

    media, on_disk, _ = await fetch(harness.fetcher(), first)

    assert on_disk == data
    assert media.redirects == 2
    assert [r.has_authorization for r in fake.requests_to("api")] == [True, True]
    assert [r.has_authorization for r in fake.requests_to("cdn")] == [False]


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_missing_or_wrong_credentials_is_permanent(
    harness: Harness, token: str | None
) -> None:
    url = harness.fake.add_media(None, b"x", "audio/amr")
    error = await fetch_error(harness.fetcher(auth_token=token), url)
    assert isinstance(error, MediaUnavailable)
    assert error.status == 401
    assert not error.recoverable
    assert [r.has_authorization for r in harness.fake.requests_to("api")] == [token is not None]


# -- policy refusals ---------------------------------------------------------------------


async def test_redirect_to_a_foreign_host_is_refused(harness: Harness) -> None:
    url = harness.fake.add_media(
        None, b"x", "audio/amr", redirect_to="http://evil.example.com/steal?x=1"
    )
    resolved: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["127.0.0.1"]

    metrics = Metrics()
    error = await fetch_error(harness.fetcher(metrics=metrics, resolver=resolver), url)

    assert isinstance(error, MediaRefused)
    assert not error.recoverable
    assert "not allowed" in str(error)
    assert "evil.example.com" not in resolved  # refused before any lookup or connection
    assert harness.fake.requests_to("cdn") == ()
    assert metrics.media_aborts == {"refused": 1}
    assert harness.temp_files() == []


async def test_redirect_host_is_matched_by_name_not_address(temp_dir: Path) -> None:
    """Allowing ``localhost:PORT`` does not allow ``127.0.0.1:PORT``, the same socket."""
    async with open_harness(temp_dir, cdn_hostname="localhost") as h:
        cdn_port = port_of(h.fake.cdn_url)
        url = h.fake.add_media(
            None, b"x", "audio/amr", redirect_to=f"http://127.0.0.1:{cdn_port}/media/ME1"
        )
        error = await fetch_error(h.fetcher(), url)
        assert isinstance(error, MediaRefused)
        assert h.fake.requests_to("cdn") == ()


async def test_redirect_to_an_allowed_host_on_another_port_is_refused(harness: Harness) -> None:
    cdn_port = port_of(harness.fake.cdn_url)
    url = harness.fake.add_media(
        None, b"x", "audio/amr", redirect_to=f"http://127.0.0.1:{cdn_port + 1}/media/ME1"
    )
    assert isinstance(await fetch_error(harness.fetcher(), url), MediaRefused)


def redirect_chain(fake: FakeTwilio, data: bytes, redirects: int) -> str:
    """An API URL that reaches ``data`` after exactly ``redirects`` redirects: API→API
    links (``redirect_to``) and a last hop to the CDN."""
    url = fake.add_media(None, data, "audio/amr", hops=1)
    for _ in range(redirects - 1):
        url = fake.add_media(None, b"", "audio/amr", redirect_to=url)
    return url


async def test_three_redirects_are_followed(harness: Harness) -> None:
    data = payload(777)
    media, on_disk, _ = await fetch(harness.fetcher(), redirect_chain(harness.fake, data, 3))
    assert on_disk == data
    assert media.redirects == 3


async def test_more_than_three_redirects_are_refused(harness: Harness) -> None:
    url = redirect_chain(harness.fake, payload(777), 4)
    error = await fetch_error(harness.fetcher(), url)
    assert isinstance(error, MediaRefused)
    assert "too many redirects" in str(error)
    # Four API requests answered with redirects; the fourth redirect was not followed.
    assert len(harness.fake.requests_to("api")) == 4
    assert harness.fake.requests_to("cdn") == ()
    assert harness.temp_files() == []


async def test_cdn_redirect_loop_is_cut(harness: Harness) -> None:
    """hops=2 with three API redirects in front: five redirects in all, refused."""
    fake = harness.fake
    url = fake.add_media(None, b"x", "audio/amr", hops=2)
    for _ in range(2):
        url = fake.add_media(None, b"", "audio/amr", redirect_to=url)
    assert isinstance(await fetch_error(harness.fetcher(), url), MediaRefused)
    assert [r.status for r in fake.requests_to("cdn")] == [302]


@pytest.mark.parametrize(
    "make_url",
    [
        # Another account's media, on the right origin.
        lambda f: f.media_url("ME1").replace(ACCOUNT, "AC" + "b" * 32),
        # Our account, but not under Messages/.
        lambda f: f"{f.api_url}/2010-04-01/Accounts/{ACCOUNT}/Calls/CA1/Recordings/RE1",
        # Percent-encoded traversal out of Messages/.
        lambda f: f"{f.api_url}/2010-04-01/Accounts/{ACCOUNT}/Messages/..%2f..%2fCalls/x",
        # The CDN as a first hop (no credentials would go there, but it is not Twilio's API).
        lambda f: f"{f.cdn_url}/media/ME1?hop=1",
        # The API host on another port.
        lambda f: f.media_url("ME1").replace(
            str(port_of(f.api_url)), str(port_of(f.api_url) + 1), 1
        ),
        # Credentials in the URL.
        lambda f: f.media_url("ME1").replace("http://", "http://user:pw@"),
    ],
    ids=[
        "other-account",
        "not-messages",
        "encoded-traversal",
        "cdn-first",
        "other-port",
        "userinfo",
    ],
)
async def test_first_hop_refused_without_any_request(
    harness: Harness, make_url: Callable[[FakeTwilio], str]
) -> None:
    harness.fake.add_media("ME1", b"x", "audio/amr")
    metrics = Metrics()
    error = await fetch_error(harness.fetcher(metrics=metrics), make_url(harness.fake))
    assert isinstance(error, MediaRefused)
    assert harness.fake.requests == ()
    assert metrics.media_aborts == {"refused": 1}
    assert harness.temp_files() == []


async def test_https_only_policy_refuses_the_plain_http_fake(harness: Harness) -> None:
    """A production-shaped policy (https, public addresses) never talks plain HTTP."""
    policy = MediaPolicy(
        api_base=harness.fake.api_url.replace("http://", "https://"),
        account_sid=ACCOUNT,
        redirect_hosts=frozenset(),
        allow_private_addresses=False,
        allow_http=False,
    )
    error = await fetch_error(harness.fetcher(policy=policy), harness.fake.media_url("ME1"))
    assert isinstance(error, MediaRefused)
    assert harness.fake.requests == ()


# -- DNS pinning -------------------------------------------------------------------------


def named_policy(fake: FakeTwilio, *, allow_private: bool) -> MediaPolicy:
    """A policy whose API origin is a host *name* that only our resolver knows."""
    return MediaPolicy(
        api_base=f"http://api.media.test:{port_of(fake.api_url)}",
        account_sid=ACCOUNT,
        redirect_hosts=frozenset({fake.cdn_url.removeprefix("http://")}),
        allow_private_addresses=allow_private,
        allow_http=True,
    )


def named_url(fake: FakeTwilio, media_sid: str) -> str:
    return fake.media_url(media_sid).replace("127.0.0.1", "api.media.test", 1)


def table_resolver(
    table: dict[str, list[str]], seen: list[tuple[str, int]]
) -> Callable[[str, int], Awaitable[list[str]]]:
    async def resolve(host: str, port: int) -> list[str]:
        seen.append((host, port))
        await trio.lowlevel.checkpoint()
        return list(table.get(host, [host]))  # IP literals resolve to themselves

    return resolve


async def test_connections_go_to_the_resolved_address(harness: Harness) -> None:
    """The name never reaches the system resolver: the checked address is dialled."""
    fake = harness.fake
    data = payload(4000)
    fake.add_media("MEpinned", data, "audio/amr")
    seen: list[tuple[str, int]] = []
    fetcher = harness.fetcher(
        policy=named_policy(fake, allow_private=True),
        resolver=table_resolver({"api.media.test": ["127.0.0.1"]}, seen),
    )

    _, on_disk, _ = await fetch(fetcher, named_url(fake, "MEpinned"))

    assert on_disk == data
    api_port, cdn_port = port_of(fake.api_url), port_of(fake.cdn_url)
    # One lookup per new connection, of the name the URL carries.
    assert seen == [("api.media.test", api_port), ("127.0.0.1", cdn_port)]
    [api] = fake.requests_to("api")
    assert api.host == f"api.media.test:{api_port}"  # the name, not the address
    assert api.has_authorization


async def test_unreachable_address_falls_back_to_the_next_checked_one(harness: Harness) -> None:
    fake = harness.fake
    fake.add_media("MEfallback", b"abc", "audio/amr")
    seen: list[tuple[str, int]] = []
    # Nothing listens on 127.0.0.2 (the fake binds 127.0.0.1 only): refused, try the next.
    fetcher = harness.fetcher(
        policy=named_policy(fake, allow_private=True),
        resolver=table_resolver({"api.media.test": ["127.0.0.2", "127.0.0.1"]}, seen),
    )
    _, on_disk, _ = await fetch(fetcher, named_url(fake, "MEfallback"))
    assert on_disk == b"abc"


@pytest.mark.parametrize(
    "addresses",
    [
        ["127.0.0.1"],
        ["10.1.2.3"],
        ["169.254.169.254"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        ["93.184.215.14", "127.0.0.1"],  # half-poisoned: refused, not "pick the public one"
        ["2606:2800:21f:cb07:6820:80da:af6b:8b2c", "fd00::1"],
    ],
    ids=["loopback", "private", "metadata", "v6-loopback", "v4-mapped", "mixed", "mixed-v6"],
)
async def test_non_public_resolution_is_refused(harness: Harness, addresses: list[str]) -> None:
    fake = harness.fake
    fake.add_media("MEdns", b"secret", "audio/amr")
    seen: list[tuple[str, int]] = []
    metrics = Metrics()
    fetcher = harness.fetcher(
        policy=named_policy(fake, allow_private=False),
        resolver=table_resolver({"api.media.test": addresses}, seen),
        metrics=metrics,
    )

    error = await fetch_error(fetcher, named_url(fake, "MEdns"))

    assert isinstance(error, MediaRefused)
    assert not error.recoverable
    assert "not public" in str(error)
    assert seen == [("api.media.test", port_of(fake.api_url))]
    assert fake.requests == ()  # no connection was made to any address
    assert metrics.media_aborts == {"refused": 1}
    assert harness.temp_files() == []


async def test_same_addresses_allowed_when_private_is_allowed(harness: Harness) -> None:
    """Control for the test above: the refusal is the policy, not a broken setup."""
    fake = harness.fake
    fake.add_media("MEdns", b"secret", "audio/amr")
    fetcher = harness.fetcher(
        policy=named_policy(fake, allow_private=True),
        resolver=table_resolver({"api.media.test": ["127.0.0.1"]}, []),
    )
    _, on_disk, _ = await fetch(fetcher, named_url(fake, "MEdns"))
    assert on_disk == b"secret"


@pytest.mark.parametrize("outcome", ["gaierror", "empty"])
async def test_resolution_failure_is_recoverable(harness: Harness, outcome: str) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        await trio.lowlevel.checkpoint()
        if outcome == "gaierror":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return []

    fetcher = harness.fetcher(
        policy=named_policy(harness.fake, allow_private=True), resolver=resolver
    )
    error = await fetch_error(fetcher, named_url(harness.fake, "ME1"))
    assert isinstance(error, MediaUnreachable)
    assert error.recoverable
    assert harness.temp_files() == []


# -- size cap ----------------------------------------------------------------------------


async def test_declared_length_over_the_cap_refused_before_the_body(harness: Harness) -> None:
    """The fake declares cap+1 bytes but sends only 10: reading the body would have
    produced a 10-byte file (or a protocol error), so a "too large" proves the header
    alone decided."""
    cap = 64 * KIB
    url = harness.fake.add_media(None, payload(10), "image/jpeg", declared_length=cap + 1)
    metrics = Metrics()

    error = await fetch_error(harness.fetcher(max_bytes=cap, metrics=metrics), url)

    assert isinstance(error, MediaTooLarge)
    assert not error.recoverable
    assert "declared" in str(error)
    assert metrics.media_aborts == {"too_large": 1}
    assert metrics.media_bytes == 0
    assert harness.temp_files() == []


async def test_huge_generated_item_refused_with_the_user_message(harness: Harness) -> None:
    """A 10 GiB item (generated on the fly by the fake) is refused on its header, and the
    sender is told the limit (MAX_MEDIA_SIZE_MB is MiB)."""
    url = harness.fake.media_url(f"MEgen{10 * 1024 * MIB}")
    error = await fetch_error(harness.fetcher(max_bytes=5 * MIB), url)
    assert isinstance(error, MediaTooLarge)
    assert "declared" in str(error)
    assert error.user_message == "Your file is too large (max 5 MB)."


@pytest.mark.parametrize("omit_length", [False, True], ids=["declared", "chunked"])
async def test_exactly_the_cap_is_accepted(harness: Harness, omit_length: bool) -> None:
    cap = 200 * KIB + 3  # not a multiple of any chunk size
    data = payload(cap)
    url = harness.fake.add_media(None, data, "audio/amr", omit_length=omit_length)
    media, on_disk, _ = await fetch(harness.fetcher(max_bytes=cap), url)
    assert media.size == cap
    assert on_disk == data


async def test_one_byte_over_the_cap_without_length_is_aborted(harness: Harness) -> None:
    cap = 200 * KIB + 3
    url = harness.fake.add_media(None, payload(cap + 1), "audio/amr", omit_length=True)
    metrics = Metrics()
    error = await fetch_error(harness.fetcher(max_bytes=cap, metrics=metrics), url)
    assert isinstance(error, MediaTooLarge)
    assert "stream" in str(error)
    assert metrics.media_aborts == {"too_large": 1}
    assert harness.temp_files() == []


async def test_stream_is_aborted_at_the_cap_not_at_the_end(harness: Harness) -> None:
    """No Content-Length and a body that would take ~16 s to arrive (1 MiB at 64 KiB/s)
    against a 16 KiB cap and an 8 s deadline: only an in-stream byte count ends it as
    "too large"; a fetcher that counted after the body would time out instead."""
    cap = 16 * KIB
    url = harness.fake.add_media(
        None, payload(MIB), "audio/amr", omit_length=True, trickle_bytes_per_s=64 * KIB
    )
    error = await fetch_error(harness.fetcher(max_bytes=cap, timeout_s=8.0), url)
    assert isinstance(error, MediaTooLarge)
    assert "stream" in str(error)
    assert harness.temp_files() == []


async def test_declared_length_below_the_truth_never_stores_more(harness: Harness) -> None:
    """A lying, too small Content-Length: HTTP framing ends the body at the declared
    length, so the extra bytes (past the cap) never reach the file."""
    cap = 64 * KIB
    data = payload(4 * cap)
    url = harness.fake.add_media(None, data, "audio/amr", declared_length=1000)
    media, on_disk, _ = await fetch(harness.fetcher(max_bytes=cap), url)
    assert media.size == 1000
    assert on_disk == data[:1000]


async def test_declared_length_above_the_truth_is_a_transport_error(harness: Harness) -> None:
    """Declared within the cap but the connection closes early: a truncated item is not
    passed on as complete."""
    url = harness.fake.add_media(None, payload(1000), "audio/amr", declared_length=5000)
    error = await fetch_error(harness.fetcher(max_bytes=MIB), url)
    assert isinstance(error, MediaUnreachable)
    assert harness.temp_files() == []


# -- deadline ----------------------------------------------------------------------------


async def test_trickling_server_is_cut_off_at_the_deadline(harness: Harness) -> None:
    """200 bytes every 0.1 s: every read succeeds well within a per-read timeout, so
    only the total deadline can end it (the whole body would take ~50 s)."""
    url = harness.fake.add_media(None, payload(100 * KIB), "audio/amr", trickle_bytes_per_s=2000)
    metrics = Metrics()
    fetcher = harness.fetcher(timeout_s=0.5, metrics=metrics)

    error = await fetch_error(fetcher, url)

    assert isinstance(error, MediaTimeout)
    assert error.recoverable
    assert metrics.media_aborts == {"timeout": 1}
    assert [r.status for r in harness.fake.requests_to("cdn")] == [200]  # the body had begun
    assert harness.temp_files() == []
    assert fetcher.stats()["inUse"] == 0


async def test_slow_headers_time_out(harness: Harness) -> None:
    url = harness.fake.add_media(None, b"x", "audio/amr", delay_s=60.0)
    error = await fetch_error(harness.fetcher(timeout_s=0.5), url)
    assert isinstance(error, MediaTimeout)
    assert harness.temp_files() == []


# -- HTTP errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "recoverable"),
    [
        (404, MediaUnavailable, False),
        (403, MediaUnavailable, False),
        (410, MediaUnavailable, False),
        (429, MediaUnreachable, True),
        (500, MediaUnreachable, True),
        (503, MediaUnreachable, True),
    ],
)
async def test_http_status_classification(
    harness: Harness, status: int, kind: type[ProcessingError], recoverable: bool
) -> None:
    url = harness.fake.add_media(None, b"x", "audio/amr", status=status)
    metrics = Metrics()
    error = await fetch_error(harness.fetcher(metrics=metrics), url)
    assert type(error) is kind
    assert error.recoverable is recoverable
    assert str(status) in str(error)
    assert error.user_message
    assert sum(metrics.media_aborts.values()) == 1
    assert harness.temp_files() == []


async def test_unknown_media_is_permanent(harness: Harness) -> None:
    error = await fetch_error(harness.fetcher(), harness.fake.media_url("MEnothere"))
    assert isinstance(error, MediaUnavailable)
    assert error.status == 404


async def test_connection_refused_is_recoverable(harness: Harness, temp_dir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{closed_port}"
    policy = MediaPolicy.from_settings(base, ACCOUNT, [])
    url = f"{base}/2010-04-01/Accounts/{ACCOUNT}/Messages/{new_sid('MM')}/Media/ME1"
    metrics = Metrics()

    error = await fetch_error(harness.fetcher(policy=policy, metrics=metrics), url)

    assert isinstance(error, MediaUnreachable)
    assert error.recoverable
    assert metrics.media_aborts == {"unreachable": 1}
    assert harness.temp_files() == []


# -- cleanup and cancellation ------------------------------------------------------------


async def wait_for_partial_file(temp_dir: Path) -> Path:
    """Poll until a download has written body bytes to its temp file."""
    while True:
        for name in os.listdir(temp_dir) if temp_dir.exists() else []:
            path = temp_dir / name
            try:
                if path.stat().st_size > 0:
                    return path
            except FileNotFoundError:
                pass
        await trio.sleep(0.01)


async def test_cancelled_mid_body_leaves_no_file(harness: Harness) -> None:
    # 20 KiB pieces every 0.1 s (bigger than the file buffer, so bytes reach the disk).
    url = harness.fake.add_media(
        None, payload(8 * MIB), "audio/amr", omit_length=True, trickle_bytes_per_s=200 * KIB
    )
    fetcher = harness.fetcher(timeout_s=60.0)
    reached_block = False

    async def download(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        nonlocal reached_block
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with fetcher.download(url):
                reached_block = True

    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            scope = await nursery.start(download)
            partial_file = await wait_for_partial_file(harness.temp_dir)
            assert fetcher.stats()["inUse"] == 1
            scope.cancel()

    assert scope.cancelled_caught
    assert not reached_block
    assert not partial_file.exists()
    assert harness.temp_files() == []
    assert fetcher.stats() == {"total": 4, "available": 4, "inUse": 0, "waiting": 0}


async def test_cancelled_while_waiting_for_headers(harness: Harness) -> None:
    url = harness.fake.add_media(None, b"x", "audio/amr", delay_s=60.0)
    fetcher = harness.fetcher(timeout_s=60.0)
    with trio.fail_after(HANG_GUARD_S):
        with trio.move_on_after(0.3) as scope:
            async with fetcher.download(url):
                pytest.fail("should not get here")
    assert scope.cancelled_caught
    assert harness.temp_files() == []
    assert fetcher.stats()["inUse"] == 0


async def test_file_deleted_when_the_block_is_cancelled(harness: Harness) -> None:
    """Cancelled while the caller works on the file (e.g. transcribing): still deleted."""
    url = harness.fake.add_media(None, payload(1000), "audio/amr")
    fetcher = harness.fetcher()
    seen: list[Path] = []
    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:

            async def work() -> None:
                async with fetcher.download(url) as media:
                    seen.append(media.path)
                    await trio.sleep_forever()

            nursery.start_soon(work)
            while not seen:
                await trio.sleep(0.01)
            assert seen[0].exists()
            nursery.cancel_scope.cancel()
    assert not seen[0].exists()
    assert harness.temp_files() == []


async def test_file_deleted_when_the_block_raises(harness: Harness) -> None:
    url = harness.fake.add_media(None, payload(1000), "audio/amr")
    fetcher = harness.fetcher()
    paths: list[Path] = []

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with fetcher.download(url) as media:
            paths.append(media.path)
            raise Boom
    assert not paths[0].exists()
    assert harness.temp_files() == []


async def test_temp_dir_empty_after_a_mixed_batch(harness: Harness) -> None:
    """Successes and every failure kind, concurrently: nothing is left behind."""
    fake = harness.fake
    urls = [
        fake.add_media(None, payload(50 * KIB), "audio/amr"),
        fake.add_media(None, payload(50 * KIB), "audio/amr", hops=2),
        fake.add_media(None, payload(300 * KIB), "audio/amr", omit_length=True),  # too large
        fake.add_media(None, payload(10), "audio/amr", declared_length=10 * MIB),  # declared
        fake.add_media(None, payload(100 * KIB), "audio/amr", trickle_bytes_per_s=4000),  # timeout
        fake.add_media(None, b"x", "audio/amr", status=500),
        fake.add_media(None, b"x", "audio/amr", status=404),
        fake.add_media(None, b"x", "audio/amr", redirect_to="http://elsewhere.example/x"),
    ]
    metrics = Metrics()
    fetcher = harness.fetcher(max_bytes=256 * KIB, timeout_s=1.0, concurrency=3, metrics=metrics)
    outcomes: list[str] = []

    async def one(url: str) -> None:
        try:
            async with fetcher.download(url) as media:
                assert media.path.exists()
                outcomes.append("ok")
        except ProcessingError as exc:
            outcomes.append(type(exc).__name__)

    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            for url in urls:
                nursery.start_soon(one, url)

    assert sorted(outcomes) == sorted(
        [
            "ok",
            "ok",
            "MediaTooLarge",
            "MediaTooLarge",
            "MediaTimeout",
            "MediaUnreachable",
            "MediaUnavailable",
            "MediaRefused",
        ]
    )
    assert metrics.media_aborts == {
        "too_large": 2,
        "timeout": 1,
        "unreachable": 1,
        "http_error": 1,
        "refused": 1,
    }
    assert metrics.media_bytes == 100 * KIB
    assert harness.temp_files() == []


# -- limiter -----------------------------------------------------------------------------


async def test_limiter_bounds_concurrent_downloads(harness: Harness) -> None:
    fake = harness.fake
    slow = fake.add_media(
        None, payload(4 * MIB), "audio/amr", omit_length=True, trickle_bytes_per_s=200 * KIB
    )
    quick = fake.add_media(None, payload(100), "audio/amr")
    fetcher = harness.fetcher(concurrency=1, timeout_s=60.0)
    done: list[str] = []

    async def run(url: str, name: str) -> None:
        async with fetcher.download(url):
            done.append(name)

    with trio.fail_after(HANG_GUARD_S):
        async with trio.open_nursery() as nursery:
            slow_scope = trio.CancelScope()

            async def slow_task() -> None:
                with slow_scope:
                    await run(slow, "slow")

            nursery.start_soon(slow_task)
            await wait_for_partial_file(harness.temp_dir)
            nursery.start_soon(run, quick, "quick")
            while fetcher.stats()["waiting"] == 0:
                await trio.sleep(0.01)
            assert fetcher.stats() == {"total": 1, "available": 0, "inUse": 1, "waiting": 1}
            # The quick download cannot start while the slow one holds the only slot.
            assert [r.path for r in fake.requests_to("api")] == [urlsplit(slow).path]
            slow_scope.cancel()

    assert done == ["quick"]
    assert fetcher.stats() == {"total": 1, "available": 1, "inUse": 0, "waiting": 0}
    assert harness.temp_files() == []


def test_constructor_rejects_nonsense(tmp_path: Path) -> None:
    policy = MediaPolicy.from_settings("http://127.0.0.1:1", ACCOUNT, [])
    common = {"account_sid": ACCOUNT, "auth_token": TOKEN, "temp_dir": tmp_path, "concurrency": 1}
    with pytest.raises(ValueError, match="max_bytes"):
        MediaFetcher(policy, max_bytes=0, timeout_s=1.0, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        MediaFetcher(policy, max_bytes=1, timeout_s=0.0, **common)  # type: ignore[arg-type]
