"""Media fetch policy: only our account's media, only allow-listed redirects, public IPs."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrich.media.policy import (
    DEFAULT_REDIRECT_HOSTS,
    MediaPolicy,
    MediaPolicyError,
    check_first_hop,
    check_redirect,
    check_resolved_address,
    credentials_allowed,
)

SID = "AC" + "0123456789abcdef" * 2
OTHER_SID = "AC" + "f" * 32
PATH = f"/2010-04-01/Accounts/{SID}/Messages/MM{'1' * 32}/Media/ME{'2' * 32}"
MEDIA = f"https://api.twilio.com{PATH}"
CDN = "https://media.twiliocdn.com/AC0/abc?Expires=1&Signature=a%2Fb"

URLISH = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(
        [
            "",
            "https://",
            "http://",
            "//",
            "/",
            "https://media.twiliocdn.com",
            "https://b.s3.amazonaws.com",
            "https://api.twilio.com",
        ]
    ),
    st.text(alphabet="abmtw.:/@%25eE\\?#[]-019 \t", max_size=40),
)
PROD = MediaPolicy.from_settings("https://api.twilio.com", SID)
LOCAL = MediaPolicy.from_settings("http://127.0.0.1:8080", SID, ["127.0.0.1:9000"])


def refused(fn: Callable[..., object], *args: object) -> str:
    with pytest.raises(MediaPolicyError) as info:
        fn(*args)
    assert isinstance(info.value, ValueError)
    assert info.value.reason == str(info.value)
    return info.value.reason


# -- from_settings (DESIGN.md §8.1) ----------------------------------------------------


@pytest.mark.parametrize(
    ("base", "local"),
    [
        ("https://api.twilio.com", False),
        ("https://API.Twilio.com./", False),
        ("https://api.twilio.com:443", False),
        ("http://api.twilio.test", True),  # an http base is local/test by definition
        ("http://127.0.0.1:8080", True),
        ("https://127.0.0.1:8443", True),
        ("https://127.8.9.10", True),
        ("https://localhost:3000", True),
        ("https://fake.localhost", True),
        ("http://[::1]:8080", True),
        ("https://[::ffff:127.0.0.1]", True),
        ("https://10.0.0.5", False),  # private is not loopback: no special powers
        ("https://localhost.example.com", False),
    ],
)
def test_from_settings_ties_http_and_private_to_a_local_base(base: str, local: bool) -> None:
    policy = MediaPolicy.from_settings(base, SID)
    assert policy.allow_http is local
    assert policy.allow_private_addresses is local
    assert policy.max_redirects == 3
    assert policy.redirect_hosts == DEFAULT_REDIRECT_HOSTS


def test_from_settings_normalises_base_and_hosts() -> None:
    policy = MediaPolicy.from_settings(
        " HTTPS://API.Twilio.COM.:443/ ", SID, ["Media.TwilioCDN.com.", " ", "CDN.example:8443"]
    )
    assert policy.api_base == "https://api.twilio.com"
    assert policy.redirect_hosts == frozenset({"media.twiliocdn.com", "cdn.example:8443"})


@pytest.mark.parametrize(
    "base",
    [
        "ftp://api.twilio.com",
        "api.twilio.com",
        "https://",
        "https://user:pw@api.twilio.com",
        "https://api.twilio.com/2010-04-01",
        "https://api.twilio.com?x=1",
        "https://api.twilio.com#frag",
        "https://api.twilio.com:0",
        "https://api.twilio.com:99999",
        "https://api twilio.com",
    ],
)
def test_from_settings_rejects_bad_bases(base: str) -> None:
    refused(MediaPolicy.from_settings, base, SID)


@pytest.mark.parametrize("sid", ["", "AC/../AC1", "AC 1", "AC%2f", "A" * 65])
def test_from_settings_rejects_bad_account_sids(sid: str) -> None:
    refused(MediaPolicy.from_settings, "https://api.twilio.com", sid)


@pytest.mark.parametrize(
    "entry",
    [
        "*.com",
        "*.10.0.0.1",
        "*.[::1]",
        "user@cdn.example",
        "cdn.example/path",
        "cdn example",
        "cdn.example:0",
        "cdn.example:http",
        "*.",
        "*",
        "a..b",
        "-bad.example",
        "cdn.example%2e",
    ],
)
def test_from_settings_rejects_bad_redirect_entries(entry: str) -> None:
    refused(MediaPolicy.from_settings, "https://api.twilio.com", SID, [entry])


def test_direct_construction_is_validated_too() -> None:
    refused(MediaPolicy, "https://api.twilio.com/x", SID, frozenset(), False, False)
    refused(MediaPolicy, "https://api.twilio.com", SID, frozenset(), False, False, -1)
    # Constructing directly may grant http explicitly; only from_settings derives it.
    explicit = MediaPolicy("http://media.test", SID, frozenset(), False, True)
    assert explicit.api_base == "http://media.test"


# -- first hop -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        (MEDIA, MEDIA),
        (MEDIA.replace("api.twilio.com", "API.TWILIO.COM"), MEDIA),
        (MEDIA.replace("api.twilio.com", "api.twilio.com."), MEDIA),
        (MEDIA.replace("api.twilio.com", "api.twilio.com:443"), MEDIA),
        (MEDIA.replace("https", "HTTPS"), MEDIA),
        (MEDIA + ".json", MEDIA + ".json"),
        (MEDIA + "?Foo=bar", MEDIA + "?Foo=bar"),
        (
            f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages/MM1",
            f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages/MM1",
        ),
    ],
)
def test_first_hop_accepts_our_media(url: str, normalised: str) -> None:
    assert check_first_hop(PROD, url) == normalised


@pytest.mark.parametrize(
    "url",
    [
        MEDIA.replace("https://", "http://"),  # no downgrade in production
        MEDIA.replace("api.twilio.com", "api.twilio.com:8443"),
        MEDIA.replace("api.twilio.com", "api.twilio.com:80"),
        MEDIA.replace("api.twilio.com", "api.twilio.com.evil.com"),
        MEDIA.replace("api.twilio.com", "evil.com"),
        MEDIA.replace("api.twilio.com", "media.twiliocdn.com"),  # redirect host, not origin
        MEDIA.replace("api.twilio.com", "api.twilio.com@evil.com"),
        MEDIA.replace("api.twilio.com", "evil.com@api.twilio.com"),
        MEDIA.replace("api.twilio.com", "user:pass@api.twilio.com"),
        MEDIA.replace("api.twilio.com", "api.twilio.com\\@evil.com"),
        MEDIA.replace("api.twilio.com", "evil.com\\.api.twilio.com"),
        MEDIA.replace("api.twilio.com", "api%2etwilio.com"),
        MEDIA.replace("api.twilio.com", "[::1]"),
        MEDIA.replace("api.twilio.com", "2130706433"),
        MEDIA.replace("api.twilio.com", "0x7f.1"),
        MEDIA.replace("api.twilio.com", "api.twilio.com:"),
        MEDIA.replace(SID, OTHER_SID),  # another account's media
        MEDIA.replace(SID, SID.lower()),
        MEDIA.replace("/Messages/", "/Calls/"),
        MEDIA.replace("/Accounts/", "/accounts/"),
        MEDIA.replace("2010-04-01", "2008-08-01"),
        MEDIA + "#frag",
        MEDIA + "/../../../../" + OTHER_SID + "/Messages/MM1",
        MEDIA.replace("/Media/", "/./Media/"),
        MEDIA.replace("/Media/", "//Media/"),
        MEDIA.replace("/Media/", "/%2e%2e/Media/"),
        MEDIA.replace("/Media/", "/%2E%2E/Media/"),
        MEDIA.replace("/Media/", "/..%2fMedia/"),
        MEDIA.replace("/Media/", "/%2fMedia/"),
        MEDIA.replace("/Media/", "/Me%64ia/"),
        MEDIA.replace("/Media/", "/Media;x=1/"),
        MEDIA.replace("/Media/", "\\Media/"),
        MEDIA.replace("/Media/", "/Me dia/"),
        MEDIA.replace("/Media/", "/Media\n/"),
        MEDIA.replace("/Media/", "/Médià/"),
        f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages/",
        f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages",
        f"https://api.twilio.com/2010-04-01/Accounts/{SID}",
        "https://api.twilio.com/",
        "//api.twilio.com" + PATH,
        PATH,
        "javascript:alert(1)",
        "file:///etc/passwd",
        " " + MEDIA,
        "",
    ],
)
def test_first_hop_refuses(url: str) -> None:
    refused(check_first_hop, PROD, url)


def test_first_hop_local_mode() -> None:
    url = f"http://127.0.0.1:8080{PATH}"
    assert check_first_hop(LOCAL, url) == url
    assert check_first_hop(LOCAL, f"http://127.0.0.1:8080/{PATH[1:]}") == url
    refused(check_first_hop, LOCAL, f"http://127.0.0.1:8081{PATH}")
    refused(check_first_hop, LOCAL, f"http://localhost:8080{PATH}")  # a different origin
    refused(check_first_hop, LOCAL, f"https://127.0.0.1:8080{PATH}")  # scheme is origin too
    refused(check_first_hop, LOCAL, MEDIA)


def test_first_hop_ipv6_base() -> None:
    policy = MediaPolicy.from_settings("http://[::1]:8080", SID)
    assert check_first_hop(policy, f"http://[0:0::1]:8080{PATH}") == f"http://[::1]:8080{PATH}"
    refused(check_first_hop, policy, f"http://[::1%25lo]:8080{PATH}")
    refused(check_first_hop, policy, f"http://[::1:8080{PATH}")
    refused(check_first_hop, policy, f"http://[::1]x:8080{PATH}")
    refused(check_first_hop, policy, f"http://[not-ip]:8080{PATH}")


# -- redirects -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "followed"),
    [
        (CDN, CDN),
        ("https://mms.twiliocdn.com/x", "https://mms.twiliocdn.com/x"),
        (
            "https://s3-external-1.amazonaws.com/media.twiliocdn.com/AC/abc",
            "https://s3-external-1.amazonaws.com/media.twiliocdn.com/AC/abc",
        ),
        (
            "https://bucket-1.s3.amazonaws.com/key?X-Amz-Credential=a%2Fb",
            "https://bucket-1.s3.amazonaws.com/key?X-Amz-Credential=a%2Fb",
        ),
        ("HTTPS://MEDIA.TWILIOCDN.COM./X", "https://media.twiliocdn.com/X"),
        ("https://media.twiliocdn.com:443/x", "https://media.twiliocdn.com/x"),
        ("https://media.twiliocdn.com/x#frag", "https://media.twiliocdn.com/x"),
        ("  https://media.twiliocdn.com/x ", "https://media.twiliocdn.com/x"),
        # Relative Locations resolve against the current URL (on the API origin).
        ("/2010-04-01/Accounts/x/Media/y", "https://api.twilio.com/2010-04-01/Accounts/x/Media/y"),
        ("other", MEDIA.rsplit("/", 1)[0] + "/other"),
        ("../../ME9", MEDIA.rsplit("/", 3)[0] + "/ME9"),
        ("?redirected=1", MEDIA + "?redirected=1"),
        ("//media.twiliocdn.com/x", "https://media.twiliocdn.com/x"),
    ],
)
def test_redirect_allowed(location: str, followed: str) -> None:
    assert check_redirect(PROD, MEDIA, location, 0) == followed


@pytest.mark.parametrize(
    "location",
    [
        "",
        "   ",
        "https://evil.com/x",
        "//evil.com/x",
        "https://media.twiliocdn.com.evil.com/x",
        "https://evilmedia.twiliocdn.com/x",
        "https://twiliocdn.com/x",
        "http://media.twiliocdn.com/x",  # downgrade
        "https://media.twiliocdn.com:8443/x",  # host entry without port: default port only
        "https://media.twiliocdn.com:80/x",
        "https://s3.amazonaws.com/bucket/x",  # wildcard needs exactly one label...
        "https://a.b.s3.amazonaws.com/x",  # ... not two
        "https://-bad.s3.amazonaws.com/x",
        "https://evil.com@media.twiliocdn.com/x",
        "https://media.twiliocdn.com@evil.com/x",
        "https://media.twiliocdn.com\\@evil.com/x",
        "/\\evil.com/x",
        "https:\\\\evil.com/x",
        "https://media.twiliocdn.com%2f@evil.com/x",
        "https://media%2etwiliocdn.com/x",
        "https://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1/x",
        "https://[::1]/x",
        "https://0x7f000001/x",
        "https://media.twiliocdn.com/a/../b",  # absolute Location with dot segments
        "https://media.twiliocdn.com/a/%2e%2e/b",
        "https://media.twiliocdn.com/a%2F..%2Fb",
        "https://media.twiliocdn.com/a%5cb",
        "https://media.twiliocdn.com/a%00",
        "https://media.twiliocdn.com/a\r\nX-Injected: 1",
        "file:///etc/passwd",
        "gopher://media.twiliocdn.com/x",
        "data:text/plain,hi",
        "x://[",  # urllib itself chokes on this one: still only a policy error
        "https://[::1",
    ],
)
def test_redirect_refused(location: str) -> None:
    refused(check_redirect, PROD, MEDIA, location, 0)


def test_redirect_hop_limit() -> None:
    assert check_redirect(PROD, MEDIA, CDN, 2) == CDN
    assert "too many redirects" in refused(check_redirect, PROD, MEDIA, CDN, 3)
    strict = MediaPolicy(PROD.api_base, SID, PROD.redirect_hosts, False, False, max_redirects=0)
    refused(check_redirect, strict, MEDIA, CDN, 0)


def test_redirect_from_cdn_back_to_api_origin() -> None:
    assert check_redirect(PROD, CDN, MEDIA, 1) == MEDIA
    # The API origin is always a valid target, even when not listed as a redirect host.
    custom = MediaPolicy.from_settings("https://api.twilio.com", SID, ["cdn.example"])
    assert check_redirect(custom, "https://cdn.example/x", MEDIA, 1) == MEDIA
    refused(check_redirect, custom, MEDIA, CDN, 0)  # defaults replaced, not extended


def test_redirect_refuses_a_bad_current_url() -> None:
    refused(check_redirect, PROD, "http://api.twilio.com/x", CDN, 0)
    refused(check_redirect, PROD, "not a url", CDN, 0)


@pytest.mark.parametrize(
    ("entry", "location", "allowed"),
    [
        ("cdn.example:9000", "https://cdn.example:9000/x", True),
        ("cdn.example:9000", "https://cdn.example/x", False),
        ("cdn.example:443", "https://cdn.example/x", True),
        ("cdn.example", "https://CDN.example./x", True),
        ("*.cdn.example", "https://eu.cdn.example/x", True),
        ("*.cdn.example", "https://cdn.example/x", False),
        ("*.cdn.example", "https://a.b.cdn.example/x", False),
        ("*.cdn.example", "https://eu.cdn.example:8443/x", False),
        ("*.cdn.example:8443", "https://eu.cdn.example:8443/x", True),
        ("[::1]:9000", "https://[::1]:9000/x", True),
        ("[2001:db8::1]", "https://[2001:db8:0::1]/x", True),
        ("10.0.0.1", "https://10.0.0.1/x", True),  # listed explicitly: the address check
    ],
)
def test_redirect_host_entries(entry: str, location: str, allowed: bool) -> None:
    policy = MediaPolicy.from_settings("https://api.twilio.com", SID, [entry])
    if allowed:
        check_redirect(policy, MEDIA, location, 0)
    else:
        refused(check_redirect, policy, MEDIA, location, 0)


def test_local_redirects_may_use_http_and_listed_ports() -> None:
    first = f"http://127.0.0.1:8080{PATH}"
    assert check_redirect(LOCAL, first, "http://127.0.0.1:9000/cdn/x", 0) == (
        "http://127.0.0.1:9000/cdn/x"
    )
    assert check_redirect(LOCAL, first, "/cdn/x", 0) == "http://127.0.0.1:8080/cdn/x"
    refused(check_redirect, LOCAL, first, "http://127.0.0.1:9001/cdn/x", 0)
    refused(check_redirect, LOCAL, first, "http://localhost:9000/cdn/x", 0)


# -- credentials -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        (MEDIA, True),
        ("https://API.twilio.com.:443/anything", True),
        ("https://api.twilio.com/2010-04-01/Accounts/other", True),  # same origin
        ("http://api.twilio.com/x", False),
        ("https://api.twilio.com:8443/x", False),
        ("https://media.twiliocdn.com/x", False),
        ("https://bucket.s3.amazonaws.com/x", False),
        ("https://api.twilio.com.evil.com/x", False),
        ("https://api.twilio.com@evil.com/x", False),
        ("https://evil.com/api.twilio.com", False),
        ("https://api.twilio.com\\@evil.com/", False),
        ("not a url", False),
        ("", False),
    ],
)
def test_credentials_only_for_the_api_origin(url: str, allowed: bool) -> None:
    assert credentials_allowed(PROD, url) is allowed


def test_credentials_local_mode() -> None:
    assert credentials_allowed(LOCAL, "http://127.0.0.1:8080/x")
    assert not credentials_allowed(LOCAL, "http://127.0.0.1:9000/x")
    assert not credentials_allowed(LOCAL, "http://localhost:8080/x")


@given(st.one_of(st.text(max_size=80), URLISH))
def test_credentials_allowed_never_raises(url: str) -> None:
    assert credentials_allowed(PROD, url) in (True, False)


@given(st.one_of(st.text(max_size=80), URLISH), st.integers(min_value=0, max_value=5))
def test_check_redirect_only_raises_policy_errors(location: str, hops: int) -> None:
    try:
        result = check_redirect(PROD, MEDIA, location, hops)
    except MediaPolicyError:
        return
    parts = urlsplit(result)
    assert parts.scheme == "https"
    assert parts.username is None and parts.port is None
    host = parts.hostname or ""
    assert host in DEFAULT_REDIRECT_HOSTS or (
        host.endswith(".s3.amazonaws.com") and host.count(".") == 3
    )


# -- resolved addresses ----------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    ["8.8.8.8", "52.216.0.1", "2001:4860:4860::8888", "2606:4700::1111", "::ffff:8.8.8.8"],
)
def test_public_addresses_pass(ip: str) -> None:
    check_resolved_address(PROD, ip)


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "127.8.8.8",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space (CGNAT)
        "0.0.0.0",  # noqa: S104 - an address to refuse, not one to bind
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "2002:7f00:1::1",  # 6to4 wrapping 127.0.0.1
        "2002:a00:1::1",  # 6to4 wrapping 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 wrapping 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 wrapping 169.254.169.254
        "2001:db8::1",
    ],
)
def test_non_public_addresses_are_refused(ip: str) -> None:
    refused(check_resolved_address, PROD, ip)
    check_resolved_address(LOCAL, ip)  # local mode talks to the fake on loopback


@pytest.mark.parametrize("ip", ["", "localhost", "256.1.1.1", "1.2.3", "::g", "8.8.8.8 "])
def test_garbage_addresses_are_refused_even_locally(ip: str) -> None:
    refused(check_resolved_address, PROD, ip)
    refused(check_resolved_address, LOCAL, ip)
