"""The verification rules and token checks, as pure functions (no server, no database)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrich.core.verification import (
    MAX_ATTEMPTS,
    MAX_TOKEN_LENGTH,
    RESEND_COOLDOWN_S,
    AuthError,
    Claim,
    LinkAction,
    VerifyAction,
    bearer_token,
    claim_is_live,
    codes_match,
    decide_link,
    decide_verify,
    generate_code,
    hash_code,
    is_valid_code_format,
    verify_jwt,
)

SECRET = "s" * 64  # long enough for HS512 too (one test signs with it)
PHONE = "+14155550100"
OTHER_PHONE = "+14155550101"
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
T0 = 1_700_000_000.0
ALICE = uuid.UUID("11111111-1111-4111-8111-111111111111")
BOB = uuid.UUID("22222222-2222-4222-8222-222222222222")


# --- codes ------------------------------------------------------------------------------


def test_generated_codes_are_six_ascii_digits_and_vary() -> None:
    codes = [generate_code() for _ in range(200)]
    assert all(is_valid_code_format(c) for c in codes)
    assert len(set(codes)) > 150  # 200 draws from 10^6 values: collisions are rare


@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("123456", True),
        ("000000", True),
        ("12345", False),
        ("1234567", False),
        ("12345a", False),
        (" 123456", False),
        ("123456\n", False),
        ("١٢٣٤٥٦", False),  # Arabic-Indic digits: isdigit() is True, but no keypad sends them
        ("¹²³⁴⁵⁶", False),
        ("", False),
        (123456, False),
        (None, False),
    ],
)
def test_code_format(code: object, ok: bool) -> None:
    assert is_valid_code_format(code) is ok


def test_hash_is_keyed_bound_to_the_number_and_never_the_code() -> None:
    h = hash_code("123456", secret=SECRET, phone=PHONE)
    assert len(h) == 64 and int(h, 16) >= 0
    assert "123456" not in h
    assert h == hash_code("123456", secret=SECRET, phone=PHONE)
    assert h != hash_code("123457", secret=SECRET, phone=PHONE)
    assert h != hash_code("123456", secret=SECRET + "x", phone=PHONE)
    assert h != hash_code("123456", secret=SECRET, phone=OTHER_PHONE)


def test_codes_match() -> None:
    stored = hash_code("042042", secret=SECRET, phone=PHONE)
    assert codes_match(stored, "042042", secret=SECRET, phone=PHONE)
    assert not codes_match(stored, "042043", secret=SECRET, phone=PHONE)
    assert not codes_match(stored, "042042", secret="other" * 8, phone=PHONE)
    assert not codes_match(stored, "042042", secret=SECRET, phone=OTHER_PHONE)
    assert not codes_match(stored, "42042", secret=SECRET, phone=PHONE)
    assert not codes_match(stored[:-1] + "0" if stored[-1] != "0" else stored[:-1] + "1",
                           "042042", secret=SECRET, phone=PHONE)
    assert not codes_match("", "042042", secret=SECRET, phone=PHONE)
    assert not codes_match("é" * 64, "042042", secret=SECRET, phone=PHONE)  # never raises


# --- link decisions ---------------------------------------------------------------------


def claim(
    user: uuid.UUID = ALICE,
    phone: str = PHONE,
    *,
    verified: bool = False,
    expires_in: float | None = 600,
    sent_ago: float | None = 0,
    attempts: int = 0,
    code: str = "123456",
) -> Claim:
    return Claim(
        user_id=user,
        phone=phone,
        verified=verified,
        code_hash=None if verified or expires_in is None
        else hash_code(code, secret=SECRET, phone=phone),
        expires_at=None if expires_in is None or verified else NOW + timedelta(seconds=expires_in),
        attempts=attempts,
        sent_at=None if sent_ago is None else NOW - timedelta(seconds=sent_ago),
    )


def test_link_free_number_inserts() -> None:
    assert decide_link(ALICE, PHONE, mine=None, holder=None, now=NOW).action == LinkAction.INSERT


def test_link_with_another_number_is_refused_pending_or_verified() -> None:
    for mine in (claim(phone=OTHER_PHONE), claim(phone=OTHER_PHONE, verified=True)):
        d = decide_link(ALICE, PHONE, mine=mine, holder=None, now=NOW)
        assert d.action == LinkAction.USER_HAS_DIFFERENT_PHONE


def test_link_own_number_resends_after_the_cooldown_only() -> None:
    soon = claim(sent_ago=20)
    d = decide_link(ALICE, PHONE, mine=soon, holder=soon, now=NOW)
    assert d.action == LinkAction.COOLDOWN and d.retry_after_s == RESEND_COOLDOWN_S - 20
    barely = claim(sent_ago=RESEND_COOLDOWN_S - 0.2)
    d = decide_link(ALICE, PHONE, mine=barely, holder=barely, now=NOW)
    assert d.action == LinkAction.COOLDOWN and d.retry_after_s == 1
    late = claim(sent_ago=RESEND_COOLDOWN_S)
    assert decide_link(ALICE, PHONE, mine=late, holder=late, now=NOW).action == LinkAction.RESEND
    never = claim(sent_ago=None, expires_in=None)  # linked by the CLI, no code yet
    assert decide_link(ALICE, PHONE, mine=never, holder=never, now=NOW).action == LinkAction.RESEND


def test_link_own_verified_number_does_nothing() -> None:
    mine = claim(verified=True)
    d = decide_link(ALICE, PHONE, mine=mine, holder=mine, now=NOW)
    assert d.action == LinkAction.ALREADY_VERIFIED and not d.action.sends_code


def test_link_someone_elses_number() -> None:
    live = claim(BOB, expires_in=1)
    assert decide_link(ALICE, PHONE, mine=None, holder=live, now=NOW).action == (
        LinkAction.ALREADY_LINKED
    )
    verified = claim(BOB, verified=True)
    assert decide_link(ALICE, PHONE, mine=None, holder=verified, now=NOW).action == (
        LinkAction.ALREADY_LINKED
    )
    for lapsed in (claim(BOB, expires_in=0), claim(BOB, expires_in=-3600),
                   claim(BOB, expires_in=None, sent_ago=None)):
        d = decide_link(ALICE, PHONE, mine=None, holder=lapsed, now=NOW)
        assert d.action == LinkAction.TAKE_OVER and d.previous_owner == BOB
        assert not claim_is_live(lapsed, NOW)


@given(
    verified=st.booleans(),
    expires_in=st.one_of(st.none(), st.floats(-1e6, 1e6)),
    sent_ago=st.one_of(st.none(), st.floats(-1e3, 1e6)),
    caller_has_row=st.booleans(),
)
def test_a_verified_or_live_claim_never_changes_hands(
    verified: bool, expires_in: float | None, sent_ago: float | None, caller_has_row: bool
) -> None:
    holder = claim(BOB, verified=verified, expires_in=expires_in, sent_ago=sent_ago)
    mine = claim(ALICE, OTHER_PHONE) if caller_has_row else None
    d = decide_link(ALICE, PHONE, mine=mine, holder=holder, now=NOW)
    if verified or claim_is_live(holder, NOW) or caller_has_row:
        assert not d.action.sends_code
    else:
        assert d.action == LinkAction.TAKE_OVER


# --- verify decisions -------------------------------------------------------------------


def verify(c: Claim | None, code: str = "123456", caller: uuid.UUID = ALICE) -> Any:
    return decide_verify(caller, c, code, now=NOW, secret=SECRET)


def test_verify_right_code() -> None:
    assert verify(claim()).action == VerifyAction.VERIFIED


def test_verify_someone_elses_or_unknown_number_is_not_found() -> None:
    assert verify(None).action == VerifyAction.NOT_FOUND
    # Even with the right code: the caller is not the claimant.
    assert verify(claim(BOB)).action == VerifyAction.NOT_FOUND


def test_wrong_codes_count_down_to_too_many() -> None:
    for used in range(MAX_ATTEMPTS - 1):
        d = verify(claim(attempts=used), "000000")
        assert d.action == VerifyAction.WRONG and d.attempts_left == MAX_ATTEMPTS - used - 1
        assert d.action.counts_attempt
    last = verify(claim(attempts=MAX_ATTEMPTS - 1), "000000")
    assert last.action == VerifyAction.WRONG_LAST and last.attempts_left == 0
    # Exhausted: the right code is refused too, and nothing more is counted.
    spent = verify(claim(attempts=MAX_ATTEMPTS))
    assert spent.action == VerifyAction.TOO_MANY_ATTEMPTS and not spent.action.counts_attempt


def test_expired_code_fails_even_when_right() -> None:
    assert verify(claim(expires_in=0)).action == VerifyAction.EXPIRED
    assert verify(claim(expires_in=-1)).action == VerifyAction.EXPIRED
    assert verify(claim(expires_in=0.001)).action == VerifyAction.VERIFIED


def test_verify_without_a_pending_code_or_already_verified() -> None:
    assert verify(claim(expires_in=None, sent_ago=None)).action == VerifyAction.NO_CODE
    assert verify(claim(verified=True)).action == VerifyAction.ALREADY_VERIFIED


# --- bearer header ----------------------------------------------------------------------


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer   abc ") == "abc"
    for header, reason in [
        (None, "missing"),
        ("  ", "missing"),
        ("Basic dXNlcjpwYXNz", "not a Bearer"),
        ("abc.def.ghi", "not a Bearer"),
        ("Bearer", "empty"),
        ("Bearer   ", "empty"),
    ]:
        with pytest.raises(AuthError) as info:
            bearer_token(header)
        assert reason in info.value.reason


# --- JWT --------------------------------------------------------------------------------


def token(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def unsigned(claims: dict[str, Any]) -> str:
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def test_valid_token_gives_the_user() -> None:
    assert verify_jwt(token({"sub": str(ALICE)}), SECRET, now=T0) == ALICE
    assert verify_jwt(token({"sub": str(ALICE), "exp": T0 + 60, "nbf": T0 - 60,
                             "aud": "authenticated"}), SECRET, now=T0) == ALICE


def test_exp_and_nbf_use_the_given_clock_with_a_small_leeway() -> None:
    assert verify_jwt(token({"sub": str(ALICE), "exp": T0 - 5}), SECRET, now=T0) == ALICE
    assert verify_jwt(token({"sub": str(ALICE), "nbf": T0 + 5}), SECRET, now=T0) == ALICE
    with pytest.raises(AuthError, match="expired"):
        verify_jwt(token({"sub": str(ALICE), "exp": T0 - 120}), SECRET, now=T0)
    with pytest.raises(AuthError, match="not valid yet"):
        verify_jwt(token({"sub": str(ALICE), "nbf": T0 + 120}), SECRET, now=T0)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token({"sub": str(ALICE)}, secret="wrong" * 8), "signature"),
        (lambda: token({"sub": str(ALICE)}, algorithm="HS512"), "algorithm"),
        (lambda: unsigned({"sub": str(ALICE)}), "algorithm"),
        (lambda: "not-a-jwt", "malformed"),
        (lambda: "a.b.c", "malformed"),
        (lambda: token({"name": "alice"}), "no sub"),
        (lambda: token({"sub": "alice"}), "not a user id"),
        (lambda: token({"sub": 42}), "not a user id"),
        (lambda: token({"sub": str(ALICE), "exp": "tomorrow"}), "'exp' is not a number"),
        (lambda: token({"sub": str(ALICE), "exp": True}), "'exp' is not a number"),
        (lambda: "x" * (MAX_TOKEN_LENGTH + 1), "too long"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(make: Any, reason: str) -> None:
    with pytest.raises(AuthError) as info:
        verify_jwt(make(), SECRET, now=T0)
    assert reason in info.value.reason


def test_a_tampered_payload_fails_the_signature() -> None:
    good = token({"sub": str(ALICE)})
    header, _, sig = good.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"sub": str(BOB)}).encode()).rstrip(b"=")
    with pytest.raises(AuthError, match="signature"):
        verify_jwt(f"{header}.{forged.decode()}.{sig}", SECRET, now=T0)
