"""Phone numbers: normalise to E.164 for lookups, mask for logs.

Normalisation uses Google's libphonenumber port (``phonenumbers``), not a regex:
national formats, trunk prefixes and country calling codes are too irregular
to hand-roll. Two deliberate choices:

* **Possible, not valid.** We require ``is_possible_number_with_reason(...) ==
  IS_POSSIBLE`` (the length fits the country's plan) rather than
  ``is_valid_number`` (the number sits in an allocated range). Validity data
  goes stale between library releases, and the fictional 555-01xx numbers used
  in docs, tests and the bench are possible but not valid. Twilio has already
  delivered the message, so the number demonstrably exists. We refuse
  ``IS_POSSIBLE_LOCAL_ONLY`` though: "555-0100" is a possible *local* US number,
  but without an area code its "E.164" form (+15550100) would be wrong.
* **Only phone-number characters.** ``phonenumbers.parse`` is lenient on
  purpose: it extracts a number from surrounding text, turns letters into
  keypad digits ("1-800-FLOWERS") and splits off extensions. For an identity
  key that leniency is a hazard (an alphanumeric sender ID, or two numbers
  differing only by extension, could map to someone's number), so the input
  may only contain digits, spaces and the usual separators before parsing.
"""

from __future__ import annotations

import functools
import re

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

__all__ = ["InvalidPhoneNumber", "mask_phone", "normalize_e164"]

# Digits (any script: phonenumbers normalises e.g. fullwidth digits), whitespace,
# "+" (also fullwidth), brackets, dots, slashes and ASCII/Unicode dashes. No letters.
_PHONE_CHARS = re.compile(r"[\d\s+\uff0b().\-/\u2010-\u2015\u2212]+")
# phonenumbers itself refuses more than 250 characters; refuse earlier, cheaply.
_MAX_RAW = 64

# Fewer digits than this are shown not at all: revealing 4 of a 5-digit short
# code would reveal almost all of it.
_MIN_DIGITS_TO_REVEAL = 8
_REVEALED_DIGITS = 4
_MASK = "***"


class InvalidPhoneNumber(ValueError):
    """The input is not a possible phone number. The message never contains the input."""


def normalize_e164(raw: str, default_region: str = "US") -> str:
    """Return *raw* as an E.164 string ("+14155550100").

    Numbers without a leading ``+`` are read in *default_region*'s national
    format. Raises :class:`InvalidPhoneNumber` for anything that is not a
    possible number (see the module docstring for what "possible" means here).
    """
    if not isinstance(raw, str):
        raise InvalidPhoneNumber("phone number must be a string")
    text = raw.strip()
    if not text:
        raise InvalidPhoneNumber("phone number is empty")
    if len(text) > _MAX_RAW:
        raise InvalidPhoneNumber("phone number is too long")
    if not _PHONE_CHARS.fullmatch(text):
        raise InvalidPhoneNumber("phone number may only contain digits and separators")
    return _parse_e164(text, default_region)


@functools.lru_cache(maxsize=4096)
def _parse_e164(text: str, default_region: str) -> str:
    # phonenumbers costs ~50 µs a call, as much as the webhook's HMAC; senders repeat.
    # Only successes are cached (lru_cache does not keep exceptions).
    try:
        number = phonenumbers.parse(text, default_region)
    except NumberParseException:
        raise InvalidPhoneNumber("phone number could not be parsed") from None
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason != ValidationResult.IS_POSSIBLE:
        raise InvalidPhoneNumber("phone number has an impossible length for its country")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def mask_phone(number: str | None) -> str:
    """Mask a phone number for logs: ``"+14155550100"`` becomes ``"***0100"``.

    Only the last four ASCII digits are ever shown, and only when the input has
    at least eight of them; anything shorter, empty, ``None`` or not a string
    becomes ``"***"``. Never raises, so it is safe inside logging calls.
    """
    if not isinstance(number, str):
        return _MASK
    digits = [ch for ch in number if "0" <= ch <= "9"]
    if len(digits) < _MIN_DIGITS_TO_REVEAL:
        return _MASK
    return _MASK + "".join(digits[-_REVEALED_DIGITS:])
