"""X-Twilio-Signature: our implementation against twilio's RequestValidator."""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from enrich.core.signature import (
    compute_signature,
    public_url,
    url_variants,
    verify_signature,
)

TOKEN = "12345678901234567890123456789012"
URL = "https://example.com/api/sms/webhook"
PARAMS = [
    ("MessageSid", "SM" + "a" * 32),
    ("From", "+14155550100"),
    ("To", "+14155550199"),
    ("Body", "Met Ana Díaz at the café ☕"),
    ("NumMedia", "0"),
]


class MultiDict(dict[str, list[str]]):
    """The smallest multi-dict RequestValidator understands (it calls getall)."""

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, str]]) -> MultiDict:
        md = cls()
        for name, value in pairs:
            md.setdefault(name, []).append(value)
        return md

    def getall(self, name: str) -> list[str]:
        return self[name]


def reference(token: str, url: str, pairs: list[tuple[str, str]]) -> str:
    result: str = RequestValidator(token).compute_signature(url, MultiDict.from_pairs(pairs))
    return result


# Text that UTF-8 can encode (no lone surrogates): what a real form decodes to.
texts = st.text(st.characters(codec="utf-8"), max_size=30)
names = st.one_of(st.sampled_from(["Body", "From", "MediaUrl0", "a", "A", "b"]), texts)
pairs_strategy = st.lists(st.tuples(names, texts), max_size=12)
tokens = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
urls = st.builds(
    lambda scheme, host, port, path, query: (
        f"{scheme}://{host}{port}/{path}" + (f"?{query}" if query else "")
    ),
    st.sampled_from(["http", "https"]),
    st.sampled_from(["example.com", "a.b.example.org", "127.0.0.1", "[::1]"]),
    st.sampled_from(["", ":80", ":443", ":8443"]),
    st.text(string.ascii_letters + string.digits + "/-_.", max_size=20),
    st.text(string.ascii_letters + string.digits + "=&%", max_size=20),
)


def test_known_vector_matches_reference() -> None:
    assert compute_signature(TOKEN, URL, PARAMS) == reference(TOKEN, URL, PARAMS)


