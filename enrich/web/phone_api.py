"""The user phone-number API: link a number, prove it with a texted code, read, unlink.

Routes (all need ``Authorization: Bearer <HS256 JWT>`` whose ``sub`` is the user's UUID;
with JWT_SECRET unset they answer 404 as if they did not exist):

- ``POST /api/user/phone-number {"phoneNumber"}``: claim the number (unverified) and
  text it a 6-digit code; asked again by its claimant, send a fresh code after the
  resend cooldown (429 RESEND_TOO_SOON with ``retryAfter`` before it);
- ``POST /api/user/phone-number/verify {"phoneNumber", "code"}``;
- ``GET /api/user/phone-number``: the caller's number in full, with its state;
- ``DELETE /api/user/phone-number``: unlink it.

Answers keep the product's wrapper: ``{"success": true, "data": {...}}`` or
``{"success": false, "code": "<CODE>", "error": "<message>"}`` (plus ``reason`` where
there is more to say). The rules live in ``enrich.core.verification``, the SQL in
``enrich.phone_store``. Whenever a change can alter how the webhook treats a number
(linked, taken over, verified, unlinked) this process drops its cached lookups and
publishes the number so every other process does too.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime
from typing import Any

from quart import Blueprint, Response, abort, current_app, jsonify, request

from enrich import invalidation
from enrich.core.phone import InvalidPhoneNumber, mask_phone, normalize_e164
from enrich.core.verification import (
    CODE_LENGTH,
    MAX_ATTEMPTS,
    RESEND_COOLDOWN_S,
    AuthError,
    Claim,
    LinkAction,
    VerifyAction,
    bearer_token,
    generate_code,
    hash_code,
    is_valid_code_format,
    verify_jwt,
)
from enrich.phone_store import (
    check_code,
    delete_account_data,
    get_phone,
    request_code,
    unlink_phone,
)
from enrich.redis_client import RedisUnavailable
from enrich.resp import RespError
from enrich.state import AppState, get_state

log = logging.getLogger(__name__)

PATH = "/api/user/phone-number"

bp = Blueprint("phone_api", __name__)


class ApiError(Exception):
    """An error answer: HTTP status, stable code, human message, extra fields."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


@bp.errorhandler(ApiError)
async def _api_error(exc: ApiError) -> Response:
    response: Response = jsonify(
        {"success": False, "code": exc.code, "error": exc.message, **exc.extra}
    )
    response.status_code = exc.status
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    retry_after = exc.extra.get("retryAfter")
    if isinstance(retry_after, int):
        response.headers["Retry-After"] = str(retry_after)
    return response


def _ok(data: dict[str, Any]) -> Response:
    response: Response = jsonify({"success": True, "data": data})
    return response


# --- request plumbing -------------------------------------------------------------------


def _authenticate() -> tuple[AppState, str, uuid.UUID]:
    """The app state, the JWT secret and the caller, or 404 (disabled) / 401."""
    state = get_state(current_app)
    secret = state.settings.jwt_secret
    if not secret:
        abort(404)
    try:
        token = bearer_token(request.headers.get("Authorization"))
        user_id = verify_jwt(token, secret, now=time.time())
    except AuthError as exc:
        raise ApiError(401, "UNAUTHORIZED", "Authentication required.",
                       reason=exc.reason) from None
    return state, secret, user_id


