"""Parsing Twilio's inbound-message form."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enrich.core.inbound import (
    MAX_BODY_CHARS,
    InboundMessage,
    InboundParseError,
    MediaItem,
    parse_inbound,
)

SMS_SID = "SM" + "0123456789abcdef" * 2
MMS_SID = "MM" + "0123456789ABCDEF" * 2
ACCOUNT = "AC" + "f" * 32
MEDIA_BASE = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Messages/{MMS_SID}/Media"

Form = list[tuple[str, str]]


def sms_form(**overrides: str) -> Form:
    """A realistic SMS webhook form, as Twilio sends it (including fields we ignore)."""
    fields = {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": SMS_SID,
        "NumMedia": "0",
        "ToCity": "SAN FRANCISCO",
        "FromZip": "94105",
        "SmsSid": SMS_SID,
        "FromState": "CA",
        "SmsStatus": "received",
        "FromCity": "SAN FRANCISCO",
        "Body": "Met Ana at the conference, works at Acme",
        "FromCountry": "US",
        "To": "+14155550199",
        "ToZip": "94107",
        "NumSegments": "1",
        "MessageSid": SMS_SID,
        "AccountSid": ACCOUNT,
        "From": "+14155550100",
        "ApiVersion": "2010-04-01",
    }
    fields.update(overrides)
    return list(fields.items())


def mms_form(count: int, body: str = "photos") -> Form:
    form = [(n, v) for n, v in sms_form(Body=body, NumMedia=str(count), MessageSid=MMS_SID)]
    for i in range(count):
        form.append((f"MediaUrl{i}", f"{MEDIA_BASE}/ME{i:032x}"))
        form.append((f"MediaContentType{i}", ["image/jpeg", "audio/amr", "text/vcard"][i % 3]))
    return form


def without(form: Form, name: str) -> Form:
    return [(n, v) for n, v in form if n != name]


def replaced(form: Form, name: str, value: str) -> Form:
    return [(n, value if n == name else v) for n, v in form]


def reason_of(form: Form) -> str:
    with pytest.raises(InboundParseError) as info:
        parse_inbound(form)
    assert str(info.value) == info.value.reason
    return info.value.reason


# --- happy paths -----------------------------------------------------------------


def test_sms() -> None:
    msg = parse_inbound(sms_form())
    assert msg.message_sid == SMS_SID
    assert msg.account_sid == ACCOUNT
    assert msg.from_number == "+14155550100"
    assert msg.to_number == "+14155550199"
    assert msg.body == "Met Ana at the conference, works at Acme"
    assert msg.num_media == 0
    assert msg.media == ()
    assert msg.num_segments == 1
    assert (msg.from_city, msg.from_state, msg.from_zip, msg.from_country) == (
        "SAN FRANCISCO",
        "CA",
        "94105",
        "US",
    )
    assert msg.extra["ApiVersion"] == "2010-04-01"
    assert msg.extra["SmsSid"] == SMS_SID
    assert "Body" not in msg.extra and "MessageSid" not in msg.extra


def test_mms_with_three_items_in_index_order() -> None:
    form = mms_form(3)
    form.reverse()  # field order on the wire must not matter
    msg = parse_inbound(form)
    assert msg.message_sid == MMS_SID
    assert msg.num_media == 3
    assert msg.media == (
        MediaItem(0, f"{MEDIA_BASE}/ME{0:032x}", "image/jpeg"),
        MediaItem(1, f"{MEDIA_BASE}/ME{1:032x}", "audio/amr"),
        MediaItem(2, f"{MEDIA_BASE}/ME{2:032x}", "text/vcard"),
    )
    assert not any(k.startswith("Media") for k in msg.extra)


def test_mms_with_ten_items() -> None:
    assert len(parse_inbound(mms_form(10)).media) == 10


def test_mms_with_empty_body() -> None:
    msg = parse_inbound(mms_form(1, body=""))
    assert msg.body == ""
    assert msg.media[0].content_type == "image/jpeg"


def test_mms_without_body_field() -> None:
    assert parse_inbound(without(mms_form(1), "Body")).body == ""


def test_minimal_form() -> None:
    form = [("MessageSid", SMS_SID), ("AccountSid", ACCOUNT), ("From", "+1"), ("To", "+2"),
            ("Body", "hi")]  # fmt: skip
    msg = parse_inbound(form)
    assert msg.num_media == 0  # missing NumMedia counts as none
    assert msg.num_segments is None
    assert msg.from_city is None
    assert dict(msg.extra) == {}


def test_empty_geo_fields_are_none() -> None:
    msg = parse_inbound(sms_form(FromCity="", FromState="", FromZip="", FromCountry=""))
    assert (msg.from_city, msg.from_state, msg.from_zip, msg.from_country) == (None,) * 4


def test_body_keeps_newlines_tabs_and_unicode_exactly() -> None:
    body = "Line 1\r\nLine 2\tTabbed 🎉 Zoë\u200b"
    assert parse_inbound(sms_form(Body=body)).body == body


def test_body_at_the_limit() -> None:
    body = "é" * MAX_BODY_CHARS
    assert parse_inbound(sms_form(Body=body)).body == body


def test_content_type_with_parameters_and_http_media_url() -> None:
    form = replaced(mms_form(1), "MediaContentType0", "text/plain; charset=utf-8")
    form = replaced(form, "MediaUrl0", "http://127.0.0.1:8080/media/ME1")
    item = parse_inbound(form).media[0]
    assert item.content_type == "text/plain; charset=utf-8"
    assert item.url == "http://127.0.0.1:8080/media/ME1"


def test_unknown_fields_are_kept_first_value_wins_and_never_fail() -> None:
    form = [*sms_form(), ("BrandNewField", "1"), ("BrandNewField", "2"), ("", "x"),
            ("MediaUrlExpiry", "soon"), ("messagesid", "lowercase is another field"),
            ("Weird\x00Name", "\x00\ud800")]  # fmt: skip
    msg = parse_inbound(form)
    assert msg.extra["BrandNewField"] == "1"
    assert msg.extra["MediaUrlExpiry"] == "soon"
    assert msg.extra["messagesid"] == "lowercase is another field"
    assert msg.message_sid == SMS_SID


def test_result_is_immutable() -> None:
    msg = parse_inbound(sms_form())
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.body = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        msg.extra["x"] = "y"  # type: ignore[index]
    assert isinstance(msg, InboundMessage)
    assert hash(msg) == hash(parse_inbound(sms_form()))


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        (without(sms_form(), "MessageSid"), "missing MessageSid"),
        (sms_form(MessageSid=""), "missing MessageSid"),
        ([*sms_form(), ("MessageSid", SMS_SID)], "duplicated MessageSid"),
        (sms_form(MessageSid="SM123"), "MessageSid must be SM or MM followed by 32 hex digits"),
        (sms_form(MessageSid="ME" + "a" * 32), "MessageSid must be SM or MM"),
        (sms_form(MessageSid="SM" + "g" * 32), "MessageSid must be SM or MM"),
        (sms_form(MessageSid="sm" + "a" * 32), "MessageSid must be SM or MM"),
        (sms_form(MessageSid=SMS_SID + "\n"), "MessageSid must be SM or MM"),
        (sms_form(MessageSid=SMS_SID + "0"), "MessageSid must be SM or MM"),
        (without(sms_form(), "AccountSid"), "missing AccountSid"),
        (sms_form(AccountSid="AC123"), "AccountSid must be AC followed by 32 hex digits"),
        (without(sms_form(), "From"), "missing From"),
        (sms_form(From=""), "missing From"),
        ([*sms_form(), ("From", "+14155550111")], "duplicated From"),
        (sms_form(From="+1415\n5550100"), "From contains control or invalid characters"),
        (sms_form(From="+1415\x005550100"), "From contains control or invalid characters"),
        (sms_form(From="+1" * 200), "From is longer than 256 characters"),
        (without(sms_form(), "To"), "missing To"),
        (sms_form(To="+1\x7f"), "To contains control or invalid characters"),
        (sms_form(Body="x" * (MAX_BODY_CHARS + 1)), "Body is longer than 1600 characters"),
        (sms_form(Body="a\x00b"), "Body contains NUL or invalid characters"),
        (sms_form(Body="a\udc80b"), "Body contains NUL or invalid characters"),
        (sms_form(Body=""), "message has neither Body nor media"),
        (without(sms_form(), "Body"), "message has neither Body nor media"),
        ([*sms_form(), ("Body", "again")], "duplicated Body"),
        (sms_form(NumMedia="11"), "NumMedia must be an integer from 0 to 10"),
        (sms_form(NumMedia="-1"), "NumMedia must be an integer from 0 to 10"),
        (sms_form(NumMedia=" 1"), "NumMedia must be an integer from 0 to 10"),
        (sms_form(NumMedia="1_0"), "NumMedia must be an integer from 0 to 10"),
        (sms_form(NumMedia="\u0661"), "NumMedia must be an integer from 0 to 10"),
        (sms_form(NumMedia=""), "NumMedia must be an integer from 0 to 10"),
        (sms_form(NumMedia="9" * 5000), "NumMedia must be an integer from 0 to 10"),
        (sms_form(NumMedia="zero"), "NumMedia must be an integer from 0 to 10"),
        (sms_form(NumSegments="x"), "NumSegments must be an integer from 0 to 999"),
        (sms_form(FromCity="San\nFrancisco"), "FromCity contains control or invalid characters"),
        (sms_form(FromZip="9" * 300), "FromZip is longer than 256 characters"),
    ],
)
def test_field_errors(form: Form, expected: str) -> None:
    assert reason_of(form).startswith(expected)


def test_num_media_larger_than_the_media_present() -> None:
    form = replaced(mms_form(2), "NumMedia", "3")
    assert reason_of(form) == "NumMedia is 3 but 2 MediaUrl fields are present"


def test_num_media_smaller_than_the_media_present() -> None:
    form = replaced(mms_form(2), "NumMedia", "1")
    assert reason_of(form) == "NumMedia is 1 but 2 MediaUrl fields are present"


def test_media_without_num_media() -> None:
    form = without(mms_form(1), "NumMedia")
    assert reason_of(form) == "NumMedia is 0 but 1 MediaUrl fields are present"


def test_media_index_gap() -> None:
    form = [(n.replace("1", "2") if n.startswith("Media") else n, v) for n, v in mms_form(2)]
    assert reason_of(form) == "MediaUrl indices must be exactly 0 to 1"


def test_media_index_beyond_the_limit() -> None:
    form = [(n.replace("Url0", "Url10").replace("Type0", "Type10"), v) for n, v in mms_form(1)]
    assert reason_of(form) == "MediaUrl indices must be exactly 0 to 0"


@pytest.mark.parametrize("name", ["MediaUrl01", "MediaUrl100", "MediaUrl" + "9" * 5000])
def test_non_canonical_or_huge_media_index(name: str) -> None:
    form = [*sms_form(), (name, "https://example.com/x")]
    assert reason_of(form) == "MediaUrl field has a malformed or out-of-range index"


def test_non_canonical_content_type_index() -> None:
    form = [*mms_form(1), ("MediaContentType00", "image/png")]
    assert reason_of(form) == "MediaContentType field has a malformed or out-of-range index"


def test_duplicated_media_url() -> None:
    form = [*mms_form(1), ("MediaUrl0", f"{MEDIA_BASE}/ME2")]
    assert reason_of(form) == "duplicated MediaUrl0"


def test_duplicated_media_content_type() -> None:
    form = [*mms_form(1), ("MediaContentType0", "image/png")]
    assert reason_of(form) == "duplicated MediaContentType0"


def test_media_url_without_content_type() -> None:
    form = without(mms_form(2), "MediaContentType1")
    assert reason_of(form) == "MediaUrl1 has no MediaContentType1"


def test_content_type_without_media_url() -> None:
    form = [*mms_form(1), ("MediaContentType1", "image/png")]
    assert reason_of(form) == "MediaContentType1 has no matching MediaUrl1"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/2010-04-01/Accounts/AC/Media/ME1", "MediaUrl0 must be an absolute http(s) URL"),
        ("ftp://example.com/x", "MediaUrl0 must be an absolute http(s) URL"),
        ("file:///etc/passwd", "MediaUrl0 must be an absolute http(s) URL"),
        ("javascript:alert(1)", "MediaUrl0 must be an absolute http(s) URL"),
        ("https:///no-host", "MediaUrl0 must be an absolute http(s) URL"),
        ("", "MediaUrl0 must be printable ASCII without spaces"),
        ("https://example.com/a b", "MediaUrl0 must be printable ASCII without spaces"),
        ("https://example.com/\n", "MediaUrl0 must be printable ASCII without spaces"),
        ("https://exämple.com/x", "MediaUrl0 must be printable ASCII without spaces"),
        ("https://example.com:99999/x", "MediaUrl0 is not a valid URL"),
        ("https://[::1/x", "MediaUrl0 is not a valid URL"),
        ("https://user:pw@api.twilio.com/x", "MediaUrl0 must not contain credentials"),
        ("https://example.com/" + "a" * 2048, "MediaUrl0 is longer than 2048 characters"),
    ],
)
def test_bad_media_urls(url: str, expected: str) -> None:
    assert reason_of(replaced(mms_form(1), "MediaUrl0", url)) == expected


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("", "MediaContentType0 is not a type/subtype media type"),
        ("jpeg", "MediaContentType0 is not a type/subtype media type"),
        ("image/", "MediaContentType0 is not a type/subtype media type"),
        ("image /jpeg", "MediaContentType0 is not a type/subtype media type"),
        ("image/jpeg\r\nX-Injected: 1", "MediaContentType0 contains control or invalid characters"),
        ("image/" + "x" * 300, "MediaContentType0 is longer than 255 characters"),
    ],
)
def test_bad_content_types(content_type: str, expected: str) -> None:
    form = replaced(mms_form(1), "MediaContentType0", content_type)
    assert reason_of(form) == expected


def test_reasons_never_contain_values() -> None:
    secret_number = "+14155550123"
    secret_body = "my secret"
    forms = [
        sms_form(From=secret_number + "\n", Body=secret_body),
        sms_form(From=secret_number, Body=secret_body + "\x00"),
        sms_form(From=secret_number, Body=secret_body, NumMedia=secret_number),
        sms_form(MessageSid=secret_body),
    ]
    for form in forms:
        reason = reason_of(form)
        assert secret_number not in reason and "0123" not in reason
        assert secret_body not in reason


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="missing From"):
        parse_inbound(without(sms_form(), "From"))


# --- fuzzing ---------------------------------------------------------------------

FIELD_NAMES = [
    "MessageSid", "AccountSid", "From", "To", "Body", "NumMedia", "NumSegments",
    "FromCity", "FromState", "FromZip", "FromCountry", "MediaUrl0", "MediaUrl1",
    "MediaUrl2", "MediaUrl01", "MediaContentType0", "MediaContentType1", "Other",
]  # fmt: skip
interesting_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [SMS_SID, MMS_SID, ACCOUNT, "0", "1", "2", "10", "image/png", f"{MEDIA_BASE}/ME1"]
    ),
    st.sampled_from(["https://[::1", "http://h:99999/", "", "\x00", "\ud800"]),
)


@given(
    st.lists(
        st.tuples(st.sampled_from(FIELD_NAMES) | st.text(max_size=20), interesting_values),
        max_size=25,
    )
)
def test_arbitrary_forms_parse_or_raise_inbound_parse_error(form: Form) -> None:
    try:
        msg = parse_inbound(form)
    except InboundParseError as exc:
        assert exc.reason
    else:
        assert msg.num_media == len(msg.media)
        assert [m.index for m in msg.media] == list(range(msg.num_media))
        assert msg.body or msg.media


@given(
    st.integers(min_value=0, max_value=10),
    st.permutations(list(range(30))),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=MAX_BODY_CHARS),
)
def test_valid_forms_always_parse(count: int, order: list[int], body: str) -> None:
    form = mms_form(count, body=body)
    shuffled = [form[i] for i in order if i < len(form)] + form[30:]
    if not body and not count:
        assert reason_of(shuffled) == "message has neither Body nor media"
        return
    msg = parse_inbound(shuffled)
    assert msg.body == body
    assert [m.url for m in msg.media] == [f"{MEDIA_BASE}/ME{i:032x}" for i in range(count)]
