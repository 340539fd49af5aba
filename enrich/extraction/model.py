"""Extraction results, the extractor protocol, and flattening to item rows.

An :class:`Extraction` is what an extractor finds in one text (an SMS body or a
voice-note transcript). Storage wants one row per item (DESIGN §8.13), so
:func:`to_rows` flattens it into :class:`ItemRow` values, deduplicated and in
a stable order, and :func:`summarize` turns those rows into the confirmation
text ("Saved 3 items: Sarah Johnson, hiking, Portland"), whose count is the
number of rows.

Everything here is pure data: no I/O, no logging (the values are user content).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

__all__ = [
    "ITEM_TYPES",
    "Contact",
    "Extraction",
    "Extractor",
    "ItemRow",
    "summarize",
    "to_rows",
]

ITEM_TYPES: Final = (
    "contact",
    "tag",
    "location",
    "organization",
    "date",
    "email",
    "phone",
    "note",
    "media",
)
"""Every item_type a row may carry, in row order.

Tags come before locations so that a confirmation lists what a person would
name first ("Sarah Johnson, hiking, Portland"). ``media`` rows are made by the
media pipeline (a stored image reference), never by :func:`to_rows`.
"""

_ROW_ORDER: Final = {item_type: index for index, item_type in enumerate(ITEM_TYPES)}

# A summary is an SMS: keep each listed value short.
_SUMMARY_VALUE_MAX: Final = 40


@dataclass(frozen=True, slots=True)
class Contact:
    """A person mentioned in the text, with the sentence(s) that mention them."""

    name: str
    context: str | None = None


@dataclass(frozen=True, slots=True)
class Extraction:
    """Everything one extractor found in one text.

    Each tuple is in order of first appearance and already deduplicated by the
    extractor; :func:`to_rows` deduplicates again (case-insensitively), so an
    extractor that does not bother still yields clean rows.
    """

    contacts: tuple[Contact, ...] = ()
    organizations: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not any(
            (
                self.contacts,
                self.organizations,
                self.locations,
                self.tags,
                self.emails,
                self.phones,
                self.dates,
                self.notes,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the replaced product's schema plus our extra keys.

        The product's keys are ``contacts`` (a list of ``{"name", "context"}``),
        ``tags``, ``locations`` and ``notes``; ours are ``organizations``,
        ``emails``, ``phones`` and ``dates``.
        """
        return {
            "contacts": [{"name": c.name, "context": c.context} for c in self.contacts],
            "tags": list(self.tags),
            "locations": list(self.locations),
            "notes": list(self.notes),
            "organizations": list(self.organizations),
            "emails": list(self.emails),
            "phones": list(self.phones),
            "dates": list(self.dates),
        }


@runtime_checkable
class Extractor(Protocol):
    """Anything that turns a text into an :class:`Extraction`.

    The default is the rule-based extractor; a richer one (a spaCy model, a
    hosted LLM) implements the same protocol. ``extract`` must be pure and must
    not raise on any ``str``: the job runner treats an exception as a failed
    message, and a sentence the rules do not understand is not a failure.
    """

    name: str

    def extract(self, text: str) -> Extraction: ...


@dataclass(frozen=True, slots=True)
class ItemRow:
    """One stored enrichment item.

    ``field_name`` refines ``item_type`` (contacts carry ``"name"``); ``detail``
    carries what belongs to the item but is not its value: a contact's context.
    """

    item_type: str
    field_name: str | None
    value: str
    detail: str | None = None

    def __post_init__(self) -> None:
        if self.item_type not in _ROW_ORDER:
            raise ValueError(
                f"unknown item_type {self.item_type!r}; expected one of {', '.join(ITEM_TYPES)}"
            )
        if not self.value.strip():
            raise ValueError(f"{self.item_type} row has an empty value")


def to_rows(extraction: Extraction) -> list[ItemRow]:
    """Flatten *extraction* into one row per item.

    Order: contacts, tags, locations, organizations, dates, emails, phones,
    notes (:data:`ITEM_TYPES`), each in extraction order. Values are stripped;
    empty values are skipped; duplicates within a type are dropped
    case-insensitively, keeping the first (a later duplicate contact lends its
    context when the first has none).
    """
    contacts: dict[str, ItemRow] = {}
    for contact in extraction.contacts:
        name = contact.name.strip()
        if not name:
            continue
        context = (contact.context or "").strip() or None
        key = name.casefold()
        seen = contacts.get(key)
        if seen is None:
            contacts[key] = ItemRow("contact", "name", name, context)
        elif seen.detail is None and context is not None:
            contacts[key] = ItemRow("contact", "name", seen.value, context)

    rows = list(contacts.values())
    rows += _plain_rows("tag", extraction.tags)
    rows += _plain_rows("location", extraction.locations)
    rows += _plain_rows("organization", extraction.organizations)
    rows += _plain_rows("date", extraction.dates)
    rows += _plain_rows("email", extraction.emails)
    rows += _plain_rows("phone", extraction.phones)
    rows += _plain_rows("note", extraction.notes)
    return rows


def _plain_rows(item_type: str, values: Iterable[str]) -> list[ItemRow]:
    seen: set[str] = set()
    rows: list[ItemRow] = []
    for raw in values:
        value = raw.strip()
        key = value.casefold()
        if not value or key in seen:
            continue
        seen.add(key)
        rows.append(ItemRow(item_type, None, value))
    return rows


def summarize(rows: Sequence[ItemRow], limit: int = 3) -> str:
    """Confirmation text for *rows*: "Saved 3 items: Sarah Johnson, hiking, Portland".

    The count is the number of rows. The first *limit* values are listed,
    contacts first and otherwise in row order; when more rows exist the text
    says how many more ("…, Portland and 2 more"). Zero rows give ``""``: what
    to say then ("No details found in your message") is the caller's choice.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if not rows:
        return ""
    count = len(rows)
    head = f"Saved {count} item{'s' if count != 1 else ''}"
    # sorted() is stable: contacts move to the front, everything else keeps
    # the order it was given in.
    ordered = sorted(rows, key=lambda row: row.item_type != "contact")
    shown = [_shorten(row.value) for row in ordered[:limit]]
    if not shown:
        return head
    text = f"{head}: {', '.join(shown)}"
    if count > len(shown):
        text += f" and {count - len(shown)} more"
    return text


def _shorten(value: str) -> str:
    value = " ".join(value.split())
    if len(value) <= _SUMMARY_VALUE_MAX:
        return value
    return value[: _SUMMARY_VALUE_MAX - 1].rstrip() + "…"
