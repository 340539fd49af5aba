"""TwiML rendering: always well-formed, always the text we meant."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrich.core.twiml import TWIML_CONTENT_TYPE, XML_DECLARATION, render_message, xml_text

DECL = '<?xml version="1.0" encoding="UTF-8"?>'


def parse(document: str) -> ET.Element:
    assert document.startswith(DECL)
    # Parse the bytes we would send, so the declared encoding is honoured.
    return ET.fromstring(document.encode("utf-8"))  # noqa: S314 - our own output


def message_text(document: str) -> str:
    root = parse(document)
    assert root.tag == "Response"
    (message,) = list(root)
    assert message.tag == "Message"
    assert list(message) == []
    return message.text or ""


def is_xml_char(ch: str) -> bool:
    cp = ord(ch)
    return (
        cp in (0x9, 0xA, 0xD)
        or 0x20 <= cp <= 0xD7FF
        or 0xE000 <= cp <= 0xFFFD
        or 0x10000 <= cp <= 0x10FFFF
    )


def test_constants() -> None:
    assert TWIML_CONTENT_TYPE == "text/xml; charset=utf-8"
    assert XML_DECLARATION == DECL


@pytest.mark.parametrize("text", [None, ""])
def test_empty_response(text: str | None) -> None:
    document = render_message(text)
    assert document == DECL + "<Response/>"
    root = parse(document)
    assert root.tag == "Response" and list(root) == [] and root.text is None


def test_simple_message_exact_output() -> None:
    assert render_message("Saved 3 items") == (
        DECL + "<Response><Message>Saved 3 items</Message></Response>"
    )


def test_special_characters_are_escaped() -> None:
    text = """Tom & Jerry <tom@example.com> said "hi" & 'bye' ]]> done"""
    document = render_message(text)
    assert "&amp;" in document and "&lt;" in document and "&gt;" in document
    assert "&quot;" in document and "&apos;" in document
    assert "]]>" not in document
    assert message_text(document) == text


def test_markup_cannot_be_injected() -> None:
    text = "</Message><Redirect>https://evil.example</Redirect><Message>"
    document = render_message(text)
    root = parse(document)
    assert [child.tag for child in root] == ["Message"]
    assert message_text(document) == text


def test_illegal_xml_characters_are_dropped() -> None:
    text = "a\x00b\x01c\x08d\x0be\x0cf\x1fg\ud800h\udfffi\ufffej\uffffk"
    assert message_text(render_message(text)) == "abcdefghijk"


def test_text_of_only_illegal_characters_gives_the_empty_response() -> None:
    assert render_message("\x00\x01\ufffe") == DECL + "<Response/>"


def test_whitespace_and_line_endings_round_trip() -> None:
    text = "line1\r\nline2\rline3\n\ttabbed  "
    document = render_message(text)
    assert "&#13;" in document
    assert message_text(document) == text


def test_non_ascii_round_trips() -> None:
    text = "Zoë met 山田 at the café 🎉 \U0010fffd"
    assert message_text(render_message(text)) == text


def test_xml_text_escapes_without_wrapping() -> None:
    assert xml_text("a<b>&\x00") == "a&lt;b&gt;&amp;"


@given(st.text())
def test_any_text_renders_well_formed_and_round_trips_legal_characters(text: str) -> None:
    document = render_message(text)
    legal = "".join(ch for ch in text if is_xml_char(ch))
    if not legal:
        assert document == DECL + "<Response/>"
    else:
        assert message_text(document) == legal
    document.encode("utf-8")  # never contains lone surrogates