async def _json_body() -> dict[str, Any]:
    raw = await request.get_data(cache=False)
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if not data.strip():
        return {}
    try:
        body = json.loads(data)
    except UnicodeDecodeError:
        raise ApiError(400, "INVALID_JSON", "The request body is not valid JSON.",
                       reason="body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, "INVALID_JSON", "The request body is not valid JSON.",
                       reason=f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ApiError(400, "INVALID_JSON", "The request body is not valid JSON.",
                       reason="nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "INVALID_JSON", "The request body must be a JSON object.",
                       reason=f"got a JSON {type(body).__name__}")
    return body


def _phone_from(body: dict[str, Any]) -> str:
    raw = body.get("phoneNumber")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise ApiError(400, "MISSING_PHONE_NUMBER", "phoneNumber is required.")
    if not isinstance(raw, str):
        raise ApiError(400, "INVALID_PHONE_NUMBER", "phoneNumber must be a string.")
    try:
        return normalize_e164(raw)
    except InvalidPhoneNumber as exc:  # the message never contains the input
        raise ApiError(400, "INVALID_PHONE_NUMBER", "phoneNumber is not a phone number.",
                       reason=str(exc)) from None


def _code_from(body: dict[str, Any]) -> str:
    raw = body.get("code")
    code = raw.strip() if isinstance(raw, str) else raw
    if not is_valid_code_format(code):
        raise ApiError(400, "INVALID_CODE_FORMAT",
                       f"code must be a string of {CODE_LENGTH} digits.")
    assert isinstance(code, str)
    return code


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _phone_data(claim: Claim) -> dict[str, Any]:
    data: dict[str, Any] = {
        "phoneNumber": claim.phone,
        "verified": claim.verified,
        "verifiedAt": _iso(claim.verified_at),
        "verificationSentAt": _iso(claim.sent_at),
        "verificationExpiresAt": None if claim.verified else _iso(claim.expires_at),
        "createdAt": _iso(claim.created_at),
        "updatedAt": _iso(claim.updated_at),
    }
    if not claim.verified:
        data["attemptsRemaining"] = max(0, MAX_ATTEMPTS - claim.attempts)
    return data


async def _invalidate(state: AppState, phone: str) -> None:
    """Drop cached lookups here now, and everywhere else through Redis (best effort:
    the change is committed; other processes' caches expire on their own TTL)."""
    state.ingest.invalidate(phone)
    try:
        await invalidation.publish(state.services.redis, phone)
    except (RedisUnavailable, RespError) as exc:
        log.warning("could not publish cache invalidation",
                    extra={"to": mask_phone(phone), "error": type(exc).__name__})


def _sms_text(code: str, minutes: int) -> str:
    unit = "minute" if minutes == 1 else "minutes"
    return (f"Your enrich verification code is {code}. It expires in {minutes} {unit}. "
            "If you didn't ask for it, ignore this message.")


# --- routes -----------------------------------------------------------------------------


@bp.get(PATH)
async def get_number() -> Response:
    state, _, user_id = _authenticate()
    claim = await get_phone(state.services.db, user_id)
    if claim is None:
        raise ApiError(404, "PHONE_NUMBER_NOT_FOUND", "No phone number is linked.")
    return _ok(_phone_data(claim))


@bp.post(PATH)
async def link_number() -> Response:
    state, secret, user_id = _authenticate()
    phone = _phone_from(await _json_body())
    minutes = state.settings.verification_code_expiry_minutes
    code = generate_code()
    result = await request_code(
        state.services.db, user_id, phone,
        code_hash=hash_code(code, secret=secret, phone=phone),
        sms_body=_sms_text(code, minutes),
        expiry_s=minutes * 60,
        cooldown_s=RESEND_COOLDOWN_S,
    )
    decision = result.decision
    action = decision.action
    if action == LinkAction.USER_HAS_DIFFERENT_PHONE:
        raise ApiError(409, "USER_HAS_DIFFERENT_PHONE",
                       "Another phone number is linked to this account; unlink it first "
                       f"(DELETE {PATH}).")
    if action == LinkAction.ALREADY_LINKED:
        raise ApiError(409, "PHONE_NUMBER_ALREADY_LINKED",
                       "This phone number is linked to another account.")
    if action == LinkAction.COOLDOWN:
        assert decision.retry_after_s is not None
        raise ApiError(429, "RESEND_TOO_SOON",
                       "A code was sent to this number moments ago; wait before asking "
                       "for another.", retryAfter=decision.retry_after_s)
    assert result.claim is not None
    if action == LinkAction.ALREADY_VERIFIED:
        return _ok({**_phone_data(result.claim), "codeSent": False})

    if state.outbox is not None:
        state.outbox.wake()
    if action in (LinkAction.INSERT, LinkAction.TAKE_OVER):
        await _invalidate(state, phone)
    log.info("verification code queued",
             extra={"user_id": str(user_id), "to": mask_phone(phone), "action": action.value})
    return _ok({
        **_phone_data(result.claim),
        "codeSent": True,
        "expiresInSeconds": minutes * 60,
        "resendAfterSeconds": RESEND_COOLDOWN_S,
    })


@bp.post(PATH + "/verify")
async def verify_number() -> Response:
    state, secret, user_id = _authenticate()
    body = await _json_body()
    phone = _phone_from(body)
    code = _code_from(body)
    result = await check_code(state.services.db, user_id, phone, code, secret=secret)
    decision = result.decision
    action = decision.action
    if action == VerifyAction.NOT_FOUND:
        raise ApiError(404, "PHONE_NUMBER_NOT_FOUND",
                       "This phone number is not linked to this account.")
    if action in (VerifyAction.TOO_MANY_ATTEMPTS, VerifyAction.WRONG_LAST):
        raise ApiError(429, "TOO_MANY_ATTEMPTS",
                       "Too many incorrect codes; request a new code.", attemptsRemaining=0)
    if action == VerifyAction.EXPIRED:
        raise ApiError(400, "VERIFICATION_FAILED", "The code has expired; request a new one.",
                       reason="code expired")
    if action == VerifyAction.NO_CODE:
        raise ApiError(400, "VERIFICATION_FAILED",
                       "No code is pending for this number; request one first.",
                       reason="no code pending")
    if action == VerifyAction.WRONG:
        raise ApiError(400, "VERIFICATION_FAILED", "The code is incorrect.",
                       reason="incorrect code", attemptsRemaining=decision.attempts_left)
    assert result.claim is not None
    if action == VerifyAction.VERIFIED:
        await _invalidate(state, phone)
        log.info("phone number verified",
                 extra={"user_id": str(user_id), "to": mask_phone(phone)})
    return _ok(_phone_data(result.claim))


@bp.delete(PATH)
async def unlink_number() -> Response:
    state, _, user_id = _authenticate()
    phone = await unlink_phone(state.services.db, user_id)
    if phone is None:
        raise ApiError(404, "PHONE_NUMBER_NOT_FOUND", "No phone number is linked.")
    await _invalidate(state, phone)
    log.info("phone number unlinked", extra={"user_id": str(user_id), "to": mask_phone(phone)})
    return _ok({"phoneNumber": phone, "unlinked": True})


@bp.delete("/api/user/data")
async def delete_account_data_route() -> Response:
    """Account data deletion: the link, items, messages and queued replies, at once.

    Every process stops routing the number immediately (local invalidation plus the
    Redis broadcast), so no cached lookup keeps sending it to the former owner.
    """
    state, _, user_id = _authenticate()
    deleted = await delete_account_data(state.services.db, user_id)
    if deleted.phone is not None:
        await _invalidate(state, deleted.phone)
    log.info("account data deleted",
             extra={"user_id": str(user_id), "items": deleted.items,
                    "messages": deleted.messages})
    return _ok({"deleted": True, "items": deleted.items, "messages": deleted.messages,
                "phoneNumber": deleted.phone})
