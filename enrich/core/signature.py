"""Twilio request signatures (``X-Twilio-Signature``), computed and verified.

Twilio signs every webhook with ``base64(HMAC-SHA1(auth_token, url + params))``
where *params* is every form field as ``name + value``, sorted by name. We
mirror :class:`twilio.request_validator.RequestValidator` exactly, including two
details that are easy to get wrong:

* a repeated name contributes each of its *distinct* values, sorted (the
  library does ``sorted(set(values))``, so a duplicated ``(name, value)`` pair
  counts once);
* Twilio's back end is inconsistent about default ports, so the library accepts
  the URL both with the default port added and with any port removed.

Verification never raises: a webhook handler turns ``False`` into a 403, and a
malformed header must not become a 500 (which would send Twilio to the fallback
URL and retry). The comparison is constant time over the base64 text, exactly
the representation Twilio sends, so non-canonical base64 spellings of the right
digest are rejected just as the reference library rejects them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from urllib.parse import SplitResult, urlsplit

__all__ = [
    "SIGNATURE_HEADER",
    "compute_signature",
    "public_url",
    "url_variants",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Twilio-Signature"

# base64 of a 20-byte SHA-1 digest is always 28 characters ("...=" padded).
# Anything else cannot match, so it is rejected before any HMAC work, which also
# bounds the cost of an attacker sending a 10 kB header.
_SIGNATURE_LENGTH = 28

_DEFAULT_PORTS = {"https": 443, "http": 80}


def _signed_params(params: Sequence[tuple[str, str]]) -> bytes:
    """What Twilio appends to the URL before HMAC: the sorted name+value pairs."""
    # Sorting the (name, value) pairs orders by name, then by value; the set drops a
    # repeated pair. That is the library's per-name sorted(set(values)), in one sort.
    # Lone surrogates raise UnicodeEncodeError (a ValueError) here, as they do in
    # the reference library: no real Twilio request can contain them.
    pairs = {(name, value) for name, value in params}  # any two-item pairs, not only tuples
    return "".join([name + value for name, value in sorted(pairs)]).encode("utf-8")


def _digest_b64(auth_token: str, url: str, signed_params: bytes) -> str:
    # hmac.digest is the one-shot C path: several times cheaper than hmac.new().
    mac = hmac.digest(auth_token.encode("utf-8"), url.encode("utf-8") + signed_params, "sha1")
    return base64.b64encode(mac).decode("ascii")


def compute_signature(auth_token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """Return the ``X-Twilio-Signature`` value Twilio would send for this request.

    *params* are the POSTed form fields in any order; repeated names are allowed.
    Used by verification, by the test fakes and by ``enrich send`` to sign the
    requests they make to our own webhook.
    """
    return _digest_b64(auth_token, url, _signed_params(params))


def _with_netloc(parts: SplitResult, netloc: str) -> str:
    return parts._replace(netloc=netloc).geturl()


def url_variants(url: str) -> tuple[str, ...]:
    """The URLs a valid signature may have been computed over, without duplicates.

    The URL as given first, then (like the twilio library) the URL with the
    scheme's default port added when it has no port, and the URL with its port
    removed when it has one. The library removes *any* port, not only the
    default one; we follow it so that we accept exactly what it accepts.
    Unlike the library we keep any ``user@`` part and IPv6 brackets intact when
    removing a port. A URL whose port cannot be parsed yields only itself.
    """
    variants = [url]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return (url,)
    netloc = parts.netloc
    if port is not None:
        # The port is the last ":"-separated piece; IPv6 brackets and "user:pw@" stay.
        variants.append(_with_netloc(parts, netloc.rpartition(":")[0]))
        variants.append(parts.geturl())
    elif netloc:
        default = _DEFAULT_PORTS.get(parts.scheme, 80)
        # "host:" (empty port) becomes "host:443", not "host::443".
        base = netloc[:-1] if netloc.endswith(":") else netloc
        variants.append(_with_netloc(parts, f"{base}:{default}"))
        variants.append(parts.geturl())
    return tuple(dict.fromkeys(variants))


def _looks_like_signature(signature: str) -> bool:
    """Cheap structural check: 28 ASCII base64 characters decoding to 20 bytes."""
    if len(signature) != _SIGNATURE_LENGTH or not signature.isascii():
        return False
    try:
        return len(binascii.a2b_base64(signature.encode("ascii"), strict_mode=True)) == 20
    except binascii.Error:
        return False


def verify_signature(
    auth_token: str,
    url: str,
    params: Sequence[tuple[str, str]],
    signature: str | None,
) -> bool:
    """True if *signature* is Twilio's signature of *url* (or a port variant) and *params*.

    Never raises: missing, empty, non-ASCII, wrong-length, non-base64 or huge
    signatures, an empty token and unencodable data all simply return False.
    A match of the URL as given returns at once; otherwise every port variant is
    checked (no early exit), each with :func:`hmac.compare_digest`, so a rejection's
    timing does not depend on where a guess first differs.
    """
    if not isinstance(signature, str) or not auth_token or not _looks_like_signature(signature):
        return False
    given = signature.encode("ascii")
    try:
        signed_params = _signed_params(params)  # the same for every URL variant

        def matches(candidate: str) -> bool:
            expected = _digest_b64(auth_token, candidate, signed_params).encode("ascii")
            return hmac.compare_digest(expected, given)

        # The URL as given is what Twilio signs in the normal case: a match there is
        # final (a success is visible to the sender anyway, so returning early tells
        # nothing). On a mismatch every port variant is checked, none skipped, so a
        # rejection takes the same time wherever a guess differs.
        if matches(url):
            return True
        matched = False
        for candidate in url_variants(url)[1:]:
            matched |= matches(candidate)
    except (UnicodeError, TypeError):
        return False
    return matched


def public_url(public_base: str, path: str, query: str) -> str:
    """The URL Twilio called (and signed) when a TLS-terminating proxy sits in front.

    Behind a proxy the request we see says ``http://127.0.0.1:3000/...`` while
    Twilio signed ``https://example.com/...``; ``PUBLIC_URL`` names the latter.
    *public_base* is ``scheme://host[:port][/prefix]`` (a trailing slash is
    ignored), *path* the request path, *query* the raw query string exactly as
    received (Twilio signs it verbatim, so it is not re-encoded).
    """
    base = public_base.rstrip("/")
    if not path.startswith("/"):
        path = "/" + path
    return f"{base}{path}?{query}" if query else f"{base}{path}"