def test_twilio_documentation_example() -> None:
    # The worked example from Twilio's "Webhooks security" documentation.
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = [
        ("CallSid", "CA1234567890ABCDE"),
        ("Caller", "+12349013030"),
        ("Digits", "1234"),
        ("From", "+12349013030"),
        ("To", "+18005551212"),
    ]
    assert compute_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert verify_signature("12345", url, params, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")


def test_order_of_pairs_does_not_matter() -> None:
    assert compute_signature(TOKEN, URL, PARAMS) == compute_signature(
        TOKEN, URL, list(reversed(PARAMS))
    )


def test_repeated_names_contribute_every_distinct_value_sorted() -> None:
    pairs = [("b", "2"), ("a", "z"), ("b", "1"), ("b", "1")]
    expected = reference(TOKEN, URL, pairs)
    assert compute_signature(TOKEN, URL, pairs) == expected
    # ... which is the signature of URL + "az" + "b1" + "b2".
    assert compute_signature(TOKEN, URL + "azb1b2", []) == expected
    # A second distinct value changes the signature; a repeated identical pair does not.
    assert compute_signature(TOKEN, URL, [*pairs, ("b", "3")]) != expected
    assert compute_signature(TOKEN, URL, [*pairs, ("a", "z")]) == expected


@given(tokens, urls, pairs_strategy)
def test_compute_matches_reference(token: str, url: str, pairs: list[tuple[str, str]]) -> None:
    assert compute_signature(token, url, pairs) == reference(token, url, pairs)


@given(tokens, urls, pairs_strategy)
def test_reference_accepts_what_we_sign(token: str, url: str, pairs: list[tuple[str, str]]) -> None:
    signature = compute_signature(token, url, pairs)
    assert RequestValidator(token).validate(url, MultiDict.from_pairs(pairs), signature)


@given(tokens, urls, pairs_strategy)
def test_we_accept_what_reference_signs_and_validates(
    token: str, url: str, pairs: list[tuple[str, str]]
) -> None:
    signature = reference(token, url, pairs)
    assert verify_signature(token, url, pairs, signature)


@given(tokens, urls, pairs_strategy, st.binary(min_size=20, max_size=20))
def test_agrees_with_reference_on_arbitrary_signatures(
    token: str, url: str, pairs: list[tuple[str, str]], digest: bytes
) -> None:
    signature = base64.b64encode(digest).decode()
    ours = verify_signature(token, url, pairs, signature)
    theirs = RequestValidator(token).validate(url, MultiDict.from_pairs(pairs), signature)
    assert ours == theirs


def test_valid_signature_verifies() -> None:
    assert verify_signature(TOKEN, URL, PARAMS, compute_signature(TOKEN, URL, PARAMS))


@pytest.mark.parametrize(
    "tampered",
    [
        [(n, v + "x") if n == "Body" else (n, v) for n, v in PARAMS],
        [(n, v) for n, v in PARAMS if n != "Body"],
        [*PARAMS, ("MediaUrl0", "https://evil.example/x")],
        [("body" if n == "Body" else n, v) for n, v in PARAMS],
    ],
    ids=["changed-value", "removed-field", "added-field", "renamed-field"],
)
def test_tampered_params_fail(tampered: list[tuple[str, str]]) -> None:
    signature = compute_signature(TOKEN, URL, PARAMS)
    assert not verify_signature(TOKEN, URL, tampered, signature)


@pytest.mark.parametrize(
    "other_url",
    [
        "http://example.com/api/sms/webhook",
        "https://example.org/api/sms/webhook",
        "https://example.com/api/sms/webhook/",
        "https://example.com/api/sms/webhook?x=1",
        "https://example.com/API/sms/webhook",
    ],
)
def test_tampered_url_fails(other_url: str) -> None:
    signature = compute_signature(TOKEN, URL, PARAMS)
    assert not verify_signature(TOKEN, other_url, PARAMS, signature)


def test_wrong_or_empty_token_fails() -> None:
    signature = compute_signature(TOKEN, URL, PARAMS)
    assert not verify_signature(TOKEN[:-1] + "3", URL, PARAMS, signature)
    assert not verify_signature("", URL, PARAMS, compute_signature("", URL, PARAMS))


@pytest.mark.parametrize(
    ("signed_url", "request_url"),
    [
        ("https://example.com/hook", "https://example.com:443/hook"),
        ("https://example.com:443/hook", "https://example.com/hook"),
        ("http://example.com/hook?a=1", "http://example.com:80/hook?a=1"),
        ("http://example.com:80/hook", "http://example.com/hook"),
    ],
)
def test_default_port_variants_verify(signed_url: str, request_url: str) -> None:
    signature = compute_signature(TOKEN, signed_url, PARAMS)
    assert verify_signature(TOKEN, request_url, PARAMS, signature)


def test_any_port_may_be_dropped_like_twilios_validator() -> None:
    # Signed without a port, received on :8443. Twilio's library strips any
    # port before comparing, so it accepts this; we deliberately agree.
    signature = compute_signature(TOKEN, "https://example.com/hook", PARAMS)
    received = "https://example.com:8443/hook"
    assert RequestValidator(TOKEN).validate(received, MultiDict.from_pairs(PARAMS), signature)
    assert verify_signature(TOKEN, received, PARAMS, signature)
    # The reverse is not true: a port in the signed URL must be present.
    signed_with_port = compute_signature(TOKEN, received, PARAMS)
    assert not verify_signature(TOKEN, "https://example.com/hook", PARAMS, signed_with_port)


def test_port_is_not_added_from_the_wrong_scheme() -> None:
    signature = compute_signature(TOKEN, "https://example.com:80/hook", PARAMS)
    assert not verify_signature(TOKEN, "https://example.com/hook", PARAMS, signature)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://a.com/x?y=1", ("https://a.com/x?y=1", "https://a.com:443/x?y=1")),
        ("http://a.com/x", ("http://a.com/x", "http://a.com:80/x")),
        ("https://a.com:443/x", ("https://a.com:443/x", "https://a.com/x")),
        # Like twilio's validator, any port is removed, not only the default one.
        ("http://a.com:8080/p", ("http://a.com:8080/p", "http://a.com/p")),
        ("https://[::1]:8443/x", ("https://[::1]:8443/x", "https://[::1]/x")),
        ("https://[::1]/x", ("https://[::1]/x", "https://[::1]:443/x")),
        ("https://u:p@a.com/x", ("https://u:p@a.com/x", "https://u:p@a.com:443/x")),
        ("https://a.com:bad/x", ("https://a.com:bad/x",)),
        ("https://a.com:99999/x", ("https://a.com:99999/x",)),
        ("/relative", ("/relative",)),
        ("", ("",)),
    ],
)
def test_url_variants(url: str, expected: tuple[str, ...]) -> None:
    assert url_variants(url) == expected


