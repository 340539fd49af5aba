"""vCard parsing: every dialect phones send, and never an exception."""

from __future__ import annotations

import codecs
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from enrich.media.vcard import (
    MAX_CARDS,
    MAX_INPUT_BYTES,
    MAX_INPUT_CHARS,
    MAX_VALUE_CHARS,
    MAX_VALUES_PER_FIELD,
    VCardContact,
    decode_vcard_bytes,
    parse_vcards,
)

MEDIA = Path(__file__).resolve().parent.parent / "fixtures" / "media"


def test_fixture_contact() -> None:
    text = decode_vcard_bytes((MEDIA / "contact.vcf").read_bytes())
    assert parse_vcards(text) == [
        VCardContact(
            full_name="Daniel Okafor",
            given_name="Daniel",
            family_name="Okafor",
            organization="Northwind Traders",
            title="Head of Partnerships",
            phones=("+1 503 555 0142",),
            emails=("daniel.okafor@example.com",),
            addresses=("12 Harbor Way, Portland, OR, 97209, USA",),
            note="Met at the design meetup. Interested in climbing.",
            url=None,
        )
    ]


def test_vcard_21_quoted_printable_bare_params_and_soft_breaks() -> None:
    text = (
        "BEGIN:VCARD\r\n"
        "VERSION:2.1\r\n"
        "N;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:M=C3=BCller;J=C3=BCrgen;;;\r\n"
        "FN;CHARSET=UTF-8;QUOTED-PRINTABLE:J=C3=BCrgen M=C3=BCller\r\n"
        "TEL;CELL;VOICE:+49 170 1234567\r\n"
        "TEL;WORK:+49 30 987654\r\n"
        "NOTE;ENCODING=QUOTED-PRINTABLE;CHARSET=ISO-8859-1:Caf=E9 owner, line one=0D=0A=\r\n"
        "line two is=\r\n"
        " still the note\r\n"
        "ADR;HOME;ENCODING=QUOTED-PRINTABLE:;;Hauptstra=C3=9Fe 1;Berlin;;10115;Germany\r\n"
        "PHOTO;ENCODING=BASE64;TYPE=JPEG:/9j/4AAQSkZJRgABAQ\r\n"
        " AAAQABAAD\r\n"
        "END:VCARD\r\n"
    )
    (card,) = parse_vcards(text)
    assert card.full_name == "Jürgen Müller"
    assert (card.given_name, card.family_name) == ("Jürgen", "Müller")
    assert card.phones == ("+49 170 1234567", "+49 30 987654")
    assert card.note == "Café owner, line one\nline two is still the note"
    assert card.addresses == ("Hauptstraße 1, Berlin, 10115, Germany",)


def test_vcard_21_folding_keeps_the_whitespace() -> None:
    # 2.1 folds *before* existing whitespace; 3.0 inserts one that must go.
    v21 = "BEGIN:VCARD\nVERSION:2.1\nNOTE:first\n part\nEND:VCARD\n"
    v30 = "BEGIN:VCARD\nVERSION:3.0\nNOTE:first\n part\nEND:VCARD\n"
    assert parse_vcards(v21)[0].note == "first part"
    assert parse_vcards(v30)[0].note == "firstpart"


def test_vcard_30_escapes_groups_and_folding() -> None:
    text = (
        "BEGIN:VCARD\n"
        "VERSION:3.0\n"
        "FN:Smith\\, Anna\n"
        "N:Smith;Anna;Marie,Louise;Dr.;PhD\n"
        "ORG:Acme\\; Sons;R&D\n"
        "item1.TEL;type=pref:+1 (555) 010-\n"
        " 0001\n"
        "item1.X-ABLabel:mobile\n"
        "item2.EMAIL;type=INTERNET:anna@example.com\n"
        "EMAIL:ANNA@example.com\n"
        "EMAIL:anna@example.com\n"
        "NOTE:Line one\\nLine two\\Nthree\\\\four\\;five\\,six\\x\n"
        "URL:https://example.com/anna\n"
        "ADR;TYPE=home:;Apt 4;1 Main St\\nBuilding B;Springfield;IL;62701;\n"
        "END:VCARD\n"
    )
    (card,) = parse_vcards(text)
    assert card.full_name == "Smith, Anna"
    assert (card.given_name, card.family_name) == ("Anna", "Smith")
    assert card.organization == "Acme; Sons, R&D"
    assert card.phones == ("+1 (555) 010-0001",)
    assert card.emails == ("anna@example.com", "ANNA@example.com")  # exact duplicates only
    assert card.note == "Line one\nLine two\nthree\\four;five,six\\x"
    assert card.url == "https://example.com/anna"
    assert card.addresses == ("Apt 4, 1 Main St, Building B, Springfield, IL, 62701",)


