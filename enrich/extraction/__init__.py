"""Enrichment extraction: contacts, organisations, places, tags and more from text.

Pure and deterministic: no I/O, no network, no models. :func:`default_extractor`
returns the rule-based :class:`RuleExtractor`; anything implementing the
:class:`Extractor` protocol (a spaCy model, a hosted LLM) can stand in for it.
:func:`to_rows` flattens an :class:`Extraction` into one :class:`ItemRow` per
item for storage, and :func:`summarize` words the confirmation SMS.
"""

from .model import ITEM_TYPES, Contact, Extraction, Extractor, ItemRow, summarize, to_rows
from .rules import RuleExtractor, default_extractor

__all__ = [
    "ITEM_TYPES",
    "Contact",
    "Extraction",
    "Extractor",
    "ItemRow",
    "RuleExtractor",
    "default_extractor",
    "summarize",
    "to_rows",
]
