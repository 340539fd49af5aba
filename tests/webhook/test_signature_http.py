"""X-Twilio-Signature over real HTTP, against the twilio library's RequestValidator.

Every signature here is computed by ``twilio.request_validator``; where the outcome is a
matter of URL variants, the reference's own ``validate`` is asked too and must agree with
the server's answer.
"""

from __future__ import annotations

import base64
import string
from typing import Any

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webhook.helpers import (
    FORM_TYPE,
    OUTCOME,
    SIGNATURE,
    WEBHOOK_PATH,
    Apps,
    Running,
    encode,
    message_form,
    query,
    reason_of,
    sid_of,
    twilio_accepts,
    twilio_signature,
)


async def _stored(running: Running, sid: str) -> bool:
    assert running.settings.database_url
    rows = await query(running.settings.database_url,
                       "SELECT 1 FROM inbound_messages WHERE message_sid = %s", sid)
    return bool(rows)


async def test_valid_signature_is_accepted_and_stored(apps: Apps, http: httpx.AsyncClient) -> None:
    app = await apps.start()
    await app.link()
    form = message_form()
    r = await app.post(http, form)
    assert r.status_code == 200, r.text
    assert r.headers[OUTCOME] == "accepted"
    assert r.headers["content-type"].startswith("text/xml")
    assert await _stored(app, sid_of(form))


def _tamper_value(form: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v + "!" if k == "Body" else v) for k, v in form]


