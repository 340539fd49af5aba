"""Whatever arrives at the webhook, it never answers 5xx, and every 4xx says why (JSON).

Forms are signed correctly (with the twilio library) wherever that is possible, so the
junk gets past the signature and reaches parsing, lookup, the rate limit and the INSERT.
The sans-I/O parser is the oracle for forms: the HTTP answer must agree with it.
"""

from __future__ import annotations

import string
from collections.abc import AsyncIterator, Callable
from urllib.parse import parse_qsl

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrich.core.inbound import InboundParseError, parse_inbound
from enrich.core.phone import InvalidPhoneNumber, normalize_e164
from tests.webhook.helpers import (
    FORM_TYPE,
    OUTCOME,
    SIGNATURE,
    WEBHOOK_PATH,
    Apps,
    Running,
    encode,
    message_form,
    reason_of,
    twilio_signature,
)

EXAMPLES = settings(max_examples=80, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
OK_OUTCOMES = {"accepted", "duplicate", "unknown_sender", "unverified"}


def expected_reason(pairs: list[tuple[str, str]]) -> str | None:
    """What the webhook must refuse this (correctly signed) form for; None: a 200."""
    try:
        msg = parse_inbound(pairs)
        normalize_e164(msg.from_number)
    except InboundParseError as exc:
        return exc.reason
    except InvalidPhoneNumber:
        return "From is not a phone number"
    return None


def check_answer(r: httpx.Response, expected: str | None) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if expected is None:
        assert r.status_code == 200, r.text
        assert r.headers[OUTCOME] in OK_OUTCOMES
        assert r.headers["content-type"].startswith("text/xml")
    else:
        assert r.status_code == 400, r.text
        assert reason_of(r) == expected
        assert r.headers[OUTCOME] == "bad_request"


@pytest.fixture
async def app(apps: Apps) -> AsyncIterator[Running]:
    running = await apps.start()
    await running.link()
    yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.Client]:
    # Async so it closes inside the test's trio run, before the app shuts down (an open
    # keep-alive connection would hold hypercorn's graceful shutdown).
    with httpx.Client(timeout=10) as c:
        yield c


def post_signed(client: httpx.Client, app: Running, pairs: list[tuple[str, str]]) -> httpx.Response:
    return client.post(app.base_url + WEBHOOK_PATH, content=encode(pairs), headers={
        "Content-Type": FORM_TYPE, SIGNATURE: twilio_signature(app.signed_url, pairs)})


async def run_in_thread(fn: Callable[[], None]) -> None:
    await trio.to_thread.run_sync(fn)


# Text a form can carry (UTF-8 encodable), with the characters that matter to a parser.
texts = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", "0", "-1", "11", "1_0", "+1", "\x00", "\r\n", "SM" + "0" * 32, "+15557654321",
     "https://", "http://h/x y", "image/jpeg", "a" * 300, "\u202e", "\u0661"])
known = st.sampled_from(["MessageSid", "AccountSid", "From", "To", "Body", "NumMedia",
                         "NumSegments", "FromCity", "FromZip", "MediaUrl0",
                         "MediaContentType0", "MediaUrl01", "MediaUrl10"])
names = known | st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)


