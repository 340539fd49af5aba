"""Phone numbers: E.164 normalisation and masking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrich.core.phone import InvalidPhoneNumber, mask_phone, normalize_e164


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+1 (415) 555-0100", "US", "+14155550100"),
        ("415-555-0100", "US", "+14155550100"),
        ("(415) 555 0100", "US", "+14155550100"),
        ("1 415 555 0100", "US", "+14155550100"),
        ("415.555.0100", "US", "+14155550100"),
        ("  +14155550100  ", "US", "+14155550100"),
        ("+14155550100", "GB", "+14155550100"),
        ("+44 20 7946 0958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("+33 1 23 45 67 89", "US", "+33123456789"),
        ("＋１ ４１５ ５５５ ０１００", "US", "+14155550100"),  # noqa: RUF001 - fullwidth
        ("+1\u2011415\u2012555\u20130100", "US", "+14155550100"),
    ],
)
def test_normalize(raw: str, region: str, expected: str) -> None:
    assert normalize_e164(raw, region) == expected


def test_default_region_is_us() -> None:
    assert normalize_e164("415-555-0100") == "+14155550100"


def test_possible_but_not_valid_numbers_are_accepted() -> None:
    # 555-01xx is reserved for fiction: possible (right length) but not valid.
    # Area code 123 is unassigned. We accept both on purpose (see module docs).
    assert normalize_e164("+1 415 555 0199") == "+14155550199"
    assert normalize_e164("+1 123 555 0100") == "+11235550100"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "garbage",
        "TWILIO",
        "555-0100",  # a possible *local* number: no area code, no E.164 form
        "12",
        "+1 415 555 01000",  # too long for NANP
        "+1 415 555",  # too short
        "+999 1234567",  # unassigned country calling code
        "+",
        "1-800-FLOWERS",  # vanity letters are a hazard for an identity key
        "415-555-0100 ext 12",
        "whatsapp:+14155550100",
        "tel:+1-415-555-0100",
        "call 415 555 0100 now",
        "+1415555010\x00",
        "4" * 65,
        "1" * 10_000,
    ],
)
def test_invalid_numbers_raise(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber):
        normalize_e164(raw)


def test_unknown_region_without_plus_raises() -> None:
    with pytest.raises(InvalidPhoneNumber):
        normalize_e164("415-555-0100", "ZZ")


def test_error_message_does_not_contain_the_input() -> None:
    with pytest.raises(InvalidPhoneNumber) as info:
        normalize_e164("+1 415 555 01000")
    assert "0100" not in str(info.value)
    assert isinstance(info.value, ValueError)


@given(st.text(max_size=80), st.sampled_from(["US", "GB", "DE", "FR", "IN", "ZZ", ""]))
def test_normalize_returns_e164_or_raises_invalid_phone_number(raw: str, region: str) -> None:
    try:
        result = normalize_e164(raw, region)
    except InvalidPhoneNumber:
        return
    assert result.startswith("+")
    assert result[1:].isascii() and result[1:].isdigit()
    assert 2 <= len(result) - 1 <= 15  # E.164: at most 15 digits
    assert normalize_e164(result, region) == result  # idempotent


@given(st.from_regex(r"\+1[2-9][0-9]{2}[2-9][0-9]{6}", fullmatch=True))
def test_every_nanp_shaped_number_round_trips(number: str) -> None:
    assert normalize_e164(number) == number


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+14155550100", "***0100"),
        ("+1 (415) 555-0100", "***0100"),
        ("+442079460958", "***0958"),
        ("whatsapp:+14155550100", "***0100"),
        ("12345678", "***5678"),
        ("1234567", "***"),
        ("12345", "***"),
        ("1234", "***"),
        ("", "***"),
        ("abc", "***"),
        (None, "***"),
    ],
)
def test_mask_phone(number: str | None, expected: str) -> None:
    assert mask_phone(number) == expected


def test_mask_phone_tolerates_non_strings() -> None:
    assert mask_phone(14155550100) == "***"  # type: ignore[arg-type]
    assert mask_phone(b"+14155550100") == "***"  # type: ignore[arg-type]


@given(st.one_of(st.none(), st.text(), st.from_regex(r"\+[0-9]{7,15}", fullmatch=True)))
def test_mask_phone_never_reveals_more_than_four_digits(number: str | None) -> None:
    masked = mask_phone(number)
    assert masked.startswith("***")
    shown = masked[3:]
    assert len(shown) <= 4
    assert shown.isascii() and (shown == "" or shown.isdigit())
    assert sum(ch.isdigit() for ch in masked) <= 4
    if shown:
        assert number is not None
        assert [ch for ch in number if "0" <= ch <= "9"][-4:] == list(shown)