def test_vcard_40_uris_and_quoted_parameters() -> None:
    text = (
        "BEGIN:VCARD\r\n"
        "VERSION:4.0\r\n"
        'FN;ALTID="1;x:y":Kim Lee\r\n'
        'TEL;VALUE=uri;TYPE="voice,cell";PREF=1:tel:+1-555-555-0100\r\n'
        "EMAIL;TYPE=work:mailto:kim@example.org\r\n"
        'ADR;LABEL="1 Main St\\nTown: here";TYPE=work:;;1 Main St;Town;;;\r\n'
        "TITLE:CTO\r\n"
        "END:VCARD\r\n"
    )
    (card,) = parse_vcards(text)
    assert card.full_name == "Kim Lee"
    assert card.phones == ("+1-555-555-0100",)
    assert card.emails == ("kim@example.org",)
    assert card.addresses == ("1 Main St, Town",)
    assert card.title == "CTO"


def test_full_name_falls_back_to_n() -> None:
    text = "BEGIN:VCARD\nN:Doe;Jane;Q;Ms.;Jr.\nEND:VCARD"
    assert parse_vcards(text)[0].full_name == "Ms. Jane Q Doe Jr."
    text = "BEGIN:VCARD\nN:;;;;\nORG:Only Org Inc\nEND:VCARD"
    (card,) = parse_vcards(text)
    assert (card.full_name, card.organization) == (None, "Only Org Inc")


def test_multiple_cards_cr_line_endings_and_garbage_between() -> None:
    text = (
        "garbage before\r"
        "BEGIN:VCARD\rFN:One\rEND:VCARD\r"
        "random: junk line\r\x00\x01\r"
        "begin:vcard\rfn:Two\rtel:123\rend:vcard\r"
        "BEGIN:VCARD\rEND:VCARD\r"  # empty: dropped
        "FN:Outside any card\r"
        "BEGIN:VCARD\rFN:Three (no END)"
    )
    cards = parse_vcards(text)
    assert [c.full_name for c in cards] == ["One", "Two", "Three (no END)"]
    assert cards[1].phones == ("123",)


def test_nested_agent_card_is_skipped() -> None:
    text = (
        "BEGIN:VCARD\nVERSION:2.1\nFN:Boss\n"
        "AGENT:\nBEGIN:VCARD\nFN:Assistant\nTEL:999\nEND:VCARD\n"
        "TEL:111\nEND:VCARD\n"
    )
    assert parse_vcards(text) == [VCardContact(full_name="Boss", phones=("111",))]


def test_unknown_charset_and_non_text_codecs_fall_back() -> None:
    for charset in ("X-NOT-A-CHARSET", "base64", "idna", "rot13", "utf\x00"):
        text = f"BEGIN:VCARD\nFN;ENCODING=QUOTED-PRINTABLE;CHARSET={charset}:Zo=C3=AB\nEND:VCARD"
        assert parse_vcards(text)[0].full_name == "Zoë", charset


def test_control_characters_and_surrogates_are_cleaned() -> None:
    text = "BEGIN:VCARD\nFN:Bad\x00Na\x1bme\ud800 \t x\nNOTE:a\x07\\n\\n  b  \nEND:VCARD"
    (card,) = parse_vcards(text)
    assert card.full_name == "BadName? x"
    assert card.note == "a\nb"
    assert card.full_name.encode("utf-8")  # storable