def _add_param(form: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [*form, ("FromCity", "SPRINGFIELD")]


def _remove_param(form: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in form if k != "NumSegments"]


def _add_second_value(form: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [*form, ("SmsStatus", "sent")]  # SmsStatus is already there once


@pytest.mark.parametrize("tamper", [_tamper_value, _add_param, _remove_param, _add_second_value])
async def test_tampered_forms_are_refused(
    apps: Apps, http: httpx.AsyncClient, tamper: Any
) -> None:
    app = await apps.start()
    await app.link()
    form = message_form()
    signature = twilio_signature(app.signed_url, form)
    sent = tamper(form)
    assert not twilio_accepts(app.signed_url, sent, signature)  # the reference agrees
    r = await app.post(http, sent, signature=signature)
    assert r.status_code == 403
    assert r.headers[OUTCOME] == "forbidden"
    assert reason_of(r) == "invalid signature"
    assert not await _stored(app, sid_of(form))
    # The untampered form with the same signature still goes through.
    assert (await app.post(http, form, signature=signature)).status_code == 200


async def test_repeated_names_signed_like_twilio_are_accepted(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    app = await apps.start()
    await app.link()
    # An unknown field repeated with values out of order, and one (name, value) twice:
    # the reference signs each distinct value once, sorted.
    form = [*message_form(), ("ToLabel", "zeta"), ("ToLabel", "alpha"), ("ToLabel", "zeta")]
    r = await app.post(http, form)
    assert r.status_code == 200, r.text
    assert r.headers[OUTCOME] == "accepted"
    # Signed over only one of the values: refused.
    partial = [p for p in form if p != ("ToLabel", "alpha")]
    second = [*message_form(), ("ToLabel", "zeta"), ("ToLabel", "alpha")]
    r = await app.post(http, second, signature=twilio_signature(app.signed_url, partial))
    assert r.status_code == 403


async def test_wrong_token_is_refused(apps: Apps, http: httpx.AsyncClient) -> None:
    app = await apps.start()
    form = message_form()
    sig = twilio_signature(app.signed_url, form, token="another-accounts-token-000000000")
    r = await app.post(http, form, signature=sig)
    assert r.status_code == 403 and reason_of(r) == "invalid signature"


@pytest.mark.parametrize("public", ["https://public.example", "https://public.example:443"])
async def test_default_port_spelled_or_not_both_verify(
    apps: Apps, http: httpx.AsyncClient, public: str
) -> None:
    app = await apps.start(settings=apps.settings(PUBLIC_URL=public))
    await app.link()
    server_url = public + WEBHOOK_PATH
    expectations = {
        "https://public.example" + WEBHOOK_PATH: True,
        "https://public.example:443" + WEBHOOK_PATH: True,
        "https://public.example:8443" + WEBHOOK_PATH: False,  # another port is another URL
        "http://public.example" + WEBHOOK_PATH: False,  # and another scheme too
    }
    for signed_over, expected in expectations.items():
        form = message_form()
        sig = twilio_signature(signed_over, form)
        assert twilio_accepts(server_url, form, sig) is expected, signed_over
        r = await app.post(http, form, signature=sig)
        assert r.status_code == (200 if expected else 403), (signed_over, r.text)


async def test_behind_a_proxy_the_public_url_is_what_counts(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    app = await apps.start(settings=apps.settings(PUBLIC_URL="https://public.example"))
    await app.link()
    assert app.base_url.startswith("http://127.0.0.1:")
    form = message_form()
    r = await app.post(http, form, sign_url=app.base_url + WEBHOOK_PATH)  # what we really saw
    assert r.status_code == 403
    r = await app.post(http, form, sign_url="https://public.example" + WEBHOOK_PATH)
    assert r.status_code == 200 and r.headers[OUTCOME] == "accepted"
    # The query string Twilio called is signed verbatim, and it must match.
    form = message_form()
    path = WEBHOOK_PATH + "?tenant=a%20b&x=1"
    r = await app.post(http, form, path=path, sign_url="https://public.example" + path)
    assert r.status_code == 200, r.text
    r = await app.post(http, message_form(), path=path,
                       sign_url="https://public.example" + WEBHOOK_PATH)
    assert r.status_code == 403


async def test_missing_or_empty_header_is_refused(apps: Apps, http: httpx.AsyncClient) -> None:
    app = await apps.start()
    form = message_form()
    r = await http.post(app.base_url + WEBHOOK_PATH, content=encode(form),
                        headers={"Content-Type": FORM_TYPE})
    assert r.status_code == 403
    assert r.headers[OUTCOME] == "forbidden"
    assert reason_of(r) == "missing X-Twilio-Signature"
    r = await app.post(http, form, signature="")
    assert r.status_code == 403
    assert not await _stored(app, sid_of(form))


# Bytes h11 lets a client send in a header value: visible ASCII, obs-text, inner spaces.
_HEADER_BYTES = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))
_header_values = st.lists(
    st.sampled_from([*(bytes([c]) for c in _HEADER_BYTES), b" ", b"\t"]), max_size=300
).map(lambda parts: b"".join(parts).strip(b" \t"))
_malformed = st.one_of(
    _header_values,
    # Well-shaped: base64 of 20 random bytes (right length and alphabet, wrong digest).
    st.binary(min_size=20, max_size=20).map(base64.b64encode),
    # Base64 of other lengths, with and without padding.
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).rstrip(b"=")),
    st.text(string.ascii_letters + string.digits + "+/=", min_size=26, max_size=30).map(str.encode),
    st.integers(min_value=1000, max_value=8000).map(lambda n: b"A" * n),
)


async def test_malformed_signatures_are_refused_never_5xx(
    apps: Apps, http: httpx.AsyncClient
) -> None:
    app = await apps.start()
    await app.link()
    form = message_form()
    body = encode(form)
    statuses: list[int] = []
    client = httpx.Client(timeout=30)

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(signature=_malformed)
    def check(signature: bytes) -> None:
        headers = [(b"Content-Type", FORM_TYPE.encode()), (SIGNATURE.encode(), signature)]
        r = client.post(app.base_url + WEBHOOK_PATH, content=body, headers=headers)
        statuses.append(r.status_code)
        assert r.status_code == 403, (signature, r.status_code, r.text)
        assert r.headers[OUTCOME] == "forbidden"
        reason_of(r)

    with client:
        await trio.to_thread.run_sync(check)
    assert len(statuses) >= 100
    assert not await _stored(app, sid_of(form))
    # Still healthy: the genuine signature for the same body goes through.
    r = await app.post(http, form)
    assert r.status_code == 200 and r.headers[OUTCOME] == "accepted"
