"""SSRF-safe media fetch policy, as pure functions over plain data.

A MediaUrl arrives in a webhook form, so it is attacker-influenced until proven
otherwise (a forged or replayed webhook, a misconfigured proxy). The fetcher (the
trio/httpx shell) therefore asks this module before every step:

1. :func:`check_first_hop`: the URL must be *our* account's media on the configured
   Twilio API origin (``TWILIO_API_BASE_URL``, DESIGN.md §8.1). Only that origin ever
   gets HTTP Basic credentials (:func:`credentials_allowed`).
2. :func:`check_redirect`: Twilio answers with 301/302/307 to signed CDN URLs; each
   Location is resolved against the current URL and must land on an allow-listed host
   (or back on the API origin), within ``max_redirects`` hops.
3. :func:`check_resolved_address`: after DNS resolution and before connecting, the
   address must be public, so an allow-listed name that resolves (or is rebound) to
   an internal address is still refused. The shell must connect to the address it
   checked, not resolve again.

Every check returns the *normalised* URL (lower-case scheme and host, no trailing dot,
no default port, no fragment); the shell must fetch exactly that string, so what is
fetched is what was checked.

URL parsing is deliberately stricter than RFC 3986: parsers disagree about backslashes,
whitespace, ``@`` in odd places and percent-encoded hosts, and each disagreement is a
classic allow-list bypass. A Twilio media URL needs none of those, so they are refused
rather than interpreted.

Redirect host entries (``MEDIA_REDIRECT_HOSTS``):

- ``host`` matches that host exactly, on the scheme's default port only;
- ``host:port`` (``[v6]:port`` for IPv6) matches that host on that port only;
- ``*.suffix`` matches exactly ONE extra DNS label in front of ``suffix``
  (``*.s3.amazonaws.com`` matches ``bucket.s3.amazonaws.com`` but neither
  ``s3.amazonaws.com`` nor ``a.b.s3.amazonaws.com``); the suffix must have at least two
  labels and cannot be an IP address. One label is enough for S3's virtual-host buckets
  Twilio uses and keeps a wildcard from swallowing a whole zone.

The API origin itself is always an acceptable redirect target (Twilio can redirect
within itself, and the fake Twilio used in local mode redirects to its own CDN path).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urljoin

__all__ = [
    "DEFAULT_REDIRECT_HOSTS",
    "MediaPolicy",
    "MediaPolicyError",
    "check_first_hop",
    "check_redirect",
    "check_resolved_address",
    "credentials_allowed",
]

DEFAULT_REDIRECT_HOSTS: Final = frozenset(
    {
        "media.twiliocdn.com",
        "mms.twiliocdn.com",
        "s3-external-1.amazonaws.com",
        "api.twilio.com",
        "*.s3.amazonaws.com",
    }
)

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_API_VERSION_PREFIX: Final = "/2010-04-01/Accounts/"

# RFC 3986 unreserved + reserved + "%": anything else (space, backslash, control
# characters, quotes, non-ASCII...) is refused before any parsing happens.
_URL_CHARS: Final = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_URL_SHAPE: Final = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<authority>[^/?#]*)"
    r"(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?",
    re.DOTALL,
)
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL: Final = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_ACCOUNT_SID: Final = re.compile(r"[A-Za-z0-9]{1,64}")
# A path segment below .../Messages/: Twilio SIDs and an optional extension.
_SAFE_SEGMENT: Final = re.compile(r"[A-Za-z0-9_\-.~]+")
# Encoded ".", "/", "\\" and NUL: a server that decodes before routing would see a
# different path than the one checked.
_ENCODED_TRAVERSAL: Final = re.compile(r"%(?:2e|2f|5c|00)", re.IGNORECASE)


class MediaPolicyError(ValueError):
    """A URL, redirect or address the media policy refuses; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Url:
    scheme: str
    host: str  # lower case, no trailing dot; IPv6 without brackets
    port: int  # explicit or the scheme's default
    path: str
    query: str | None
    has_fragment: bool

    @property
    def host_for_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    def render(self) -> str:
        netloc = self.host_for_url
        if self.port != _DEFAULT_PORTS[self.scheme]:
            netloc = f"{netloc}:{self.port}"
        query = "" if self.query is None else f"?{self.query}"
        return f"{self.scheme}://{netloc}{self.path or '/'}{query}"


