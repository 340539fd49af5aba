"""Phone-number verification and API authentication, free of I/O.

Everything here is a pure function over plain data; ``enrich.phone_store`` runs the
decisions inside one database transaction and ``enrich.web.phone_api`` turns them into
HTTP answers.

**Codes.** A code is 6 decimal digits from ``secrets``. Only a keyed hash is stored:
``HMAC-SHA256(key, phone + code)`` where the key is derived from JWT_SECRET. Why a
server-side key (a "pepper") rather than the per-row salt the schema comment mentions:
a code has only 10^6 values, so a salt stored next to the hash protects nothing: whoever
reads the row can try all million codes in well under a second. A key that lives only in
the server's environment makes a leaked table useless for recovering live codes.
JWT_SECRET is the one secret this API already requires, and the key is derived from it
with a fixed label (domain separation), so the same bytes never sign two kinds of
thing. The phone number is part of the hashed message, so a hash cannot be moved from
one row to another. Rotating JWT_SECRET invalidates the codes outstanding at that
moment (at most VERIFICATION_CODE_EXPIRY_MINUTES' worth): users simply ask again.

**Claims.** An unverified number is held by its claimant only while a code sent to it
is still valid. Once that code expires, anybody may claim the number (taking the row
over), so nobody can squat on a number they cannot receive texts on. A verified number
stays with its owner until they unlink it.

**Attempts.** Each code allows MAX_ATTEMPTS wrong guesses; the attempt that uses up the
last one is answered TOO_MANY_ATTEMPTS, and so is every later one, the right code
included, until a new code is requested (which the resend cooldown paces). Guessing a
6-digit code then succeeds with probability 5/10^6 per code sent.

**Tokens.** The API trusts HS256 JWTs signed with JWT_SECRET whose ``sub`` is the user's
UUID. The algorithm list is fixed (never read from the token), ``exp`` and ``nbf`` are
honoured when present with a small leeway for clock skew, against a ``now`` the caller
passes (so tests need no clock tricks). ``aud``/``iss`` are not checked: no audience or
issuer is configured, and tokens from the main product may carry either.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import jwt

__all__ = [
    "CODE_LENGTH",
    "JWT_LEEWAY_S",
    "MAX_ATTEMPTS",
    "MAX_TOKEN_LENGTH",
    "RESEND_COOLDOWN_S",
    "AuthError",
    "Claim",
    "LinkAction",
    "LinkDecision",
    "VerifyAction",
    "VerifyDecision",
    "bearer_token",
    "claim_is_live",
    "codes_match",
    "decide_link",
    "decide_verify",
    "generate_code",
    "hash_code",
    "is_valid_code_format",
    "verify_jwt",
]

CODE_LENGTH = 6
MAX_ATTEMPTS = 5
RESEND_COOLDOWN_S = 60
JWT_LEEWAY_S = 30.0
# A real token is a few hundred bytes; refusing huge ones early bounds the work an
# unauthenticated caller can cause (base64 + JSON decoding before the HMAC check).
MAX_TOKEN_LENGTH = 4096
ALGORITHMS = ("HS256",)

# ASCII digits only: str.isdigit() would accept "١٢٣٤٥٦" or superscripts, which no
# keypad produces and which would hash differently from what the user sees.
_CODE_RE = re.compile(rf"[0-9]{{{CODE_LENGTH}}}")
_KEY_LABEL = b"enrich/phone-verification-code/v1"


# --- codes ------------------------------------------------------------------------------


def generate_code() -> str:
    """A uniformly random code of CODE_LENGTH ASCII digits (leading zeros kept)."""
    return f"{secrets.randbelow(10**CODE_LENGTH):0{CODE_LENGTH}d}"


def is_valid_code_format(code: object) -> bool:
    """True for exactly CODE_LENGTH ASCII digits; anything else (ints included) is not."""
    return isinstance(code, str) and _CODE_RE.fullmatch(code) is not None


def _code_key(secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def hash_code(code: str, *, secret: str, phone: str) -> str:
    """Hex HMAC-SHA256 of ``phone`` and ``code`` under a key derived from ``secret``."""
    message = phone.encode("utf-8") + b"\x00" + code.encode("utf-8")
    return hmac.new(_code_key(secret), message, hashlib.sha256).hexdigest()


def codes_match(stored_hash: str, code: str, *, secret: str, phone: str) -> bool:
    """Constant-time check of ``code`` against the stored hash; never raises."""
    if not is_valid_code_format(code) or not stored_hash.isascii():
        return False
    return hmac.compare_digest(stored_hash, hash_code(code, secret=secret, phone=phone))


# --- claims -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """One ``user_phone_numbers`` row, as the policy sees it."""

    user_id: uuid.UUID
    phone: str
    verified: bool
    code_hash: str | None
    expires_at: datetime | None
    attempts: int
    sent_at: datetime | None
    verified_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


def claim_is_live(claim: Claim, now: datetime) -> bool:
    """Whether an unverified claim still holds its number: a sent code is still valid.

    A row without an expiry (linked unverified by ``enrich phone link``, never sent a
    code) holds nothing: a code has to be requested before the number is defended.
    """
    return (not claim.verified and claim.expires_at is not None and now < claim.expires_at)


class LinkAction(StrEnum):
    INSERT = "insert"  # nobody has the number: create the caller's claim, send a code
    TAKE_OVER = "take_over"  # someone's unverified claim lapsed: it becomes the caller's
    RESEND = "resend"  # the caller's own unverified claim: new code, attempts reset
    ALREADY_VERIFIED = "already_verified"  # the caller already verified it: nothing to do
    COOLDOWN = "cooldown"  # the caller asked for a code too recently
    USER_HAS_DIFFERENT_PHONE = "user_has_different_phone"
    ALREADY_LINKED = "already_linked"  # verified by, or live claim of, another user

    @property
    def sends_code(self) -> bool:
        return self in (LinkAction.INSERT, LinkAction.TAKE_OVER, LinkAction.RESEND)


@dataclass(frozen=True, slots=True)
class LinkDecision:
    action: LinkAction
    retry_after_s: int | None = None  # COOLDOWN only: whole seconds, at least 1
    previous_owner: uuid.UUID | None = None  # TAKE_OVER only


def decide_link(
    caller: uuid.UUID,
    phone: str,
    *,
    mine: Claim | None,
    holder: Claim | None,
    now: datetime,
    cooldown_s: float = RESEND_COOLDOWN_S,
) -> LinkDecision:
    """What ``POST /api/user/phone-number`` should do.

    ``mine`` is the caller's row (a user has at most one), ``holder`` the row of
    ``phone`` (at most one per number); they are the same row when the caller is
    asking about their own number. A user with a different number (verified or
    pending) must unlink it first: replacing it implicitly would let a typo silently
    drop a verified number.
    """
    if mine is not None and mine.phone != phone:
        return LinkDecision(LinkAction.USER_HAS_DIFFERENT_PHONE)
    if holder is None:
        return LinkDecision(LinkAction.INSERT)
    if holder.user_id == caller:
        if holder.verified:
            return LinkDecision(LinkAction.ALREADY_VERIFIED)
        if holder.sent_at is not None:
            ready_at = holder.sent_at + timedelta(seconds=cooldown_s)
            if now < ready_at:
                wait = max(1, math.ceil((ready_at - now).total_seconds()))
                return LinkDecision(LinkAction.COOLDOWN, retry_after_s=wait)
        return LinkDecision(LinkAction.RESEND)
    if holder.verified or claim_is_live(holder, now):
        return LinkDecision(LinkAction.ALREADY_LINKED)
    return LinkDecision(LinkAction.TAKE_OVER, previous_owner=holder.user_id)


class VerifyAction(StrEnum):
    VERIFIED = "verified"  # the code matched: mark verified
    ALREADY_VERIFIED = "already_verified"
    NOT_FOUND = "not_found"  # no such number, or not the caller's
    NO_CODE = "no_code"  # nothing was sent (or it was consumed): request a code
    EXPIRED = "expired"
    TOO_MANY_ATTEMPTS = "too_many_attempts"  # exhausted before this attempt
    WRONG = "wrong"  # counted; attempts remain
    WRONG_LAST = "wrong_last"  # counted; that was the last attempt

    @property
    def counts_attempt(self) -> bool:
        return self in (VerifyAction.WRONG, VerifyAction.WRONG_LAST)


@dataclass(frozen=True, slots=True)
class VerifyDecision:
    action: VerifyAction
    attempts_left: int | None = None  # WRONG / WRONG_LAST


def decide_verify(
    caller: uuid.UUID,
    claim: Claim | None,
    code: str,
    *,
    now: datetime,
    secret: str,
    max_attempts: int = MAX_ATTEMPTS,
) -> VerifyDecision:
    """What ``POST /api/user/phone-number/verify`` should do with a well-formed code.

    Another user's number answers NOT_FOUND, exactly like an unknown one: the
    endpoint must not tell a caller whether somebody else has claimed a number, and
    a stranger's guesses must never use up the owner's attempts. Exhaustion is
    checked before expiry and before comparing, so once the attempts are spent even
    the right code is refused.
    """
    if claim is None or claim.user_id != caller:
        return VerifyDecision(VerifyAction.NOT_FOUND)
    if claim.verified:
        return VerifyDecision(VerifyAction.ALREADY_VERIFIED)
    if claim.code_hash is None or claim.expires_at is None:
        return VerifyDecision(VerifyAction.NO_CODE)
    if claim.attempts >= max_attempts:
        return VerifyDecision(VerifyAction.TOO_MANY_ATTEMPTS)
    if now >= claim.expires_at:
        return VerifyDecision(VerifyAction.EXPIRED)
    if codes_match(claim.code_hash, code, secret=secret, phone=claim.phone):
        return VerifyDecision(VerifyAction.VERIFIED)
    left = max_attempts - (claim.attempts + 1)
    if left <= 0:
        return VerifyDecision(VerifyAction.WRONG_LAST, attempts_left=0)
    return VerifyDecision(VerifyAction.WRONG, attempts_left=left)


# --- tokens -----------------------------------------------------------------------------


class AuthError(Exception):
    """The request is not authenticated; ``reason`` is safe to show the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header, or AuthError."""
    if header is None or not header.strip():
        raise AuthError("missing Authorization header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("Authorization header is not a Bearer token")
    token = token.strip()
    if not token:
        raise AuthError("Bearer token is empty")
    return token


def _numeric_claim(payload: dict[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    # bool is an int subclass; "exp": true is not a time.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AuthError(f"token claim {name!r} is not a number")
    return float(value)


def verify_jwt(
    token: str, secret: str, *, now: float, leeway_s: float = JWT_LEEWAY_S
) -> uuid.UUID:
    """Check an HS256 JWT and return its ``sub`` as a UUID, or raise AuthError.

    ``now`` is Unix seconds. Times are checked here rather than by PyJWT because PyJWT
    reads the wall clock itself.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthError("token is too long")
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=list(ALGORITHMS),
            options={
                "verify_signature": True,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "verify_aud": False,
                "verify_iss": False,
                "verify_sub": False,
                "verify_jti": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise AuthError("token signature is invalid") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError("token algorithm is not allowed (HS256 only)") from None
    except jwt.InvalidTokenError:
        raise AuthError("token is malformed") from None
    exp = _numeric_claim(payload, "exp")
    if exp is not None and now > exp + leeway_s:
        raise AuthError("token has expired")
    nbf = _numeric_claim(payload, "nbf")
    if nbf is not None and now < nbf - leeway_s:
        raise AuthError("token is not valid yet")
    sub = payload.get("sub")
    if sub is None:
        raise AuthError("token has no sub claim")
    if not isinstance(sub, str):
        raise AuthError("token sub is not a user id")
    try:
        return uuid.UUID(sub)
    except ValueError:
        raise AuthError("token sub is not a user id") from None
