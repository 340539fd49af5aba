"""POST /api/sms/webhook: the thin HTTP shell around ``enrich.ingest``.

It reads the (already size-capped) form body, rebuilds the URL Twilio signed from
PUBLIC_URL, and turns the decision into a response: TwiML for 200s, a JSON reason for
4xx. Every answer carries X-Enrich-Outcome so benches and operators can tell the 200s
apart.
"""

from __future__ import annotations

import time

from quart import Blueprint, Response, current_app, request

from enrich.core.form import parse_form
from enrich.core.signature import SIGNATURE_HEADER, public_url
from enrich.core.twiml import TWIML_CONTENT_TYPE
from enrich.ingest import Answer, Outcome
from enrich.state import get_state

WEBHOOK_PATH = "/api/sms/webhook"
OUTCOME_HEADER = "X-Enrich-Outcome"
FORM_TYPE = "application/x-www-form-urlencoded"
# A Twilio form has some twenty fields, plus two per media item (at most ten).
MAX_FORM_FIELDS = 200

bp = Blueprint("webhook", __name__)


def _reject(outcome: Outcome, status: int, reason: str) -> Response:
    response = Response(
        f'{{"success": false, "error": "{outcome.value}", "reason": {_json_str(reason)}}}',
        status=status,
        content_type="application/json",
    )
    response.headers[OUTCOME_HEADER] = outcome.value
    return response


def _json_str(text: str) -> str:
    import json

    return json.dumps(text)


@bp.post(WEBHOOK_PATH)
async def webhook() -> Response:
    state = get_state(current_app)
    started = time.perf_counter()
    if request.mimetype != FORM_TYPE:
        return _reject(Outcome.BAD_REQUEST, 415, f"expected {FORM_TYPE}")
    raw = await request.get_data(cache=False)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        params = parse_form(text, max_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return _reject(Outcome.BAD_REQUEST, 400, "body is not a valid UTF-8 form")
    url = public_url(
        state.settings.effective_public_url, request.path, request.query_string.decode("latin-1")
    )
    try:
        answer: Answer = await state.ingest.handle(
            url, params, request.headers.get(SIGNATURE_HEADER))
    except Exception:
        state.metrics.webhook_failed(time.perf_counter() - started)
        raise
    state.metrics.webhook_answered(answer.outcome.value, time.perf_counter() - started)
    if answer.status != 200:
        return _reject(answer.outcome, answer.status, answer.reason or answer.outcome.value)
    response = Response(answer.twiml or "", status=200, content_type=TWIML_CONTENT_TYPE)
    response.headers[OUTCOME_HEADER] = answer.outcome.value
    return response