@dataclass(frozen=True, slots=True)
class _HostRule:
    host: str  # exact host, or the suffix after "*." for wildcards
    port: int | None  # None: the scheme's default port only
    wildcard: bool

    def matches(self, url: _Url) -> bool:
        expected_port = _DEFAULT_PORTS[url.scheme] if self.port is None else self.port
        if url.port != expected_port:
            return False
        if not self.wildcard:
            return url.host == self.host
        head, dot, rest = url.host.partition(".")
        return bool(dot) and rest == self.host and _LABEL.fullmatch(head) is not None


@dataclass(frozen=True, slots=True)
class MediaPolicy:
    """Where media may be fetched from. Build it with :meth:`from_settings`.

    Direct construction is allowed (tests, special deployments) and is normalised and
    validated the same way, but only :meth:`from_settings` applies the DESIGN.md §8.1
    rule that ties ``allow_http``/``allow_private_addresses`` to a local API base.
    """

    api_base: str
    account_sid: str
    redirect_hosts: frozenset[str]
    allow_private_addresses: bool
    allow_http: bool
    max_redirects: int = 3
    _base: _Url = field(init=False, repr=False, compare=False)
    _rules: tuple[_HostRule, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        base = _parse_api_base(self.api_base, allow_http=self.allow_http)
        if _ACCOUNT_SID.fullmatch(self.account_sid) is None:
            raise MediaPolicyError("account_sid must be 1-64 ASCII letters or digits")
        if self.max_redirects < 0:
            raise MediaPolicyError("max_redirects must be >= 0")
        rules = tuple(_parse_host_rule(entry) for entry in sorted(self.redirect_hosts))
        # Frozen dataclass: normalise in place once, so every check sees one spelling.
        object.__setattr__(self, "api_base", base.render().rstrip("/"))
        object.__setattr__(self, "redirect_hosts", frozenset(_render_rule(rule) for rule in rules))
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_rules", rules)

    @classmethod
    def from_settings(
        cls,
        api_base: str,
        account_sid: str,
        redirect_hosts: Iterable[str] | None = None,
    ) -> MediaPolicy:
        """The policy for ``TWILIO_API_BASE_URL`` / ``MEDIA_REDIRECT_HOSTS`` (§8.1).

        An http scheme and private addresses are allowed only when the API base itself
        is http or a loopback host (tests, local mode, ``enrich send --media``): a
        production https base can never be talked into plain http or internal
        addresses by a redirect. ``redirect_hosts=None`` means
        :data:`DEFAULT_REDIRECT_HOSTS`; blank entries are ignored.
        """
        base = _parse_api_base(api_base, allow_http=True)
        local = base.scheme == "http" or _is_loopback_host(base.host)
        hosts = DEFAULT_REDIRECT_HOSTS if redirect_hosts is None else redirect_hosts
        return cls(
            api_base=api_base,
            account_sid=account_sid,
            redirect_hosts=frozenset(h.strip() for h in hosts if h.strip()),
            allow_private_addresses=local,
            allow_http=local,
        )


def check_first_hop(policy: MediaPolicy, url: str) -> str:
    """Validate a webhook MediaUrl; return the normalised URL to fetch.

    Requires the API origin, no userinfo, no fragment, and a path strictly below
    ``/2010-04-01/Accounts/{account_sid}/Messages/`` made of plain segments (no
    percent-encoding at all, no ``.``/``..``, no empty segments).
    """
    parsed = _parse_url(url, allow_http=policy.allow_http)
    if parsed.has_fragment:
        raise MediaPolicyError("media URL must not have a fragment")
    if parsed.origin != policy._base.origin:
        raise MediaPolicyError("media URL is not on the Twilio API origin")
    if "%" in parsed.path:
        raise MediaPolicyError("media URL path must not be percent-encoded")
    prefix = f"{_API_VERSION_PREFIX}{policy.account_sid}/Messages/"
    if not parsed.path.startswith(prefix):
        raise MediaPolicyError("media URL is not under this account's Messages")
    rest = parsed.path[len(prefix) :]
    segments = rest.split("/")
    if not rest or any(
        seg in ("", ".", "..") or _SAFE_SEGMENT.fullmatch(seg) is None for seg in segments
    ):
        raise MediaPolicyError("media URL path has unsafe segments")
    return parsed.render()


def check_redirect(policy: MediaPolicy, current_url: str, location: str, hops_so_far: int) -> str:
    """Validate a redirect's Location; return the normalised absolute URL to follow.

    ``hops_so_far`` is the number of redirects already followed in this fetch; the
    redirect being checked would be hop ``hops_so_far + 1``. A relative Location is
    resolved against ``current_url`` (RFC 3986, dot segments removed). The fragment of
    a Location is dropped: it is never sent to a server.
    """
    if hops_so_far >= policy.max_redirects:
        raise MediaPolicyError(f"too many redirects (limit {policy.max_redirects})")
    location = location.strip(" \t")
    if not location:
        raise MediaPolicyError("redirect without a Location")
    if _URL_CHARS.fullmatch(location) is None:
        raise MediaPolicyError("redirect Location has forbidden characters")
    current = _parse_url(current_url, allow_http=policy.allow_http)
    try:
        joined = urljoin(current.render(), location)
    except ValueError:  # e.g. an unbalanced "[" in what urllib takes for an IPv6 host
        raise MediaPolicyError("redirect Location is not a URL") from None
    target = _parse_url(joined, allow_http=policy.allow_http)
    if _ENCODED_TRAVERSAL.search(target.path):
        raise MediaPolicyError("redirect path has percent-encoded dots or slashes")
    if any(seg in (".", "..") for seg in target.path.split("/")):
        # urljoin removes dot segments from relative references only; an absolute
        # Location keeps them, and servers disagree about resolving them.
        raise MediaPolicyError("redirect path has dot segments")
    if target.origin != policy._base.origin and not any(
        rule.matches(target) for rule in policy._rules
    ):
        raise MediaPolicyError("redirect target host is not allowed")
    return _Url(target.scheme, target.host, target.port, target.path, target.query, False).render()


def credentials_allowed(policy: MediaPolicy, url: str) -> bool:
    """True only when ``url`` is on the API origin (scheme, host and port all equal).

    Never raises: an unparsable URL simply gets no credentials.
    """
    try:
        parsed = _parse_url(url, allow_http=policy.allow_http)
    except MediaPolicyError:
        return False
    return parsed.origin == policy._base.origin


def check_resolved_address(policy: MediaPolicy, ip: str) -> None:
    """Refuse a resolved address that is not public (unless private ones are allowed).

    Refused: private, loopback, link-local, multicast, reserved, unspecified,
    shared (CGNAT) and every other non-global range, including those ranges embedded
    in IPv6 (IPv4-mapped, 6to4, Teredo, NAT64). IPv6 zone ids (``fe80::1%eth0``) are
    refused outright. Garbage raises too.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise MediaPolicyError("resolved address is not an IP address") from None
    if policy.allow_private_addresses:
        return
    for candidate in _embedded_addresses(address):
        if not _is_public(candidate):
            raise MediaPolicyError("resolved address is not public")


# -- helpers -------------------------------------------------------------------------


def _embedded_addresses(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The address plus any IPv4 address an IPv6 transition mechanism would reach."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is only another spelling of an IPv4 address (dual-stack sockets):
        # judge the IPv4 address (the mapped range itself is not "global").
        return [address.ipv4_mapped]
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            found.append(ipaddress.IPv6Address("fe80::"))  # force a refusal
        if address.sixtofour is not None:
            found.append(address.sixtofour)
        if address.teredo is not None:
            found.extend(address.teredo)
        if address in _NAT64:
            found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _is_loopback_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _parse_api_base(api_base: str, *, allow_http: bool) -> _Url:
    base = _parse_url(api_base.strip(), allow_http=allow_http)
    if base.path not in ("", "/") or base.query is not None or base.has_fragment:
        raise MediaPolicyError("api_base must be an origin (scheme://host[:port])")
    return base


def _parse_url(url: str, *, allow_http: bool) -> _Url:
    if _URL_CHARS.fullmatch(url) is None:
        raise MediaPolicyError("URL has forbidden characters")
    match = _URL_SHAPE.fullmatch(url)
    if match is None:
        raise MediaPolicyError("URL is not absolute")
    scheme = match["scheme"].lower()
    if scheme not in _DEFAULT_PORTS or (scheme == "http" and not allow_http):
        raise MediaPolicyError(f"URL scheme {scheme!r} is not allowed")
    authority = match["authority"]
    if "@" in authority:
        raise MediaPolicyError("URL must not carry userinfo")
    host, port = _parse_authority(authority)
    return _Url(
        scheme=scheme,
        host=host,
        port=_DEFAULT_PORTS[scheme] if port is None else port,
        path=match["path"],
        query=match["query"],
        has_fragment=match["fragment"] is not None,
    )


def _parse_authority(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` -> normalised host and the explicit port (None when absent)."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise MediaPolicyError("unterminated IPv6 literal")
        raw_host, rest = authority[1:end], authority[end + 1 :]
        if "%" in raw_host:
            raise MediaPolicyError("IPv6 zone identifiers are not allowed")
        try:
            host = str(ipaddress.IPv6Address(raw_host))
        except ValueError:
            raise MediaPolicyError("invalid IPv6 literal") from None
        if rest and not rest.startswith(":"):
            raise MediaPolicyError("garbage after IPv6 literal")
        port_text = rest[1:] if rest else None
    else:
        raw_host, colon, port_text_raw = authority.partition(":")
        port_text = port_text_raw if colon else None
        host = _normalise_host(raw_host)
    if port_text is None:
        return host, None
    if not port_text.isdigit() or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise MediaPolicyError("invalid port")
    return host, int(port_text)


def _normalise_host(raw: str) -> str:
    host = raw.lower()
    if host.endswith("."):
        host = host[:-1]  # "api.twilio.com." is the same name, fully qualified
    if not host:
        raise MediaPolicyError("URL has no host")
    labels = host.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # WHATWG parsers read a numeric last label as IPv4 ("2130706433", "0x7f.1",
        # "127.1"): accept only canonical dotted quads so every parser agrees.
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise MediaPolicyError("ambiguous numeric host") from None
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise MediaPolicyError("invalid host name")
    return host


def _parse_host_rule(entry: str) -> _HostRule:
    text = entry.strip()
    wildcard = text.startswith("*.")
    if wildcard:
        text = text[2:]
    if not text or _URL_CHARS.fullmatch(text) is None or any(c in text for c in "@/?#%"):
        raise MediaPolicyError(f"invalid redirect host entry {entry!r}")
    host, port = _parse_authority(text)
    if wildcard and (_is_ip(host) or host.count(".") < 1):
        raise MediaPolicyError(f"wildcard redirect host entry too broad: {entry!r}")
    return _HostRule(host=host, port=port, wildcard=wildcard)


def _render_rule(rule: _HostRule) -> str:
    host = f"[{rule.host}]" if ":" in rule.host else rule.host
    if rule.wildcard:
        host = f"*.{host}"
    return host if rule.port is None else f"{host}:{rule.port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