@st.composite
def mutated_forms(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A valid form from the linked sender, then a few random edits."""
    form = message_form(body=draw(st.sampled_from(["Met Ana Lee in Boston", "hi", "x" * 1600])))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["set", "add", "drop"]))
        if action == "add":
            form.append((draw(names), draw(texts)))
        elif form:
            i = draw(st.integers(0, len(form) - 1))
            if action == "drop":
                del form[i]
            else:
                form[i] = (form[i][0], draw(texts))
    return form


async def test_random_forms_never_5xx(app: Running, client: httpx.Client) -> None:
    @EXAMPLES
    @given(form=mutated_forms())
    def check(form: list[tuple[str, str]]) -> None:
        check_answer(post_signed(client, app, form), expected_reason(form))

    await run_in_thread(check)


media_urls = st.sampled_from([
    "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
    "http://127.0.0.1:9/x", "ftp://h/x", "https://", "relative/path", "https://u:p@h/x",
    "https://h:99999/x", "https://h/" + "a" * 2100, "", "https://h/a b",
])
content_types = st.sampled_from(["image/jpeg", "audio/amr", "text/vcard; charset=utf-8",
                                 "", "jpeg", "image/", "a/b\x01", "x" * 300])


@st.composite
def media_forms(draw: st.DrawFn) -> list[tuple[str, str]]:
    form = [(k, v) for k, v in message_form(body=draw(st.sampled_from(["", "caption"])))
            if k != "NumMedia"]
    num = draw(st.one_of(st.integers(0, 12).map(str), st.sampled_from(["", "x", "-1", "01"]),
                         st.none()))
    if num is not None:
        form.append(("NumMedia", num))
    for index in draw(st.lists(st.integers(0, 11), max_size=4)):
        suffix = draw(st.sampled_from([str(index), f"0{index}"]))
        if draw(st.booleans()):
            form.append((f"MediaUrl{suffix}", draw(media_urls)))
        if draw(st.booleans()):
            form.append((f"MediaContentType{suffix}", draw(content_types)))
    return form


async def test_bad_num_media_and_media_url_combinations(app: Running, client: httpx.Client) -> None:
    seen: set[bool] = set()

    @EXAMPLES
    @given(form=media_forms())
    def check(form: list[tuple[str, str]]) -> None:
        expected = expected_reason(form)
        seen.add(expected is None)
        check_answer(post_signed(client, app, form), expected)

    await run_in_thread(check)
    assert seen == {True, False}  # both valid MMS forms and refusals were exercised


@pytest.mark.parametrize("field", ["MessageSid", "AccountSid", "From", "To"])
async def test_missing_required_field(app: Running, client: httpx.Client, field: str) -> None:
    form = [(k, v) for k, v in message_form() if k != field]
    r = await trio.to_thread.run_sync(post_signed, client, app, form)
    assert r.status_code == 400
    assert reason_of(r) == f"missing {field}"


async def test_neither_body_nor_media(app: Running, client: httpx.Client) -> None:
    r = await trio.to_thread.run_sync(post_signed, client, app, message_form(body=""))
    assert r.status_code == 400
    assert reason_of(r) == "message has neither Body nor media"


async def test_random_bytes_bodies(app: Running, client: httpx.Client) -> None:
    printable = st.text(string.printable, max_size=200).map(str.encode)

    @EXAMPLES
    @given(body=st.binary(max_size=400) | printable, signed=st.booleans())
    def check(body: bytes, signed: bool) -> None:
        headers = {"Content-Type": FORM_TYPE}
        try:  # exactly as a form parser that refuses bad UTF-8 and field floods would
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict",
                              max_num_fields=200)
        except (UnicodeDecodeError, ValueError):
            pairs = None
        if signed and pairs is not None:
            headers[SIGNATURE] = twilio_signature(app.signed_url, pairs)
        r = client.post(app.base_url + WEBHOOK_PATH, content=body, headers=headers)
        assert r.status_code in (200, 400, 403), (body, r.status_code, r.text)
        if r.status_code != 200:
            reason_of(r)
        if pairs is None:
            assert r.status_code == 400  # not a UTF-8 form: refused before anything else
        elif not signed:
            assert r.status_code == 403
        else:
            check_answer(r, expected_reason(pairs))

    await run_in_thread(check)


async def test_too_many_fields(app: Running, client: httpx.Client) -> None:
    form = message_form() + [(f"X{i}", "v") for i in range(200)]
    r = await trio.to_thread.run_sync(post_signed, client, app, form)
    assert r.status_code == 400
    reason_of(r)


async def test_wrong_content_types(app: Running, client: httpx.Client) -> None:
    @EXAMPLES
    @given(ctype=st.sampled_from([
        "application/json", "text/plain", "multipart/form-data; boundary=x", "text/xml",
        "application/x-www-form-urlencodedx", "application/octet-stream", "",
    ]) | st.from_regex(r"[a-z]{1,10}/[a-z0-9.+-]{1,20}", fullmatch=True))
    def check(ctype: str) -> None:
        form = message_form()
        headers = {SIGNATURE: twilio_signature(app.signed_url, form)}
        if ctype:
            headers["Content-Type"] = ctype
        r = client.post(app.base_url + WEBHOOK_PATH, content=encode(form), headers=headers)
        if ctype.split(";")[0].strip().lower() == FORM_TYPE:
            assert r.status_code == 200
            return
        assert r.status_code == 415, (ctype, r.status_code, r.text)
        assert "expected application/x-www-form-urlencoded" in reason_of(r)

    await run_in_thread(check)
    # A charset parameter on the right type is fine.
    form = message_form()
    r = await trio.to_thread.run_sync(lambda: client.post(
        app.base_url + WEBHOOK_PATH, content=encode(form), headers={
            "Content-Type": FORM_TYPE + "; charset=utf-8",
            SIGNATURE: twilio_signature(app.signed_url, form)}))
    assert r.status_code == 200 and r.headers[OUTCOME] == "accepted"


async def test_early_refusals_leave_the_connection_usable(
    app: Running, http: httpx.AsyncClient
) -> None:
    # A 415 is decided from the headers alone. Unless the body is still received, the
    # next request on the same keep-alive connection is never answered.
    with trio.fail_after(20):
        for _ in range(25):
            form = message_form()
            r = await http.post(app.base_url + WEBHOOK_PATH, content=encode(form), headers={
                "Content-Type": "text/plain",
                SIGNATURE: twilio_signature(app.signed_url, form)})
            assert r.status_code == 415
            r = await http.post(app.base_url + "/api/sms/performance/stats",
                                content=b"{}", headers={"Content-Type": "application/json"})
            assert r.status_code in (404, 405)
            r = await app.post(http, message_form())
            assert r.status_code == 200 and r.headers[OUTCOME] == "accepted"


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_bodies_get_413(
    app: Running, http: httpx.AsyncClient, chunked: bool
) -> None:
    cap = app.settings.max_body_bytes
    for size in (cap + 1, cap * 8):
        form = [*message_form(body="x"), ("Padding", "p" * size)]
        data = encode(form)
        signed = {"Content-Type": FORM_TYPE, SIGNATURE: twilio_signature(app.signed_url, form)}

        async def pieces(data: bytes = data) -> AsyncIterator[bytes]:
            for start in range(0, len(data), 16384):
                yield data[start:start + 16384]

        r = await http.post(app.base_url + WEBHOOK_PATH,
                            content=pieces() if chunked else data, headers=signed)
        assert r.status_code == 413, (size, r.status_code, r.text[:200])
        reason_of(r)
    # The server is fine afterwards.
    form = message_form()
    r = await http.post(app.base_url + WEBHOOK_PATH, content=encode(form), headers={
        "Content-Type": FORM_TYPE, SIGNATURE: twilio_signature(app.signed_url, form)})
    assert r.status_code == 200