@given(st.text(max_size=60))
def test_url_variants_never_raises_and_starts_with_input(url: str) -> None:
    variants = url_variants(url)
    assert variants[0] == url
    assert len(set(variants)) == len(variants)


GOOD = compute_signature(TOKEN, URL, PARAMS)


@pytest.mark.parametrize(
    "signature",
    [
        None,
        "",
        " ",
        GOOD + " ",
        " " + GOOD,
        GOOD[:-1],
        GOOD + "=",
        GOOD[:-2] + "é=",
        "é" * 28,
        "!" * 28,
        "A" * 28,  # right length, but does not decode to 20 bytes cleanly
        "=" * 28,
        GOOD.lower() if GOOD.lower() != GOOD else GOOD.upper(),
        "\x00" * 28,
        "A" * 10_000,
        GOOD * 400,
    ],
)
def test_malformed_signatures_fail(signature: str | None) -> None:
    assert not verify_signature(TOKEN, URL, PARAMS, signature)


@pytest.mark.parametrize("length", [0, 1, 20, 27, 28, 29, 40, 100, 10_000])
def test_signatures_of_any_length_fail_without_raising(length: int) -> None:
    assert not verify_signature(TOKEN, URL, PARAMS, "Q" * length)


@given(st.text(max_size=64))
def test_verify_never_raises_on_arbitrary_signatures(signature: str) -> None:
    assert verify_signature(TOKEN, URL, PARAMS, signature) == (signature == GOOD)


@given(
    st.text(max_size=20),
    st.text(max_size=40),
    st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=5),
)
def test_verify_never_raises_on_arbitrary_inputs(
    token: str, url: str, pairs: list[tuple[str, str]]
) -> None:
    # Lone surrogates cannot be UTF-8 encoded: verification must say no, not crash.
    assert verify_signature(token, url, pairs, GOOD) in (True, False)
    assert not verify_signature(token, url, [*pairs, ("x", "\ud800")], GOOD)


def test_non_canonical_base64_of_the_right_digest_is_rejected() -> None:
    # 20 bytes leave two spare bits in the last base64 character; flipping them
    # decodes to the same digest. Twilio's validator compares text, and so do we.
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    last = alphabet.index(GOOD[26])
    variant = GOOD[:26] + alphabet[last ^ 1] + "="
    assert base64.b64decode(variant) == base64.b64decode(GOOD)
    assert not verify_signature(TOKEN, URL, PARAMS, variant)


@pytest.mark.parametrize(
    ("base", "path", "query", "expected"),
    [
        ("https://sms.example.com", "/api/sms/webhook", "", "https://sms.example.com/api/sms/webhook"),
        ("https://sms.example.com/", "/api/sms/webhook", "", "https://sms.example.com/api/sms/webhook"),
        ("https://sms.example.com", "/api/sms/webhook", "a=1&b=%20", "https://sms.example.com/api/sms/webhook?a=1&b=%20"),
        ("https://example.com/enrich", "api/sms/webhook", "", "https://example.com/enrich/api/sms/webhook"),
        ("https://example.com:8443", "/h", "x", "https://example.com:8443/h?x"),
    ],
)  # fmt: skip
def test_public_url(base: str, path: str, query: str, expected: str) -> None:
    assert public_url(base, path, query) == expected


def test_behind_a_proxy_the_public_url_verifies_and_the_internal_one_does_not() -> None:
    twilio_signed = compute_signature(TOKEN, "https://sms.example.com/api/sms/webhook?v=2", PARAMS)
    url = public_url("https://sms.example.com", "/api/sms/webhook", "v=2")
    assert verify_signature(TOKEN, url, PARAMS, twilio_signed)
    internal = "http://127.0.0.1:3000/api/sms/webhook?v=2"
    assert not verify_signature(TOKEN, internal, PARAMS, twilio_signed)
