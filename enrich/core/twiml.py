"""TwiML responses for the messaging webhook.

Twilio reads our answer as XML: ``<Response/>`` means "accepted, say nothing",
``<Response><Message>text</Message></Response>`` sends ``text`` back to the
sender. The reply text often echoes user-derived data (names, tags), so it is
escaped, and characters that XML 1.0 forbids outright (most C0 controls, lone
surrogates, U+FFFE/U+FFFF) are dropped: one stray byte would otherwise make the
whole document unparseable and Twilio would report an error instead of replying.

Carriage returns are written as ``&#13;`` because an XML parser turns a literal
CR (or CRLF) into LF; escaping it is the only way the text round-trips exactly.
"""

from __future__ import annotations

import re

__all__ = ["TWIML_CONTENT_TYPE", "XML_DECLARATION", "render_message", "xml_text"]

TWIML_CONTENT_TYPE = "text/xml; charset=utf-8"
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'

# Complement of XML 1.0's Char production:
# #x9 | #xA | #xD | [#x20-#xD7FF] | [#xE000-#xFFFD] | [#x10000-#x10FFFF]
_ILLEGAL_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",  # also keeps "]]>" out of character data
        '"': "&quot;",
        "'": "&apos;",
        "\r": "&#13;",
    }
)

_EMPTY_RESPONSE = f"{XML_DECLARATION}<Response/>"


def xml_text(text: str) -> str:
    """*text* as XML character data: illegal characters dropped, the rest escaped."""
    return _ILLEGAL_XML_CHARS.sub("", text).translate(_ESCAPES)


def render_message(text: str | None) -> str:
    """A complete TwiML document replying with *text*, or an empty ``<Response/>``.

    ``None``, an empty string, or text made only of characters XML cannot carry
    all give the empty response: ``<Message></Message>`` would ask Twilio to send
    an empty SMS, which it rejects.
    """
    if not text:
        return _EMPTY_RESPONSE
    escaped = xml_text(text)
    if not escaped:
        return _EMPTY_RESPONSE
    return f"{XML_DECLARATION}<Response><Message>{escaped}</Message></Response>"
