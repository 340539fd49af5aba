"""Enrichment extraction: the rule-based extractor, row flattening and summaries."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enrich.extraction import (
    ITEM_TYPES,
    Contact,
    Extraction,
    Extractor,
    ItemRow,
    RuleExtractor,
    default_extractor,
    summarize,
    to_rows,
)
from enrich.extraction import gazetteer as gz
from enrich.extraction.rules import (
    CONTEXT_MAX_CHARS,
    MAX_INPUT_CHARS,
    MAX_ITEMS_PER_KIND,
    NOTE_MAX_CHARS,
)

MEDIA = Path(__file__).resolve().parent.parent / "fixtures" / "media"
TRANSCRIPTS: dict[str, str] = json.loads((MEDIA / "transcripts.json").read_text())

EXTRACTOR = RuleExtractor()


def extract(text: str) -> Extraction:
    return EXTRACTOR.extract(text)


def names(extraction: Extraction) -> list[str]:
    return [c.name for c in extraction.contacts]


def speechify(text: str) -> str:
    """What an offline speech engine gives back: lower case, no punctuation."""
    return " ".join(re.sub(r"[^\w\s']", " ", text).lower().split())


# --- realistic notes, table-driven -------------------------------------------------


@dataclass(frozen=True)
class Case:
    text: str
    contacts: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    # Words that must not show up as (part of) any contact name.
    not_names: tuple[str, ...] = field(default=())


CASES: list[Case] = [
    Case(
        "Met Sarah Johnson at the coffee shop in Portland, she loves hiking",
        contacts=("Sarah Johnson",),
        locations=("Portland",),
        tags=("hiking",),
        not_names=("Met", "Portland"),
    ),
    Case(
        "lunch w/ Mike from Google in Seattle #climbing",
        contacts=("Mike",),
        locations=("Seattle",),
        organizations=("Google",),
        tags=("climbing",),
    ),
    Case(
        "Meeting at 3pm",
        dates=("3pm",),
        not_names=("Meeting",),
    ),
    Case(
        "The weather is nice today. I think I'll go hiking.",
        dates=("today",),
        not_names=("The", "I"),
    ),
    Case(
        "Dinner with Sarah and Mike on Friday at 7pm",
        contacts=("Sarah", "Mike"),
        dates=("Friday at 7pm",),
        not_names=("Dinner", "Friday"),
    ),
    Case(
        "Talked to Dr. Smith about the results, email jane.doe@example.com or call 503-555-0199",
        contacts=("Dr. Smith",),
        emails=("jane.doe@example.com",),
        phones=("+15035550199",),
    ),
    Case(
        "Flight to Denver on March 3 #travel",
        locations=("Denver",),
        tags=("travel",),
        dates=("March 3",),
        not_names=("March", "Flight"),
    ),
    Case("Remember to buy milk"),
    Case(
        "Ran into James at Starbucks, he works for Acme Corp and is a huge Seahawks fan",
        contacts=("James",),
        organizations=("Starbucks", "Acme Corp"),
        tags=("Seahawks",),
    ),
    Case(
        "Coffee with my friend Anna tomorrow morning in New York",
        contacts=("Anna",),
        locations=("New York",),
        dates=("tomorrow morning",),
        not_names=("Coffee",),
    ),
    Case("Sarah loves hiking", contacts=("Sarah",), tags=("hiking",)),
    Case("Happy Birthday!", not_names=("Happy", "Birthday")),
    Case("April showers bring May flowers", not_names=("April", "May")),
    Case(
        "met jen at the gym she is into rock climbing and yoga",
        contacts=("Jen",),
        tags=("rock climbing", "yoga"),
        not_names=("Gym",),
    ),
    Case(
        "Priya's birthday is 3/14, she moved to San Francisco last year",
        contacts=("Priya",),
        locations=("San Francisco",),
        dates=("3/14", "last year"),
    ),
    Case(
        "Interview at Stanford University on 2026-12-01 with Prof. Alan Turing",
        contacts=("Prof. Alan Turing",),
        organizations=("Stanford University",),
        dates=("2026-12-01",),
    ),
    Case(
        "MET SARAH IN LA AT NOON",
        contacts=("Sarah",),
        locations=("Los Angeles",),
        dates=("NOON",),
        not_names=("Met", "La"),
    ),
    Case(
        "Visited Portland Oregon with Tom",
        contacts=("Tom",),
        locations=("Portland", "Oregon"),
    ),
    Case("Great Day At The Beach", not_names=("Great", "Day", "Beach")),
    Case(
        "Lunch Tomorrow With Product Team",
        dates=("Tomorrow",),
        not_names=("Lunch", "Product", "Team"),
    ),
    Case("went hiking with friends", not_names=("Friends",)),
    Case("call me later", not_names=("Me", "Later")),
    Case("had coffee with the team", not_names=("The", "Team")),
    Case("i met him at work", not_names=("Him", "Work", "I")),
    Case(
        "Sarah Johnson - coffee shop - Portland",
        contacts=("Sarah Johnson",),
        locations=("Portland",),
    ),
    Case(
        "Met Jean-Luc Picard and Mary O'Brien at the conference",
        contacts=("Jean-Luc Picard", "Mary O'Brien"),
    ),
    Case("Apple pie recipe from grandma", not_names=("Apple",)),
    Case("She works at Apple now", organizations=("Apple",), not_names=("She",)),
    Case(
        "Met José García in México 🎉 loves salsa",
        contacts=("José García",),
        locations=("México",),
        tags=("salsa",),
    ),
    Case("Met 李雷 in Beijing", contacts=("李雷",), locations=("Beijing",)),
    Case("got a text from Sarah", contacts=("Sarah",), not_names=("Text",)),
    Case("Coffee w/ sarah at 10am", contacts=("Sarah",), dates=("10am",)),
    Case(
        "Office on the 3rd floor, the 3rd of May works",
        dates=("the 3rd of May",),
        not_names=("May", "Office"),
    ),
    Case("1/2 cup sugar"),
    Case("Met Austin at the bar", contacts=("Austin",)),
    Case("Moving to Austin next month", locations=("Austin",), dates=("next month",)),
    Case(
        "moved to boise last month",
        locations=("Boise",),
        dates=("last month",),
    ),
    Case(
        "Visiting Mom in Reading next weekend",
        locations=("Reading",),
        dates=("next weekend",),
        not_names=("Mom", "Visiting"),
    ),
    Case(
        "Note to self: John Smith's number is (415) 555-2671, he's into jazz",
        contacts=("John Smith",),
        tags=("jazz",),
        phones=("+14155552671",),
        not_names=("Note",),
    ),
    Case(
        "Saw him on Monday in March, then again on Sunday",
        dates=("Monday", "March", "Sunday"),
        not_names=("Monday", "March", "Sunday"),
    ),
    Case(
        "Caught up with Elena Rossi in London two weeks ago. She enjoys painting and "
        "photography and is training for the Berlin marathon",
        contacts=("Elena Rossi",),
        locations=("London", "Berlin"),
        tags=("painting", "photography", "Berlin marathon"),
        dates=("two weeks ago",),
    ),
    Case(
        "ping raj about the demo on tuesday, he works at microsoft",
        contacts=("Raj",),
        organizations=("Microsoft",),
        dates=("tuesday",),
    ),
    Case(
        "Follow up with Ana Lima (ana.lima@acme.io) in 2 weeks",
        contacts=("Ana Lima",),
        emails=("ana.lima@acme.io",),
        dates=("in 2 weeks",),
    ),
    Case(
        "Drinks at The Rusty Anchor with Carlos and Nina, Carlos plays guitar",
        contacts=("Carlos", "Nina"),
        organizations=("Rusty Anchor",),
        tags=("guitar",),
        not_names=("Drinks", "Rusty"),
    ),
    Case("ok thanks", not_names=("Ok", "Thanks")),
    Case("Going to the Taylor Swift concert with Emma", contacts=("Emma",)),
    Case(
        "Had a great time w/ Alex & Jordan at Joe's Pizza",
        contacts=("Alex", "Jordan"),
        not_names=("Pizza",),
    ),
    Case(
        "Met Sarah, Tom and Lee in Portland, Seattle & Boise",
        contacts=("Sarah", "Tom", "Lee"),
        locations=("Portland", "Seattle", "Boise"),
    ),
    Case(
        "Meeting With John Paul George Ringo Starr Tomorrow",
        dates=("Tomorrow",),
        not_names=("Meeting", "Ringo"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.text[:40] for c in CASES])
def test_realistic_notes(case: Case) -> None:
    result = extract(case.text)
    assert names(result) == list(case.contacts)
    assert list(result.locations) == list(case.locations)
    assert list(result.organizations) == list(case.organizations)
    assert list(result.tags) == list(case.tags)
    assert list(result.dates) == list(case.dates)
    assert list(result.emails) == list(case.emails)
    assert list(result.phones) == list(case.phones)
    for word in case.not_names:
        for name in names(result):
            assert word.casefold() not in name.casefold().split(), (word, name)


def test_the_table_is_big_enough() -> None:
    # The brief asks for at least 30 realistic notes, negatives included.
    assert len(CASES) >= 30
    assert sum(1 for c in CASES if not c.contacts) >= 10


# --- the voice-note transcripts, as written and as a speech engine outputs them -------

TRANSCRIPT_EXPECTATIONS = {
    "note1": ("Sarah Johnson", ("Portland",), ("Google",), ("hiking",)),
    "note2": ("Michael Chen", ("Seattle",), (), ("marathon",)),
    "note3": ("Priya Patel", ("Austin",), (), ("violin",)),
}


@pytest.mark.parametrize("lowercase", [False, True], ids=["written", "speech"])
@pytest.mark.parametrize("note", sorted(TRANSCRIPT_EXPECTATIONS))
def test_transcripts(note: str, lowercase: bool) -> None:
    text = TRANSCRIPTS[note]
    if lowercase:
        text = speechify(text)
    contact, locations, organizations, tags = TRANSCRIPT_EXPECTATIONS[note]
    result = extract(text)
    assert names(result) == [contact]
    assert result.locations == locations
    assert result.organizations == organizations
    assert result.tags == tags
    context = result.contacts[0].context
    assert context is not None
    # The pronoun sentence that follows belongs to the contact's context.
    assert tags[0] in context
    # Everything is somebody's context, so nothing is left over as a note.
    assert result.notes == ()


def test_note3_keeps_the_date_phrase() -> None:
    assert extract(TRANSCRIPTS["note3"]).dates == ("next week",)
    assert extract(speechify(TRANSCRIPTS["note3"])).dates == ("next week",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("met sarah at the gym", ["Sarah"]),
        ("lunch with michael chen tomorrow", ["Michael Chen"]),
        ("call priya about the invoice", ["Priya"]),
        ("had coffee with tomasz kowalski in chicago", ["Tomasz Kowalski"]),
        ("met with the team", []),
        ("call me back", []),
        ("met up with everyone", []),
        ("lunch with my sister", []),
        ("went hiking with sarah and mike", ["Sarah", "Mike"]),
        ("met sarah hiking", ["Sarah"]),
    ],
)
def test_lowercase_names_after_cues(text: str, expected: list[str]) -> None:
    assert names(extract(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("flew to new york city on monday", ("New York City",)),
        ("back in st. louis", ("St. Louis",)),
        ("we loved reading the book", ()),  # "reading" is only a place after a cue
        ("nice to meet you", ()),
        ("conference in nice next month", ("Nice",)),
        ("from sao paulo to rio de janeiro", ("Sao Paulo", "Rio de Janeiro")),
    ],
)
def test_lowercase_places(text: str, expected: tuple[str, ...]) -> None:
    assert extract(text).locations == expected


# --- contacts: context ------------------------------------------------------------


def test_contact_context_is_the_sentence_trimmed() -> None:
    text = "  Met Sarah Johnson at the coffee shop in Portland,   she loves hiking  "
    (contact,) = extract(text).contacts
    assert contact.context == "Met Sarah Johnson at the coffee shop in Portland, she loves hiking"


def test_context_continues_through_pronoun_sentences_only() -> None:
    text = (
        "Met Sarah at the gym. She just moved here. Her dog is huge. "
        "The gym was packed. She said hi again."
    )
    result = extract(text)
    assert names(result) == ["Sarah"]
    context = result.contacts[0].context
    assert context == "Met Sarah at the gym. She just moved here. Her dog is huge."
    # The unrelated sentence and everything after it are notes, not context.
    assert result.notes == ("The gym was packed.", "She said hi again.")


def test_a_pronoun_sentence_that_names_someone_else_is_not_context() -> None:
    result = extract("Met Sarah today. She introduced me to Mike Brown.")
    by_name = {c.name: c.context for c in result.contacts}
    assert by_name == {
        "Sarah": "Met Sarah today.",
        "Mike Brown": "She introduced me to Mike Brown.",
    }


def test_a_bare_name_has_no_context() -> None:
    assert extract("Sarah Johnson").contacts == (Contact("Sarah Johnson", None),)


def test_long_context_is_bounded_and_keeps_the_name() -> None:
    filler = "and then we talked about the weather for a while " * 20
    text = f"Yesterday {filler} before I met Sarah Johnson who {filler}"
    (contact,) = extract(text).contacts
    assert contact.name == "Sarah Johnson"
    assert contact.context is not None
    assert len(contact.context) <= CONTEXT_MAX_CHARS + 1
    assert "Sarah Johnson" in contact.context
    assert contact.context.startswith("…")
    assert contact.context.endswith("…")


def test_a_first_name_is_merged_into_the_full_name() -> None:
    result = extract("Met Sarah Johnson at the park. Sarah is a nurse.")
    assert names(result) == ["Sarah Johnson"]


def test_contacts_are_deduplicated_case_insensitively() -> None:
    assert names(extract("Met Mike today. Met MIKE again. Call mike later.")) == ["Mike"]


# --- notes -------------------------------------------------------------------------


def test_short_text_without_contacts_is_one_note() -> None:
    assert extract("  Pick up the dry cleaning\nbefore Friday  ").notes == (
        "Pick up the dry cleaning before Friday",
    )


@pytest.mark.parametrize("text", ["ok", "ok thanks", "lol", "#hiking", "503-555-0199", "  "])
def test_filler_and_pure_patterns_are_not_notes(text: str) -> None:
    assert extract(text).notes == ()


def test_long_text_without_contacts_is_split_into_sentences() -> None:
    sentence = "The quarterly numbers look better than expected overall"
    text = ". ".join([sentence] * 8) + "."
    notes = extract(text).notes
    assert notes == (sentence + ".",)  # deduplicated


def test_notes_are_bounded() -> None:
    text = "word " * 400  # one huge sentence with no contacts
    (note,) = extract(text).notes
    assert len(note) <= NOTE_MAX_CHARS
    assert note.endswith("…")


# --- patterns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call 415-555-2671", ("+14155552671",)),
        ("(206) 555-0142 or +44 20 7946 0958", ("+12065550142", "+442079460958")),
        ("212.736.5000 and again 212 736 5000", ("+12127365000",)),
        ("order 1234567890 shipped", ()),
        ("555-0100", ()),
        ("2026-12-01 and 3/14", ()),
    ],
)
def test_phones_are_e164(text: str, expected: tuple[str, ...]) -> None:
    assert extract(text).phones == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail Bob.Smith+news@mail.example.co.uk today", ("Bob.Smith+news@mail.example.co.uk",)),
        ("a@b.co, c@d.org.", ("a@b.co", "c@d.org")),
        ("not an email: @handle or foo@bar", ()),
    ],
)
def test_emails(text: str, expected: tuple[str, ...]) -> None:
    assert extract(text).emails == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see you tomorrow", ("tomorrow",)),
        ("next week works", ("next week",)),
        ("dinner on March 3", ("March 3",)),
        ("due 3/14", ("3/14",)),
        ("due 3/14/2026", ("3/14/2026",)),
        ("launch 2026-12-01", ("2026-12-01",)),
        ("free on Wednesday", ("Wednesday",)),
        ("back in a few weeks", ("in a few weeks",)),
        ("party on Dec. 24th, 2026", ("Dec. 24th, 2026",)),
        ("the day after tomorrow at 9:30 am", ("the day after tomorrow at 9:30 am",)),
        ("sometime in May", ("May",)),
        ("you may want to come", ()),
        ("50/50 chance", ()),
        ("room 2026-13-45", ()),
    ],
)
def test_dates_keep_the_matched_phrase(text: str, expected: tuple[str, ...]) -> None:
    assert extract(text).dates == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#Hiking #hiking #bbq", ("Hiking", "bbq")),
        ("#1 fan", ()),
        ("she loves hiking, camping and skiing", ("hiking", "camping", "skiing")),
        ("he likes Italian food", ("Italian food",)),
        ("enjoys reading on weekends", ("reading",)),
        ("she plays the violin", ("violin",)),
        ("he plays tennis", ("tennis",)),
        ("training for a marathon in May", ("marathon",)),
        ("is a Seahawks fan", ("Seahawks",)),
        ("big fan of jazz", ("jazz",)),
        ("they're really into board games", ("board games",)),
        ("moved into a new apartment", ()),
        ("I love you", ()),
        ("loves it", ()),
        ("she loves her dog", ("dog",)),
    ],
)
def test_interests_become_tags(text: str, expected: tuple[str, ...]) -> None:
    assert extract(text).tags == expected


# --- robustness ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\x00\x01\x02",
        "\ud800 lone surrogate \udfff",
        "😀" * 50,
        "Met 👩‍👩‍👧 Sarah ‍ at 🏖",
        "w/ w/o W/",
        "#",
        "@",
        "'s 's 's",
        "Dr. . . St.",
        "İstanbul ǅemal ß ﬁ",
        "\u2028\u2029\r\n\x85",
    ],
)
def test_odd_inputs_do_not_raise(text: str) -> None:
    result = extract(text)
    assert_clean(result)


ADVERSARIAL = {
    "at-signs": "a@" * 800,
    "long-locals": ("x" * 60 + "@") * 26,
    "deep-domain": "a@" + "b." * 799,
    "digits": "1" * 1600,
    "spaced-digits": "1 " * 800,
    "phones": "(415) 555-2671 " * 106,
    "names": "Sarah " * 266,
    "cues": "loves " * 266,
    "dots": ". " * 800,
    "hashes": "#a" * 800,
    "fractions": "1/1 " * 400,
    "urls": "http://" * 228,
    "capitals": "A " * 800,
    "titles": "Dr. " * 400,
    "shorthand": "w/ " * 533,
    "possessives": "'s " * 533,
    "and-chain": "Sarah and " * 160,
}


@pytest.mark.parametrize("text", ADVERSARIAL.values(), ids=ADVERSARIAL.keys())
def test_adversarial_sms_sized_inputs(text: str) -> None:
    assert len(text) <= 1600
    assert_clean(extract(text))


def test_items_per_kind_are_capped() -> None:
    text = " ".join(f"#tag{n}" for n in range(200))
    result = extract(text)
    assert len(result.tags) == MAX_ITEMS_PER_KIND
    assert result.tags[:2] == ("tag0", "tag1")


def test_inputs_past_the_cap_are_ignored() -> None:
    text = "x " * MAX_INPUT_CHARS + " Met Sarah Johnson in Portland"
    result = extract(text)
    assert result.contacts == ()
    assert result.locations == ()


def assert_clean(result: Extraction) -> None:
    """Every value is storable: stripped, non-empty, UTF-8, no NUL."""
    values = [c.name for c in result.contacts]
    values += [c.context for c in result.contacts if c.context is not None]
    values += [
        *result.organizations,
        *result.locations,
        *result.tags,
        *result.emails,
        *result.phones,
        *result.dates,
        *result.notes,
    ]
    for value in values:
        assert value
        assert value == value.strip()
        assert "\x00" not in value
        value.encode("utf-8")
    for name in names(result):
        assert name.casefold() not in {"i", "the", "a", "and", "me", "you"}
        assert not any(word.casefold() in gz.MONTHS for word in name.split())


WORDS = [
    "Met", "met", "Sarah", "sarah", "Johnson", "with", "w/", "call", "at", "from", "in",
    "Portland", "portland", "Google", "the", "The", "I", "loves", "hiking", "and", ",",
    ".", "!", "#tag", "she", "She", "works", "for", "Acme", "Corp", "is", "a", "fan",
    "March", "3", "3/14", "tomorrow", "at 3pm", "415-555-2671", "x@y.com", "Dr.", "St.",
    "New", "York", "Austin", "austin", "plays", "the", "violin", "into", "training",
    "😀", "José", "李雷", "'s", "Mike's", "\n", "van", "der", "Berg", "April", "May",
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=1600))
def test_never_raises_on_any_text(text: str) -> None:
    assert_clean(extract(text))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=300).map(" ".join))
def test_never_raises_on_wordy_text_and_is_deterministic(text: str) -> None:
    first = extract(text)
    assert_clean(first)
    assert extract(text) == first
    rows = to_rows(first)
    keys = [(r.item_type, r.value.casefold()) for r in rows]
    assert len(keys) == len(set(keys))


# --- the protocol -----------------------------------------------------------------


def test_default_extractor_is_the_rule_extractor() -> None:
    extractor = default_extractor()
    assert isinstance(extractor, RuleExtractor)
    assert isinstance(extractor, Extractor)
    assert extractor.name == "rules"


def test_another_extractor_plugs_in() -> None:
    class Fixed:
        name = "fixed"

        def extract(self, text: str) -> Extraction:
            return Extraction(tags=(text,))

    extractor: Extractor = Fixed()
    assert isinstance(extractor, Extractor)
    rows = to_rows(extractor.extract("anything"))
    assert rows == [ItemRow("tag", None, "anything")]


# --- to_dict, to_rows, summarize ------------------------------------------------------


def test_to_dict_has_the_product_schema_and_our_keys() -> None:
    result = extract("lunch w/ Mike from Google in Seattle #climbing, mike@example.com")
    data = result.to_dict()
    assert set(data) == {
        "contacts",
        "tags",
        "locations",
        "notes",
        "organizations",
        "emails",
        "phones",
        "dates",
    }
    assert data["contacts"] == [{"name": "Mike", "context": result.contacts[0].context}]
    assert data["tags"] == ["climbing"]
    assert data["locations"] == ["Seattle"]
    assert data["organizations"] == ["Google"]
    assert data["emails"] == ["mike@example.com"]
    json.dumps(data)


def test_empty_extraction() -> None:
    assert Extraction().is_empty
    assert not extract("Sarah loves hiking").is_empty
    assert to_rows(Extraction()) == []
    assert Extraction().to_dict()["contacts"] == []


def test_rows_one_per_item_in_a_stable_order() -> None:
    extraction = Extraction(
        contacts=(Contact("Sarah Johnson", "Met Sarah"), Contact("Mike", None)),
        organizations=("Google",),
        locations=("Portland",),
        tags=("hiking",),
        emails=("s@example.com",),
        phones=("+14155552671",),
        dates=("tomorrow",),
        notes=("Bring the book",),
    )
    assert to_rows(extraction) == [
        ItemRow("contact", "name", "Sarah Johnson", "Met Sarah"),
        ItemRow("contact", "name", "Mike", None),
        ItemRow("tag", None, "hiking"),
        ItemRow("location", None, "Portland"),
        ItemRow("organization", None, "Google"),
        ItemRow("date", None, "tomorrow"),
        ItemRow("email", None, "s@example.com"),
        ItemRow("phone", None, "+14155552671"),
        ItemRow("note", None, "Bring the book"),
    ]


def test_rows_are_deduplicated_case_insensitively_and_skip_blanks() -> None:
    extraction = Extraction(
        contacts=(Contact("sarah", None), Contact(" Sarah ", "Met Sarah"), Contact("  ", "x")),
        tags=("Hiking", "hiking", " HIKING ", "", "bbq"),
        locations=("Portland", "portland"),
    )
    assert to_rows(extraction) == [
        # The first spelling wins; a later duplicate lends its context.
        ItemRow("contact", "name", "sarah", "Met Sarah"),
        ItemRow("tag", None, "Hiking"),
        ItemRow("tag", None, "bbq"),
        ItemRow("location", None, "Portland"),
    ]


def test_same_value_in_two_types_is_two_rows() -> None:
    rows = to_rows(Extraction(tags=("Portland",), locations=("Portland",)))
    assert [r.item_type for r in rows] == ["tag", "location"]


@pytest.mark.parametrize(
    ("item_type", "value", "message"),
    [
        ("person", "Sarah", "unknown item_type"),
        ("contact", "   ", "empty value"),
    ],
)
def test_item_row_validates(item_type: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ItemRow(item_type, None, value)


def test_media_rows_are_allowed_for_the_media_pipeline() -> None:
    assert "media" in ITEM_TYPES
    assert ItemRow("media", "image/jpeg", "https://example.com/x.jpg").item_type == "media"


def test_summary_of_the_brief_example() -> None:
    rows = to_rows(extract("Met Sarah Johnson at the coffee shop in Portland, she loves hiking"))
    assert summarize(rows) == "Saved 3 items: Sarah Johnson, hiking, Portland"


def test_summary_counts_rows_and_lists_contacts_first() -> None:
    rows = [
        ItemRow("tag", None, "hiking"),
        ItemRow("location", None, "Portland"),
        ItemRow("contact", "name", "Sarah", None),
        ItemRow("date", None, "tomorrow"),
        ItemRow("contact", "name", "Mike", None),
    ]
    assert summarize(rows) == "Saved 5 items: Sarah, Mike, hiking and 2 more"
    assert summarize(rows, limit=5) == "Saved 5 items: Sarah, Mike, hiking, Portland, tomorrow"
    assert summarize(rows, limit=0) == "Saved 5 items"


def test_summary_singular_and_empty() -> None:
    assert summarize([ItemRow("tag", None, "hiking")]) == "Saved 1 item: hiking"
    assert summarize([]) == ""


def test_summary_shortens_long_values() -> None:
    note = "Remember to bring the signed contract and both copies of the invoice"
    text = summarize([ItemRow("note", None, note)])
    assert text.startswith("Saved 1 item: Remember to bring")
    assert text.endswith("…")
    assert len(text) < len("Saved 1 item: ") + 41


def test_summary_rejects_a_negative_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        summarize([ItemRow("tag", None, "x")], limit=-1)


# --- the word lists -----------------------------------------------------------------


def test_gazetteer_size_and_lookup() -> None:
    assert len(gz.PLACE_NAMES) >= 300
    assert gz.place_display(gz.place_key("ST. LOUIS")) == "St. Louis"
    assert gz.place_display("atlantis") is None


def test_places_that_are_ordinary_words_need_a_cue() -> None:
    # A gazetteer word that is also a common word or a given name must be
    # listed as ambiguous, or "nice to meet you" would yield a place.
    single = {key for key in gz.PLACES if " " not in key}
    risky = single & (gz.COMMON_WORDS | gz.FIRST_NAMES)
    assert risky <= gz.AMBIGUOUS_PLACES
    assert set(gz.PLACES) >= gz.AMBIGUOUS_PLACES


def test_months_and_weekdays_are_never_names() -> None:
    for word in sorted(gz.MONTHS | gz.WEEKDAYS):
        titled = word.title()
        assert names(extract(f"Met {titled} at the park")) == [], word
        assert names(extract(f"met {word} at the park")) == [], word
