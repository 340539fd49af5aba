"""The fake Twilio: media over real HTTP with redirects, and the Messages API as the real
``twilio`` library sees it."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import requests
import trio
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from enrich.testing.fake_twilio import (
    FakeTwilio,
    FakeTwilioThread,
    MediaSpec,
    count_segments,
    generated_media_size,
    open_fake_twilio,
    parse_basic_auth,
)

SID = "AC" + "12" * 16
TOKEN = "secret-token-0123456789abcdef"
AUTH = (SID, TOKEN)
MEDIA = Path(__file__).resolve().parent.parent / "fixtures" / "media"
ME = "ME" + "ab" * 16


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    async with open_fake_twilio(SID, TOKEN) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        yield http


def twilio_client(fake: FakeTwilio, token: str = TOKEN, **http: float) -> Client:
    """The real REST client pointed at the fake the way the app does it."""
    rest = Client(SID, token, http_client=TwilioHttpClient(**http))
    rest.api.base_url = fake.api_url
    return rest


# -- media: auth and redirects -------------------------------------------------------------


async def test_media_needs_basic_auth(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    url = fake.add_media(ME, b"voice", "audio/amr")

    anonymous = await client.get(url)
    wrong = await client.get(url, auth=(SID, "not-the-token"))

    for response in (anonymous, wrong):
        assert response.status_code == 401
        assert response.json()["code"] == 20003
        assert response.headers["www-authenticate"].startswith("Basic")
    assert fake.requests_to("cdn") == ()


async def test_media_redirects_to_cdn_without_credentials(
    fake: FakeTwilio, client: httpx.AsyncClient
) -> None:
    data = (MEDIA / "note1.amr").read_bytes()
    url = fake.add_media(ME, data, "audio/amr")

    response = await client.get(url, auth=AUTH, follow_redirects=True)

    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-type"] == "audio/amr"
    assert int(response.headers["content-length"]) == len(data)
    assert [r.status_code for r in response.history] == [307]
    assert urlsplit(str(response.url)).netloc == urlsplit(fake.cdn_url).netloc
    assert fake.cdn_url != fake.api_url
    api, cdn = fake.requests_to("api"), fake.requests_to("cdn")
    assert [(r.status, r.has_authorization) for r in api] == [(307, True)]
    assert [(r.status, r.has_authorization) for r in cdn] == [(200, False)]
    assert cdn[0].path == f"/media/{ME}"


async def test_two_hops_stay_on_cdn(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    url = fake.add_media(ME, b"x" * 1000, "image/png", hops=2, redirect_status=302)

    response = await client.get(url, auth=AUTH, follow_redirects=True)

    assert response.content == b"x" * 1000
    assert [r.status_code for r in response.history] == [302, 302]
    assert [r.status for r in fake.requests_to("cdn")] == [302, 200]
    assert not any(r.has_authorization for r in fake.requests_to("cdn"))


async def test_hops_zero_serves_from_api(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    url = fake.add_media(ME, b"direct", "text/vcard", hops=0)

    response = await client.get(url, auth=AUTH)

    assert response.status_code == 200
    assert response.content == b"direct"
    assert fake.requests_to("cdn") == ()


async def test_cdn_checks_signature(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    url = fake.add_media(ME, b"signed", "image/jpeg")
    location = (await client.get(url, auth=AUTH)).headers["location"]
    parts = urlsplit(location)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"

    genuine = await client.get(location)
    unsigned = await client.get(base)
    tampered = await client.get(f"{base}?{urlencode({**params, 'Signature': '0' * 64})}")
    extended = await client.get(f"{base}?{urlencode({**params, 'Expires': '9999999999'})}")

    assert genuine.content == b"signed"
    assert [unsigned.status_code, tampered.status_code, extended.status_code] == [403] * 3


async def test_redirect_to_foreign_host(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    foreign = "https://evil.example.net/steal?x=1"
    url = fake.add_media(ME, b"", "image/jpeg", redirect_to=foreign)

    response = await client.get(url, auth=AUTH)

    assert response.status_code == 307
    assert response.headers["location"] == foreign


async def test_unknown_media_and_wrong_account_are_404(
    fake: FakeTwilio, client: httpx.AsyncClient
) -> None:
    missing = await client.get(fake.media_url("ME" + "0" * 32), auth=AUTH)
    other_account = fake.media_url(ME).replace(SID, "AC" + "9" * 32)
    fake.add_media(ME, b"mine", "image/png")
    foreign = await client.get(other_account, auth=AUTH)

    assert missing.status_code == 404
    assert missing.json()["code"] == 20404
    assert foreign.status_code == 404


@pytest.mark.parametrize("status", [404, 429, 500])
async def test_error_status_served_by_cdn(
    fake: FakeTwilio, client: httpx.AsyncClient, status: int
) -> None:
    url = fake.add_media(ME, b"never", "audio/amr", status=status)

    response = await client.get(url, auth=AUTH, follow_redirects=True)

    assert response.status_code == status
    assert [r.status for r in fake.requests_to("cdn")] == [status]


# -- media: framing and pacing -------------------------------------------------------------


async def test_declared_length_larger_than_body_breaks_the_read(
    fake: FakeTwilio, client: httpx.AsyncClient
) -> None:
    url = fake.add_media(ME, b"a" * 1000, "audio/amr", declared_length=5000)

    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(url, auth=AUTH, follow_redirects=True)


async def test_declared_length_smaller_than_body(
    fake: FakeTwilio, client: httpx.AsyncClient
) -> None:
    url = fake.add_media(ME, b"b" * 300_000, "audio/amr", declared_length=10)

    async with client.stream("GET", url, auth=AUTH, follow_redirects=True) as response:
        assert response.headers["content-length"] == "10"
        body = await response.aread()

    # The client trusts the header; the fake still wrote all 300 kB behind it.
    assert body == b"b" * 10


async def test_omitted_length_is_chunked(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    data = (MEDIA / "photo.jpg").read_bytes()
    url = fake.add_media(ME, data, "image/jpeg", omit_length=True)

    response = await client.get(url, auth=AUTH, follow_redirects=True)

    assert "content-length" not in response.headers
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == data


async def test_head_gives_length_without_body(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    url = fake.add_media(ME, b"h" * 4321, "audio/amr")

    head = await client.head(url, auth=AUTH, follow_redirects=True)
    # The kept-alive connections are still in a sane state for a full GET.
    get = await client.get(url, auth=AUTH, follow_redirects=True)

    assert head.status_code == 200
    assert head.headers["content-length"] == "4321"
    assert head.content == b""
    assert get.content == b"h" * 4321


async def test_trickle_delivers_intact(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    data = bytes(range(256)) * 8
    url = fake.add_media(ME, data, "audio/ogg", trickle_bytes_per_s=40_000)

    response = await client.get(url, auth=AUTH, follow_redirects=True)

    assert response.content == data


async def test_trickle_outlasts_a_deadline(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    # 200 kB at 10 kB/s takes 20 s; a 0.5 s deadline must cut it with bytes still owed.
    url = fake.add_media(ME, b"t" * 200_000, "audio/ogg", trickle_bytes_per_s=10_000)
    received = 0
    with trio.move_on_after(0.5) as scope:
        async with client.stream("GET", url, auth=AUTH, follow_redirects=True) as response:
            assert response.headers["content-length"] == "200000"
            async for chunk in response.aiter_raw():
                received += len(chunk)

    assert scope.cancelled_caught
    assert 0 < received < 200_000


async def test_delay_holds_back_the_headers(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    url = fake.add_media(ME, b"late", "audio/amr", delay_s=30.0)
    got_response = False
    with trio.move_on_after(0.3) as scope:
        await client.get(url, auth=AUTH, follow_redirects=True)
        got_response = True

    assert scope.cancelled_caught
    assert not got_response


# -- media: generated payloads and load ----------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 21, 65_536, 5 * 1024 * 1024 + 3])
async def test_generated_media_has_requested_size(
    fake: FakeTwilio, client: httpx.AsyncClient, size: int
) -> None:
    response = await client.get(fake.media_url(f"MEgen{size}"), auth=AUTH, follow_redirects=True)

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert len(response.content) == size
    if size >= 22:
        assert response.content.startswith(b"\xff\xd8\xff")
        assert response.content.endswith(b"\xff\xd9")


def test_generated_sid_parsing() -> None:
    assert generated_media_size("MEgen1024") == 1024
    assert generated_media_size("MEgen") is None
    assert generated_media_size("ME" + "0" * 32) is None
    assert generated_media_size("MEgen12x") is None


async def test_many_concurrent_downloads(fake: FakeTwilio) -> None:
    sizes = [10_000 + 997 * i for i in range(120)]
    results: dict[int, int] = {}
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as http:

        async def fetch(i: int) -> None:
            url = fake.media_url(f"MEgen{sizes[i]}")
            response = await http.get(url, auth=AUTH, follow_redirects=True)
            results[i] = len(response.content)

        async with trio.open_nursery() as nursery:
            for i in range(len(sizes)):
                nursery.start_soon(fetch, i)

    assert [results[i] for i in range(len(sizes))] == sizes
    assert len(fake.requests_to("cdn")) == len(sizes)
    assert not any(r.has_authorization for r in fake.requests_to("cdn"))


async def test_cdn_addressed_as_localhost(client: httpx.AsyncClient) -> None:
    async with open_fake_twilio(SID, TOKEN, cdn_hostname="localhost") as fake:
        url = fake.add_media(ME, b"loc", "image/png")

        response = await client.get(url, auth=AUTH, follow_redirects=True)

        assert fake.cdn_url.startswith("http://localhost:")
        assert urlsplit(str(response.url)).hostname == "localhost"
        assert response.content == b"loc"


def test_media_spec_rejects_nonsense() -> None:
    for bad in (
        {"hops": 3},
        {"status": 302},
        {"redirect_status": 200},
        {"delay_s": -1.0},
        {"trickle_bytes_per_s": 0.0},
        {"declared_length": 5, "omit_length": True},
        {"redirect_to": "/relative"},
    ):
        with pytest.raises(ValueError):
            MediaSpec(media_sid=ME, content_type="image/png", **bad)
    with pytest.raises(ValueError):
        MediaSpec(media_sid="ME/../x", content_type="image/png")


# -- control endpoints over HTTP -----------------------------------------------------------


async def test_control_media_upload_and_logs(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    data = (MEDIA / "contact.vcf").read_bytes()
    created = await client.post(
        f"{fake.api_url}/_fake/media",
        json={
            "data_base64": base64.b64encode(data).decode(),
            "content_type": "text/vcard",
            "hops": 2,
        },
    )
    assert created.status_code == 201
    url = created.json()["url"]
    assert re.fullmatch(r"ME[0-9a-f]{32}", created.json()["media_sid"])

    downloaded = await client.get(url, auth=AUTH, follow_redirects=True)
    cdn_log = (await client.get(f"{fake.api_url}/_fake/requests?origin=cdn")).json()
    full_log = (await client.get(f"{fake.api_url}/_fake/requests")).json()

    assert downloaded.content == data
    assert [(r["status"], r["has_authorization"]) for r in cdn_log] == [(302, False), (200, False)]
    assert {r["origin"] for r in full_log} == {"api", "cdn"}
    # Control calls are not part of the log, and the log never holds the token.
    assert not any(r["path"].startswith("/_fake/") for r in full_log)
    assert TOKEN not in json.dumps(full_log)

    reset = await client.post(f"{fake.api_url}/_fake/reset")
    assert reset.status_code == 200
    assert fake.requests == ()
    assert (await client.get(url, auth=AUTH)).status_code == 404


@pytest.mark.parametrize(
    "payload",
    [
        {"content_type": "image/png"},
        {"data_base64": "!!", "content_type": "image/png"},
        {"data_base64": "", "content_type": "image/png", "hops": "two"},
        {"data_base64": "", "content_type": "image/png", "hops": True},
        {"data_base64": "", "content_type": "image/png", "surprise": 1},
        {"data_base64": "", "content_type": "image/png", "status": 301},
    ],
)
async def test_control_media_rejects_bad_payloads(
    fake: FakeTwilio, client: httpx.AsyncClient, payload: dict[str, object]
) -> None:
    response = await client.post(f"{fake.api_url}/_fake/media", json=payload)

    assert response.status_code == 400
    assert "error" in response.json()


async def test_control_send_failures_and_messages(
    fake: FakeTwilio, client: httpx.AsyncClient
) -> None:
    set_failure = await client.post(
        f"{fake.api_url}/_fake/fail_sends", json={"count": 1, "status": 429}
    )
    form = {"To": "+14155550100", "From": "+14155550199", "Body": "hello"}

    failed = await client.post(fake.messages_url(), data=form, auth=AUTH)
    sent = await client.post(fake.messages_url(), data=form, auth=AUTH)
    listed = (await client.get(f"{fake.api_url}/_fake/messages")).json()

    assert set_failure.status_code == 200
    assert failed.status_code == 429
    assert failed.json() == {
        "code": 20429,
        "message": "Too Many Requests",
        "more_info": "https://www.twilio.com/docs/errors/20429",
        "status": 429,
    }
    assert sent.status_code == 201
    assert [(m["to"], m["body"], m["sid"]) for m in listed] == [
        ("+14155550100", "hello", sent.json()["sid"])
    ]


async def test_unknown_control_endpoint(fake: FakeTwilio, client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{fake.api_url}/_fake/nothing")).status_code == 404
    assert (await client.get(f"{fake.api_url}/_fake/health")).json() == {"ok": True}


# -- Messages API through the real twilio library ------------------------------------------


def test_real_client_sends_and_parses() -> None:
    with FakeTwilioThread(SID, TOKEN) as fake:
        rest = twilio_client(fake)
        message = rest.messages.create(
            to="+14155550100",
            from_="+14155550199",
            body="Saved 3 items",
            media_url=["https://example.com/a.png"],
            status_callback="https://example.com/status",
        )

        assert message.sid is not None
        assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid)
        assert message.status == "queued"
        assert (message.to, message.from_, message.body) == (
            "+14155550100",
            "+14155550199",
            "Saved 3 items",
        )
        assert message.num_segments == "1"
        assert message.num_media == "1"
        assert message.date_created is not None
        assert message.account_sid == SID
        [recorded] = fake.sent_messages
        assert recorded.sid == message.sid
        assert recorded.media_urls == ("https://example.com/a.png",)
        assert recorded.status_callback == "https://example.com/status"
        assert [(r.method, r.status, r.has_authorization) for r in fake.requests] == [
            ("POST", 201, True)
        ]


def test_real_client_with_messaging_service() -> None:
    with FakeTwilioThread(SID, TOKEN) as fake:
        message = twilio_client(fake).messages.create(
            to="+14155550100", messaging_service_sid="MG" + "3" * 32, body="hi"
        )

        assert message.status == "accepted"
        assert message.from_ is None
        assert fake.sent_messages[0].messaging_service_sid == "MG" + "3" * 32


def test_real_client_wrong_token_is_401() -> None:
    with FakeTwilioThread(SID, TOKEN) as fake:
        with pytest.raises(TwilioRestException) as raised:
            twilio_client(fake, token="wrong").messages.create(
                to="+14155550100", from_="+14155550199", body="hi"
            )

        assert raised.value.status == 401
        assert raised.value.code == 20003
        assert fake.sent_messages == ()


def test_real_client_validation_error() -> None:
    with FakeTwilioThread(SID, TOKEN) as fake:
        with pytest.raises(TwilioRestException) as raised:
            twilio_client(fake).messages.create(to="+14155550100", from_="+14155550199")

        assert raised.value.status == 400
        assert raised.value.code == 21602


def test_real_client_injected_failures_then_success() -> None:
    with FakeTwilioThread(SID, TOKEN) as fake:
        rest = twilio_client(fake)
        fake.fail_next_sends(1, 500)
        fake.fail_next_sends(1, 429, code=20429, message="Too many")

        with pytest.raises(TwilioRestException) as first:
            rest.messages.create(to="+14155550100", from_="+14155550199", body="one")
        with pytest.raises(TwilioRestException) as second:
            rest.messages.create(to="+14155550100", from_="+14155550199", body="two")
        third = rest.messages.create(to="+14155550100", from_="+14155550199", body="three")

        assert (first.value.status, first.value.code) == (500, 20500)
        assert (second.value.status, second.value.code) == (429, 20429)
        assert "Too many" in second.value.msg
        assert [m.body for m in fake.sent_messages] == ["three"]
        assert fake.sent_messages[0].sid == third.sid


def test_send_latency_trips_client_timeout() -> None:
    with FakeTwilioThread(SID, TOKEN) as fake:
        fake.send_latency_s = 1.0
        rest = twilio_client(fake, timeout=0.2)

        with pytest.raises(requests.exceptions.Timeout):
            rest.messages.create(to="+14155550100", from_="+14155550199", body="slow")


def test_segments() -> None:
    assert count_segments("") == 1
    assert count_segments("a" * 160) == 1
    assert count_segments("a" * 161) == 2
    assert count_segments("a" * 306) == 2
    assert count_segments("a" * 307) == 3
    assert count_segments("{" * 80) == 1  # extension characters cost two septets
    assert count_segments("{" * 81) == 2
    assert count_segments("☕" * 70) == 1
    assert count_segments("☕" * 71) == 2
    assert count_segments("😀" * 35) == 1  # outside the BMP: two UTF-16 units each
    assert count_segments("😀" * 36) == 2


def test_parse_basic_auth() -> None:
    header = "Basic " + base64.b64encode(b"AC1:tok:en").decode()
    assert parse_basic_auth(header) == ("AC1", "tok:en")
    assert parse_basic_auth(None) is None
    assert parse_basic_auth("Bearer abc") is None
    assert parse_basic_auth("Basic !!!") is None
    assert parse_basic_auth("Basic " + base64.b64encode(b"nocolon").decode()) is None


# -- lifecycle -----------------------------------------------------------------------------


def _port_open(url: str) -> bool:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    with socket.socket() as sock:
        return sock.connect_ex((parts.hostname, parts.port)) == 0


def test_thread_stops_cleanly() -> None:
    before = set(threading.enumerate())
    runner = FakeTwilioThread(SID, TOKEN)
    with runner as fake:
        api_url, cdn_url = fake.api_url, fake.cdn_url
        assert _port_open(api_url) and _port_open(cdn_url)
        assert httpx.get(f"{api_url}/_fake/health").json() == {"ok": True}

    assert set(threading.enumerate()) == before
    assert not _port_open(api_url)
    assert not _port_open(cdn_url)
    runner.stop()  # idempotent


async def test_in_process_fake_closes_ports() -> None:
    async with open_fake_twilio(SID, TOKEN) as fake:
        api_url = fake.api_url
    assert not _port_open(api_url)


async def test_in_process_fake_passes_errors_through() -> None:
    with pytest.raises(KeyError, match="from the test"):
        async with open_fake_twilio(SID, TOKEN):
            raise KeyError("from the test")


def test_not_serving_has_no_urls() -> None:
    with pytest.raises(RuntimeError):
        _ = FakeTwilio(SID, TOKEN).api_url
    with pytest.raises(ValueError):
        FakeTwilio("XX" + "1" * 32, TOKEN)


@pytest.mark.slow
def test_standalone_process() -> None:
    help_run = subprocess.run(
        [sys.executable, "-m", "enrich.testing.fake_twilio", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert help_run.returncode == 0
    assert "--api-port" in help_run.stdout

    with subprocess.Popen(
        [sys.executable, "-m", "enrich.testing.fake_twilio", "--auth-token", TOKEN],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            urls = json.loads(proc.stdout.readline())
            assert TOKEN not in json.dumps(urls)
            assert httpx.get(f"{urls['api_url']}/_fake/health").json() == {"ok": True}
            gen = httpx.get(
                f"{urls['api_url']}/2010-04-01/Accounts/{urls['account_sid']}"
                "/Messages/MM1/Media/MEgen1000",
                auth=(urls["account_sid"], TOKEN),
                follow_redirects=True,
            )
            assert len(gen.content) == 1000
            proc.terminate()
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
