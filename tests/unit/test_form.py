"""enrich.core.form.parse_form is urllib's parse_qsl (as the webhook called it), faster."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enrich.core.form import parse_form

MAX = 200


def reference(text: str, max_fields: int = MAX) -> list[tuple[str, str]] | type[Exception]:
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict",
                         max_num_fields=max_fields)
    except ValueError as exc:  # UnicodeDecodeError is one
        return type(exc)


def ours(text: str, max_fields: int = MAX) -> list[tuple[str, str]] | type[Exception]:
    try:
        return parse_form(text, max_fields=max_fields)
    except ValueError as exc:
        return type(exc)


# Bodies made of the characters that matter: separators, escapes (valid, truncated,
# non-UTF-8), plus signs, and a little of everything else.
_PIECES = st.sampled_from(
    ["&", "=", "+", "%", "%2", "%20", "%26", "%3D", "%2B", "%E2%82%AC", "%C3", "%ff", "%zz",
     "a", "B", "0", " ", ";", "é", "☕", "\x00", "\ud800"]
)


@settings(max_examples=2000)
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_same_answer_as_parse_qsl_on_awkward_bodies(text: str) -> None:
    assert ours(text) == reference(text)


@given(st.text(max_size=200))
def test_same_answer_as_parse_qsl_on_any_text(text: str) -> None:
    assert ours(text) == reference(text)


@given(st.lists(st.tuples(st.text(max_size=30), st.text(max_size=60)), max_size=30))
def test_a_urlencoded_form_comes_back_as_sent(fields: list[tuple[str, str]]) -> None:
    body = urlencode(fields)
    assert parse_form(body, max_fields=MAX) == fields


@pytest.mark.parametrize(("fields", "refused"), [(3, False), (4, True)])
def test_field_limit_counts_separators_as_parse_qsl_does(fields: int, refused: bool) -> None:
    body = "&".join(["a=1"] * fields)
    assert ours(body, 3) == reference(body, 3)
    assert (ours(body, 3) is ValueError) is refused
    assert ours("", 0) == reference("", 0) == []
    assert ours("&&&", 3) == reference("&&&", 3) is ValueError


def test_bad_escapes() -> None:
    assert parse_form("Body=%E2%82%AC+%25", max_fields=MAX) == [("Body", "€ %")]
    with pytest.raises(UnicodeDecodeError):
        parse_form("Body=%ff", max_fields=MAX)
    assert parse_form("a=%zz&b=%", max_fields=MAX) == [("a", "%zz"), ("b", "%")]