def test_garbage_returns_nothing() -> None:
    for text in ["", "hello", "BEGIN:VCARD", ":::\n;;;\n", "\ufeff", "END:VCARD\nEND:VCARD"]:
        assert parse_vcards(text) == []


def test_caps_cards_values_and_input() -> None:
    one = "BEGIN:VCARD\nFN:Person {}\nEND:VCARD\n"
    cards = parse_vcards("".join(one.format(i) for i in range(MAX_CARDS + 10)))
    assert len(cards) == MAX_CARDS
    assert cards[-1].full_name == f"Person {MAX_CARDS - 1}"

    many = "".join(f"TEL:{i}\nEMAIL:{i}@x.example\n" for i in range(MAX_VALUES_PER_FIELD + 5))
    long_note = "n" * (MAX_VALUE_CHARS * 3)
    (card,) = parse_vcards(f"BEGIN:VCARD\n{many}NOTE:{long_note}\nEND:VCARD")
    assert len(card.phones) == len(card.emails) == MAX_VALUES_PER_FIELD
    assert card.note is not None and len(card.note) == MAX_VALUE_CHARS

    # A card starting past the input cap is never seen.
    padding = "X-PAD:" + "p" * MAX_INPUT_CHARS + "\n"
    assert parse_vcards(padding + one.format("late")) == []


def test_decode_vcard_bytes_encodings() -> None:
    text = "BEGIN:VCARD\nFN:Zoë\nEND:VCARD\n"
    for data in (
        text.encode("utf-8"),
        codecs.BOM_UTF8 + text.encode("utf-8"),
        codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
        codecs.BOM_UTF16_BE + text.encode("utf-16-be"),
        text.encode("utf-16-le"),  # no BOM, recognised by "B\0E\0"
        text.encode("utf-16-be"),
        text.encode("cp1252"),  # not valid UTF-8: the legacy code page
    ):
        assert parse_vcards(decode_vcard_bytes(data))[0].full_name == "Zoë", data[:4]


def test_decode_vcard_bytes_cap_does_not_garble_a_cut_character() -> None:
    data = b"a" * (MAX_INPUT_BYTES - 1) + "ë".encode() + b"tail"
    decoded = decode_vcard_bytes(data)
    assert decoded == "a" * (MAX_INPUT_BYTES - 1)


@settings(max_examples=300)
@given(st.text(max_size=400))
def test_never_raises_on_any_text(text: str) -> None:
    for card in parse_vcards(text):
        assert card != VCardContact()


VCARD_LINES = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "BEGIN:VCARD",
                "END:VCARD",
                "VERSION:2.1",
                "VERSION:3.0",
                " folded",
                "\tfolded",
                "N:a;b;c",
                "FN;QUOTED-PRINTABLE:=C3=",
                'TEL;TYPE="a:b":1',
                "item1.EMAIL:x@y",
                "ADR:;;\\",
                "NOTE:\\",
                "ORG:;;;",
                "FN;CHARSET=idna;ENCODING=QP:=FF=",
                'X:"',
                "=",
            ]
        ),
        st.text(max_size=30),
    ),
    max_size=30,
)


@settings(max_examples=300)
@given(VCARD_LINES, st.sampled_from(["\n", "\r\n", "\r"]))
def test_never_raises_on_vcard_like_text(lines: list[str], newline: str) -> None:
    for card in parse_vcards(newline.join(lines)):
        for value in (card.full_name, card.note, *card.phones, *card.emails, *card.addresses):
            if value is not None:
                value.encode("utf-8")  # no lone surrogates
                assert "\x00" not in value


@given(st.binary(max_size=300))
def test_decode_bytes_never_raises(data: bytes) -> None:
    parse_vcards(decode_vcard_bytes(data))


def test_inputs_at_the_cap_are_handled() -> None:
    assert MAX_INPUT_CHARS >= 1_000_000
    big = "BEGIN:VCARD\nFN:Big\n" + "NOTE:" + "x" * (MAX_INPUT_CHARS * 2) + "\nEND:VCARD"
    (card,) = parse_vcards(big)
    assert card.full_name == "Big"
