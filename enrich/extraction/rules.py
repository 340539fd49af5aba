"""The default extractor: deterministic rules, no model, no network.

How a text is read, in order:

1. **Normalise.** NFC; control characters and lone surrogates become spaces
   (they cannot be stored in PostgreSQL text and carry no meaning).
2. **Patterns first, then mask them.** E-mails, URLs, hashtags, @mentions,
   phone numbers (``phonenumbers.PhoneNumberMatcher``) and date phrases are
   found with dedicated matchers, then blanked out of a *masked copy* of the
   text with a sentinel character. The masked copy keeps every offset, and
   because the sentinel is neither a word character nor whitespace, "Sarah
   Johnson tomorrow" can never grow into a three-word name.
3. **Sentences.** Split on ``. ! ? ;`` and newlines, except after titles and
   initials ("Dr. Smith", "John F. Kennedy").
4. **Words.** Each sentence is read in one of two modes:

   * *cased* (someone typed it): runs of capitalised words are classified by
     what they are (a gazetteer place, a known organisation, an organisation
     or landmark suffix) and by the cue before them ("met", "with", "call"
     introduce a person; "at", "from", "works for" an organisation; "in",
     "near", "moved to" a place). Runs with no cue are names only when they
     look like one (a known given name, or two or more uncommon words).
   * *uncased* (speech engines emit lower case with no punctuation, and so do
     hurried texters): a name is one or two uncommon words right after a
     person cue, or a known given name; places come from the gazetteer, and
     places that double as names or words ("austin", "reading") need a place
     cue.

5. **Interests** ("loves X", "plays the X", "training for a X", "is a X fan",
   hashtags) become tags.
6. **Contacts** get the sentence that mentions them as context, plus the
   following sentences that continue with a pronoun ("She loves hiking.").
   Sentences that are nobody's context become notes; a short text with no
   contact becomes one note as a whole.

Phone numbers must be *valid* (``Leniency.VALID``), not merely possible: in
free text a possible-but-invalid 10-digit run is more often an order number
than a phone number.

Everything is linear in the input (regexes have bounded repetition and are
compiled once), and ``extract`` never raises on a ``str``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import phonenumbers
from phonenumbers import PhoneNumberFormat

from . import gazetteer as gz
from .model import Contact, Extraction, Extractor

__all__ = ["RuleExtractor", "default_extractor"]

# Longer texts are read only up to here. A Twilio body is at most 1600
# characters and a minute of speech is ~1000; the cap only bounds the work an
# unexpected caller can cause.
MAX_INPUT_CHARS: Final = 20_000
# Per kind, so one pathological text cannot produce thousands of rows.
MAX_ITEMS_PER_KIND: Final = 50
CONTEXT_MAX_CHARS: Final = 300
NOTE_MAX_CHARS: Final = 500
# A text this short with no contact in it is kept whole as one note.
SHORT_NOTE_CHARS: Final = 320
MAX_NOTES: Final = 10
MAX_TAG_WORDS: Final = 3
MAX_NAME_WORDS: Final = 4

# Stands in for masked spans. NUL is removed by normalisation, so it cannot
# occur in the text; it is neither \w nor \s, so it breaks every word run.
_MASK: Final = "\x00"

# --- normalisation ---------------------------------------------------------------

_CONTROL_RE: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_NEWLINES_RE: Final = re.compile("\r\n?|[\u2028\u2029\x85]")


def _normalise(text: str) -> str:
    text = text[:MAX_INPUT_CHARS]
    text = _NEWLINES_RE.sub("\n", text)
    # Surrogates must go before NFC (normalize() rejects nothing, but the
    # result would still not encode as UTF-8).
    text = _CONTROL_RE.sub(" ", text)
    return unicodedata.normalize("NFC", text)


# --- patterns that are found before words ---------------------------------------------

_EMAIL_RE: Final = re.compile(
    r"(?<![\w.+\-])[\w.+\-]{1,64}@(?:[\w\-]{1,63}\.){1,8}[^\W\d_]{2,24}(?![\w\-])"
)
_URL_RE: Final = re.compile(r"(?i)(?<![\w@])(?:https?://|www\.)[^\s<>\"]{1,2000}")
_HASHTAG_RE: Final = re.compile(r"(?<![\w&#/])#([^\W_][\w\-]{0,62})")
_MENTION_RE: Final = re.compile(r"(?<![\w@])@[\w.]{1,64}")

_NUMWORD = (
    r"(?:(?:a\s+)?(?:few|couple(?:\s+of)?)|a|an|one|two|three|four|five|six|seven|"
    r"eight|nine|ten|\d{1,3})"
)
_UNIT = r"(?:days?|weeks?|months?|years?)"
_MONTH = (
    r"(?:january|february|march|april|may|june|july|august|september|october|"
    r"november|december)"
)
_MON_ABBR = r"(?:jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec)\.?"
_WEEKDAY = r"(?:mon|tues|wednes|thurs|fri|satur|sun)days?"
_DAYNUM = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?(?!\d)"
_YEAR = r"(?:,?\s+(?:19|20)\d\d(?!\d))"
_PART = r"(?:morning|afternoon|evening|night)"
_TIME = (
    r"(?:(?:[01]?\d|2[0-3])(?::[0-5]\d)?\s?(?:a\.?m\b\.?|p\.?m\b\.?)"
    r"|(?:[01]?\d|2[0-3]):[0-5]\d(?!\d)|noon|midnight)"
)
_AT_TIME = rf"(?:\s*,?\s*(?:at|@|around|by)?\s*{_TIME})?"
_HOLIDAY = (
    r"(?:christmas(?:\s+eve)?|thanksgiving|easter|halloween|"
    r"new\s+year['\u2019]?s(?:\s+(?:eve|day))?|valentine['\u2019]?s\s+day)"
)

_DATE_RE: Final = re.compile(
    rf"""
    (?<![\w/\-:])
    (?:
        (?P<date>
            (?:the\s+)?day\s+after\s+tomorrow
          | (?:next|this|last|coming)\s+(?:week(?:end)?|month|year|{_WEEKDAY}|{_MONTH})
          | (?:end|beginning|start|middle)\s+of\s+(?:the\s+|this\s+|next\s+)?
                (?:week|month|year|{_MONTH})
          | in\s+{_NUMWORD}\s+{_UNIT}
          | {_NUMWORD}\s+{_UNIT}\s+ago
          | (?:tomorrow|tonight|today|yesterday)(?:\s+{_PART})?
          | this\s+{_PART}
          | tmrw | tmr
          | {_WEEKDAY}(?:\s+{_PART})?
          | {_MONTH}\s+{_DAYNUM}{_YEAR}?
          | {_MON_ABBR}\s+{_DAYNUM}{_YEAR}?
          | (?:the\s+)?(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}{_YEAR}?
          | the\s+(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)
                (?!\s+(?:floor|place|time|grade|row|street|st|avenue|ave)\b)
          | {_MONTH}\s+(?:19|20)\d\d(?!\d)
          | (?:early|mid|late)[\s\-]+{_MONTH}
          | (?:19|20)\d\d-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])
          | (?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])(?:/(?:\d{{4}}|\d\d))?
                (?!\s*(?:cups?|tsp|tbsp|teaspoons?|tablespoons?|oz|ounces?|lbs?|pounds?
                        |inch(?:es)?|in\b|miles?|mi\b|km|hours?|hrs?)\b)
          | {_HOLIDAY}
        ){_AT_TIME}
      | (?:in|by|until|till|since|during|through)\s+(?P<month>{_MONTH})
      | (?:(?:at|@)\s+)?(?P<time>{_TIME})
    )
    (?![\w/])
    """,
    re.IGNORECASE | re.VERBOSE,
)

# --- sentences and words -----------------------------------------------------------

_SENTENCE_END_RE: Final = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)|;(?=\s)|\n")
_WORD_BEFORE_RE: Final = re.compile(r"([^\W\d_]+)$")
# Words that a period follows without ending the sentence.
_ABBREVIATIONS: Final = gz.TITLES | frozenset({"vs", "etc", "eg", "ie", "approx", "jr", "sr"})

# A word: letters with inner apostrophes/hyphens ("O'Brien", "Winston-Salem"),
# or the texting shorthand "w/" for "with" (but not "w/o").
_TOKEN_RE: Final = re.compile(r"(?<![\w/])[Ww]/(?![Oo]\b)|[^\W\d_]+(?:['\u2019\-][^\W\d_]+)*")
_POSSESSIVE_RE: Final = re.compile(r"['\u2019][sS]$")


_NOT_POSSESSIVE: Final = gz.STOPWORDS | frozenset({"let"})


@dataclass(frozen=True, slots=True)
class _Token:
    text: str  # as written, possessive "'s" removed
    start: int
    end: int  # end of ``text``
    full_end: int  # end including a possessive
    low: str
    cap: bool  # starts with a capital
    upper: bool  # all capitals, two letters or more
    possessive: bool


def _tokens(masked: str, start: int, end: int) -> list[_Token]:
    tokens: list[_Token] = []
    for match in _TOKEN_RE.finditer(masked, start, end):
        raw = match.group()
        if raw in ("w/", "W/"):
            tokens.append(
                _Token(raw, match.start(), match.end(), match.end(), "with", False, False, False)
            )
            continue
        # "Sarah's" is possessive; "she's", "it's", "let's" are contractions.
        possessive = (
            _POSSESSIVE_RE.search(raw) is not None
            and len(raw) > 2
            and raw[:-2].casefold() not in _NOT_POSSESSIVE
        )
        text = raw[:-2] if possessive else raw
        tokens.append(
            _Token(
                text=text,
                start=match.start(),
                end=match.start() + len(text),
                full_end=match.end(),
                low=text.casefold(),
                cap=text[0].isupper() or text[0].istitle(),
                upper=len(text) >= 2 and text.isupper(),
                possessive=possessive,
            )
        )
    return tokens


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        if match.group().startswith(".") and len(match.group()) == 1:
            before = _WORD_BEFORE_RE.search(text, max(0, match.start() - 12), match.start())
            if before is not None:
                word = before.group(1)
                if word.casefold() in _ABBREVIATIONS or (len(word) == 1 and word.isupper()):
                    continue
        _add_span(text, start, match.end(), spans)
        start = match.end()
    _add_span(text, start, len(text), spans)
    return spans


def _add_span(text: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        spans.append((start, end))


# --- word classes ----------------------------------------------------------------

_DATE_WORDS: Final = (
    gz.MONTHS
    | gz.WEEKDAYS
    | frozenset({"today", "tonight", "tomorrow", "yesterday", "tmrw", "noon", "midnight"})
)
_NOT_NAME: Final = gz.STOPWORDS | _DATE_WORDS
_PRONOUN_STARTS: Final = frozenset(
    {"he", "she", "they", "his", "her", "their", "him", "them", "he's", "she's", "they're"}
)
_CONNECTORS: Final = frozenset({"and", "or", "&"})
_ARTICLES: Final = frozenset({"a", "an", "the"})
_LEADING_DETERMINERS: Final = frozenset(
    {"a", "an", "the", "his", "her", "their", "my", "our", "your", "its", "some", "to"}
)
_INTEREST_JUNK: Final = gz.STOPWORDS | gz.wordset(
    """
    everything anything something nothing stuff things thing everyone anyone one ones
    lot lots time times day days idea way going getting doing being having seeing making
    trying working hanging spending taking it's that's this
    """
)
_INTEREST_BREAK: Final = (gz.STOPWORDS - _LEADING_DETERMINERS - _CONNECTORS) | gz.wordset(
    """
    works work worked lives live lived moved moves wants want wanted needs need said
    says went goes got gets just recently also too really every because since while
    although though who which whose currently now today tomorrow tonight yesterday
    week weekend like likes loves enjoys lately sometimes always usually apparently
    """
)
_FAN_ADJECTIVES: Final = gz.wordset(
    "huge big massive diehard die-hard lifelong real total great avid major crazy"
)
_LOVE_CUES: Final = gz.wordset(
    "love loves loved adore adores adored enjoy enjoys enjoyed likes liked"
)
_PLAY_CUES: Final = frozenset({"plays", "play", "played"})
_BE_INTO: Final = gz.wordset(
    "is are am was were be 's really also totally super very so big deeply she's he's "
    "they're i'm we're you're"
)
_TRAIN_CUES: Final = frozenset({"training", "train", "trains", "trained"})
_PAIR_CUES: Final = {
    "passionate": "about",
    "obsessed": "with",
    "interested": "in",
    "fan": "of",
    "fans": "of",
}


def _is_common(low: str) -> bool:
    """An ordinary word that is not also a given name."""
    return low in gz.COMMON_WORDS and low not in gz.FIRST_NAMES


_WORD_PART_RE: Final = re.compile(r"[^\W\d_]+")


def _titled(text: str) -> str:
    """'sarah' -> 'Sarah', 'SARAH' -> 'Sarah', "o'brien" -> "O'Brien"."""
    return _WORD_PART_RE.sub(lambda m: m.group()[:1].upper() + m.group()[1:].lower(), text)


def _collapse(text: str) -> str:
    return " ".join(text.replace(_MASK, " ").split())


# --- the per-text state -------------------------------------------------------------


@dataclass(slots=True)
class _Found:
    """An item found at a position; sorted by position at the end."""

    pos: int
    kind: str
    value: str
    sentence: int = -1


class _Reader:
    """Reads one text. Instances live for one ``extract`` call."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.masked = list(text)
        self.found: list[_Found] = []
        self.content = text

    # -- helpers --

    def mask(self, start: int, end: int) -> None:
        self.masked[start:end] = _MASK * (end - start)

    def add(self, pos: int, kind: str, value: str, sentence: int = -1) -> None:
        value = _collapse(value).strip(" ,.;:!?-\u2013\u2014'\"")
        if value:
            self.found.append(_Found(pos, kind, value, sentence))

    # -- stage 1: patterns ---

    def patterns(self) -> str:
        text = self.text
        if "@" in text:
            for m in _EMAIL_RE.finditer(text):
                self.add(m.start(), "email", m.group())
                self.mask(m.start(), m.end())
        for m in _URL_RE.finditer(text):
            self.mask(m.start(), m.end())
        if "#" in text:
            for m in _HASHTAG_RE.finditer(text):
                tag = m.group(1).strip("-")
                if any(ch.isalpha() for ch in tag):
                    self.add(m.start(), "tag", tag)
                self.mask(m.start(), m.end())
        if "@" in text:
            for m in _MENTION_RE.finditer("".join(self.masked)):
                self.mask(m.start(), m.end())

        masked = "".join(self.masked)
        if sum(ch.isdigit() for ch in masked) >= 7:
            for pm in phonenumbers.PhoneNumberMatcher(masked, "US"):
                e164 = phonenumbers.format_number(pm.number, PhoneNumberFormat.E164)
                self.add(pm.start, "phone", e164)
                self.mask(pm.start, pm.end)
            masked = "".join(self.masked)

        # What is left once patterns that are not prose are gone; dates stay,
        # since "Dentist tomorrow" is still worth a note.
        self.content = masked
        for m in _DATE_RE.finditer(masked):
            if m.group("month") is not None:
                self.add(m.start("month"), "date", m.group("month"))
            elif m.group("time") is not None and m.group("date") is None:
                self.add(m.start("time"), "date", m.group("time"))
            else:
                self.add(m.start(), "date", text[m.start() : m.end()])
            self.mask(m.start(), m.end())
        return "".join(self.masked)


class _SentenceReader:
    """Names, places, organisations and interests in one sentence."""

    def __init__(self, reader: _Reader, masked: str, index: int, span: tuple[int, int]):
        self.reader = reader
        self.masked = masked
        self.index = index
        self.toks = _tokens(masked, span[0], span[1])
        self.used = [False] * len(self.toks)
        # Index of the last token of the previous entity, and its kind, for
        # "Sarah and Mike" / "Portland and Seattle".
        self.last_end = -10
        self.last_kind = ""

    # -- token helpers --

    def adjacent(self, i: int, j: int) -> bool:
        a, b = self.toks[i], self.toks[j]
        if a.possessive:
            return False
        gap = self.masked[a.full_end : b.start]
        if gap == "" or (gap.isspace() and "\n" not in gap):
            return True
        return gap.strip() == "." and (a.low in gz.TITLES or (len(a.text) == 1 and a.cap))

    def low(self, i: int) -> str:
        return self.toks[i].low if 0 <= i < len(self.toks) else ""

    def span_text(self, i: int, j: int) -> str:
        return self.reader.text[self.toks[i].start : self.toks[j].end]

    def emit(self, i: int, j: int, kind: str, value: str | None = None) -> None:
        self.reader.add(
            self.toks[i].start,
            kind,
            value if value is not None else self.span_text(i, j),
            self.index,
        )
        for k in range(i, j + 1):
            self.used[k] = True
        self.last_end = j
        self.last_kind = kind

    def place_at(self, i: int, *, need_cap: bool) -> tuple[int, str, str] | None:
        """Longest gazetteer place starting at token i: (last index, display, key)."""
        n = len(self.toks)
        best: tuple[int, str, str] | None = None
        words: list[str] = []
        for j in range(i, min(n, i + gz.MAX_PLACE_WORDS)):
            if j > i and not self.adjacent(j - 1, j):
                break
            tok = self.toks[j]
            if need_cap and not (tok.cap or tok.low in gz.NAME_PARTICLES):
                break
            words.append(tok.low)
            key = " ".join(words)
            display = gz.PLACES.get(key)
            if display is not None:
                best = (j, display, key)
        tok = self.toks[i]
        if best is None and tok.upper and tok.low in gz.PLACE_ABBREVIATIONS:
            best = (i, gz.PLACE_ABBREVIATIONS[tok.low], tok.low)
        return best

    def cue_before(self, i: int) -> str:
        """What the words before token i introduce: contact, organization, location or ''.

        An article is skipped ("at the Rusty Anchor" is "at"), but it rules
        out a person: nobody writes "met the Sarah".
        """
        prev, prev2 = self.low(i - 1), self.low(i - 2)
        if prev in _ARTICLES:
            cue = self.cue_before(i - 1) if i >= 2 else ""
            return "" if cue == "contact" else cue
        if i - 1 >= 0 and prev in _CONNECTORS and self.last_end == i - 2:
            return self.last_kind
        if i - 1 >= 0 and self.last_end == i - 1 and self.gap(i - 1, i).strip() in (",", "&"):
            return self.last_kind
        if prev in gz.PERSON_CUES or (prev == "to" and prev2 in gz.PERSON_TO_CUES):
            return "contact"
        if prev in gz.ORG_CUES or (prev == "for" and prev2 in gz.ORG_FOR_CUES):
            return "organization"
        if prev in ("in", "near", "around", "outside", "visiting") or (
            prev == "to" and prev2 in gz.PLACE_TO_CUES
        ):
            return "location"
        return ""

    def gap(self, i: int, j: int) -> str:
        return self.masked[self.toks[i].full_end : self.toks[j].start]

    # -- cased sentences --

    def is_run_token(self, i: int) -> bool:
        tok = self.toks[i]
        return tok.cap and tok.low not in _NOT_NAME

    def read_cased(self) -> None:
        n = len(self.toks)
        i = 0
        while i < n:
            if not self.is_run_token(i):
                self.lower_case_word(i)
                i = self.last_end + 1 if self.last_end >= i else i + 1
                continue
            j = i
            while True:
                if j + 1 < n and self.adjacent(j, j + 1) and self.is_run_token(j + 1):
                    j += 1
                elif (
                    j + 2 < n
                    and self.low(j + 1) in gz.NAME_PARTICLES
                    and self.adjacent(j, j + 1)
                    and self.adjacent(j + 1, j + 2)
                    and self.is_run_token(j + 2)
                ):
                    j += 2
                else:
                    break
            self.classify_run(i, j)
            i = j + 1

    def lower_case_word(self, i: int) -> None:
        """A lower-case given name after a cue, or a lower-case place, in a cased sentence."""
        tok = self.toks[i]
        if tok.cap or self.used[i]:
            return
        cue = self.cue_before(i)
        if cue == "contact" and (
            (tok.low in gz.FIRST_NAMES and tok.low not in gz.COMMON_WORDS | _NOT_NAME)
            # A name in a script without capitals ("Met 李雷"): the cue is all we have.
            or tok.text.lower() == tok.text.upper()
        ):
            self.emit(i, i, "contact", _titled(tok.text))
            return
        # "Met Sarah in portland": a lower-case place in a cased sentence.
        place = self.place_at(i, need_cap=False)
        if place is not None and (
            (place[2] not in gz.AMBIGUOUS_PLACES and place[2] not in gz.PLACE_ABBREVIATIONS)
            or cue == "location"
        ):
            self.emit(i, place[0], "location", place[1])

    def classify_run(self, i: int, j: int) -> None:
        # Leading capitalised words that are cues or ordinary words ("Met",
        # "Lunch", "Called") are not part of the name; they are its cue.
        while i <= j:
            low = self.toks[i].low
            if self.place_at(i, need_cap=True) is not None or low in gz.KNOWN_ORGS:
                break
            if low in gz.PERSON_CUES or _is_common(low):
                i += 1
                continue
            break
        if i > j:
            return
        cue = self.cue_before(i)
        toks = self.toks[i : j + 1]
        first = toks[0]
        lows = [t.low for t in toks]
        key = " ".join(lows)

        place = self.place_at(i, need_cap=True)
        if place is not None and place[0] == j:
            if cue == "contact" and place[2] in gz.AMBIGUOUS_PLACES:
                self.emit(i, j, "contact")
            elif cue == "organization" and place[2] in gz.KNOWN_ORGS:
                self.emit(i, j, "organization")
            else:
                self.emit(i, j, "location", place[1])
            return
        if self.all_places(i, j):
            return
        if key in gz.KNOWN_ORGS and (
            key not in gz.AMBIGUOUS_ORGS or cue == "organization" or first.upper
        ):
            self.emit(i, j, "organization", gz.KNOWN_ORGS[key])
            return
        if len(toks) >= 2 and lows[-1] in gz.ORG_SUFFIXES:
            self.emit(i, j, "organization")
            return
        if cue == "contact" and first.low in gz.FIRST_NAMES and len(toks) <= MAX_NAME_WORDS:
            self.emit(i, j, "contact")
            return
        if len(toks) >= 2 and lows[-1] in gz.LANDMARK_SUFFIXES:
            self.emit(i, j, "location")
            return
        if cue == "organization":
            if first.possessive and len(toks) == 1:
                return
            if self.low(i - 1) == "from" and self.looks_like_person(i, j):
                self.emit(i, j, "contact")
                return
            if not all(_is_common(low) for low in lows):
                self.emit(i, j, "organization")
            return
        if cue == "location":
            # "to the Taylor Swift concert": a given name is not a place.
            if not any(_is_common(low) for low in lows) and first.low not in gz.FIRST_NAMES:
                self.emit(i, j, "location")
            return
        if cue == "contact":
            if len(toks) <= MAX_NAME_WORDS and (
                first.low in gz.TITLES or not _is_common(first.low)
            ):
                self.emit(i, j, "contact")
            return
        if self.looks_like_person(i, j):
            self.emit(i, j, "contact")

    def looks_like_person(self, i: int, j: int) -> bool:
        toks = self.toks[i : j + 1]
        first = toks[0]
        if len(toks) == 1:
            return first.low in gz.FIRST_NAMES and first.low not in gz.COMMON_WORDS
        if len(toks) > MAX_NAME_WORDS:
            return False
        if first.low in gz.FIRST_NAMES or first.low in gz.TITLES:
            return True
        return not any(_is_common(t.low) or t.upper for t in toks)

    def all_places(self, i: int, j: int) -> bool:
        """'Portland Oregon': a run made only of places gives one location each."""
        pieces: list[tuple[int, int, str]] = []
        k = i
        while k <= j:
            place = self.place_at(k, need_cap=True)
            if place is None or place[0] > j:
                return False
            pieces.append((k, place[0], place[1]))
            k = place[0] + 1
        if len(pieces) < 2:
            return False
        for start, end, display in pieces:
            self.emit(start, end, "location", display)
        return True

    # -- uncased sentences --

    def name_word(self, i: int) -> bool:
        """Could token i be part of a lower-case name?"""
        if i >= len(self.toks):
            return False
        tok = self.toks[i]
        low = tok.low
        if low in _NOT_NAME:
            return False
        if low in gz.FIRST_NAMES:
            return low not in gz.COMMON_WORDS
        if (
            low in gz.COMMON_WORDS
            or low in gz.PERSON_CUES
            or len(low) < 2
            or low in gz.PLACES
            or low in gz.KNOWN_ORGS
        ):
            return False
        # "met sarah hiking": long -ing words are activities, not surnames.
        return not (len(low) >= 6 and low.endswith("ing"))

    def read_uncased(self) -> None:
        n = len(self.toks)
        i = 0
        while i < n:
            i = self.read_uncased_at(i)

    def read_uncased_at(self, i: int) -> int:
        tok = self.toks[i]
        cue = self.cue_before(i)
        place = self.place_at(i, need_cap=False)
        if place is not None:
            end, display, key = place
            ambiguous = key in gz.AMBIGUOUS_PLACES or key in gz.PLACE_ABBREVIATIONS
            if cue == "contact" and key in gz.AMBIGUOUS_PLACES:
                return self.lower_name(i)
            if not ambiguous or cue in ("location", "organization"):
                self.emit(i, end, "location", display)
                return end + 1
        if cue == "contact" and self.name_word(i):
            return self.lower_name(i)
        if cue == "organization":
            known = self.known_org_at(i)
            if known is not None:
                self.emit(i, known[0], "organization", known[1])
                return known[0] + 1
            if self.name_word(i) and not tok.possessive:
                if tok.low in gz.FIRST_NAMES:
                    if self.low(i - 1) == "from":
                        return self.lower_name(i)
                    return i + 1
                end = i
                if (
                    i + 1 < len(self.toks)
                    and self.adjacent(i, i + 1)
                    and self.low(i + 1) in gz.ORG_SUFFIXES
                ):
                    end = i + 1
                self.emit(i, end, "organization", _titled(self.span_text(i, end)))
                return end + 1
            return i + 1
        if tok.low in gz.FIRST_NAMES and self.name_word(i) and self.low(i - 1) not in _ARTICLES:
            return self.lower_name(i)
        known = self.known_org_at(i)
        if known is not None and known[2] not in gz.AMBIGUOUS_ORGS:
            self.emit(i, known[0], "organization", known[1])
            return known[0] + 1
        return i + 1

    def known_org_at(self, i: int) -> tuple[int, str, str] | None:
        low = self.low(i)
        if i + 1 < len(self.toks) and self.adjacent(i, i + 1):
            two = f"{low} {self.low(i + 1)}"
            if two in gz.KNOWN_ORGS:
                return (i + 1, gz.KNOWN_ORGS[two], two)
        if low in gz.KNOWN_ORGS:
            return (i, gz.KNOWN_ORGS[low], low)
        return None

    def lower_name(self, i: int) -> int:
        """Emit a one- or two-word lower-case name at i; return the next index."""
        end = i
        if (
            not self.toks[i].possessive
            and i + 1 < len(self.toks)
            and self.adjacent(i, i + 1)
            and self.name_word(i + 1)
            and self.place_at(i + 1, need_cap=False) is None
        ):
            end = i + 1
        value = " ".join(_titled(t.text) for t in self.toks[i : end + 1])
        self.emit(i, end, "contact", value)
        return end + 1

    # -- interests --

    def read_interests(self) -> None:
        toks = self.toks
        for idx, tok in enumerate(toks):
            low = tok.low
            prev = self.low(idx - 1)
            start = -1
            if (
                low in _LOVE_CUES
                or low in _PLAY_CUES
                or (low == "into" and prev in _BE_INTO)
                or (low == "for" and prev in _TRAIN_CUES)
                or _PAIR_CUES.get(prev) == low
            ):
                start = idx + 1
            elif low in ("fan", "fans"):
                self.fan_of(idx)
            if start >= 0 and start < len(toks) and self.adjacent(idx, start):
                self.interest_items(start)

    def fan_of(self, idx: int) -> None:
        """'is a (huge) Seahawks fan' -> Seahawks."""
        k = idx - 1
        words: list[int] = []
        while k >= 0 and len(words) <= MAX_TAG_WORDS and self.adjacent(k, k + 1):
            if self.toks[k].low in ("a", "an"):
                kept = [w for w in reversed(words) if self.toks[w].low not in _FAN_ADJECTIVES]
                if kept and not all(self.toks[w].low in _INTEREST_JUNK for w in kept):
                    self.reader.add(
                        self.toks[kept[0]].start,
                        "tag",
                        self.span_text(kept[0], kept[-1]),
                        self.index,
                    )
                return
            words.append(k)
            k -= 1

    def interest_items(self, start: int) -> None:
        items: list[list[int]] = [[]]
        k = start
        count = 0
        while k < len(self.toks) and count < 8:
            if k > start and not self.adjacent(k - 1, k):
                gap = self.gap(k - 1, k).strip()
                if gap != "," or self.toks[k - 1].possessive:
                    break
                items.append([])
            low = self.toks[k].low
            if low in _CONNECTORS:
                items.append([])
            elif low in _LEADING_DETERMINERS:
                if items[-1]:  # "hiking the trails": the object has ended
                    break
            elif low in _INTEREST_BREAK or low in _DATE_WORDS:
                break
            else:
                items[-1].append(k)
            k += 1
            count += 1
        for item in items:
            words = item[:MAX_TAG_WORDS]
            if not words or all(self.toks[w].low in _INTEREST_JUNK for w in words):
                continue
            self.reader.add(
                self.toks[words[0]].start, "tag", self.span_text(words[0], words[-1]), self.index
            )

    # -- entry --

    def is_cased(self) -> bool:
        """Did someone capitalise names here? (Not just the first word or 'I'.)"""
        letters = [t for t in self.toks if any(ch.isalpha() for ch in t.text)]
        if len(letters) >= 3 and all(t.text.isupper() for t in letters):
            return False  # SHOUTING: capitals carry no information
        return any(t.cap and t.low not in ("i", "i'm", "i've", "i'll", "i'd") for t in letters[1:])

    def read(self) -> None:
        if not self.toks:
            return
        if self.is_cased():
            self.read_cased()
        else:
            self.read_uncased()
        self.read_interests()


# --- assembly ------------------------------------------------------------------------


def _dedupe(values: Iterable[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for value in values:
        key = value.casefold()
        if key not in seen:
            seen.add(key)
            out.append(value)
        if len(out) >= MAX_ITEMS_PER_KIND:
            break
    return tuple(out)


def _trim(text: str, limit: int) -> str:
    text = _collapse(text)
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


def _window(text: str, pos: int, limit: int) -> str:
    """Up to *limit* characters of *text* around offset *pos*, on word boundaries."""
    text_len = len(text)
    if text_len <= limit:
        return _collapse(text)
    start = max(0, min(pos - limit // 3, text_len - limit))
    if start > 0:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < pos else start
    body = _trim(text[start:], limit - (1 if start else 0))
    return ("…" + body) if start else body


def _meaningful(sentence: str) -> bool:
    """Two words or more, not all of them filler ("ok thanks", "lol")."""
    words = [m.group().casefold() for m in _TOKEN_RE.finditer(sentence)]
    return len(words) >= 2 and any(w not in _FILLER for w in words)


_FILLER: Final = gz.STOPWORDS | gz.wordset(
    "ok okay thanks thank thx you yes no lol hi hello hey cool great sure yeah yep nope "
    "bye cheers haha hahaha omg wow nice"
)


def _extract(text: str) -> Extraction:
    clean = _normalise(text)
    if not clean.strip():
        return Extraction()
    reader = _Reader(clean)
    masked = reader.patterns()
    spans = _sentence_spans(clean)
    for index, span in enumerate(spans):
        _SentenceReader(reader, masked, index, span).read()

    found = sorted(reader.found, key=lambda f: f.pos)
    by_kind: dict[str, list[_Found]] = {}
    for item in found:
        by_kind.setdefault(item.kind, []).append(item)

    contacts, covered = _contacts(clean, spans, by_kind.get("contact", []))
    notes = _notes(clean, reader.content, spans, covered, has_contacts=bool(contacts))

    def values(kind: str) -> tuple[str, ...]:
        return _dedupe(f.value for f in by_kind.get(kind, []))

    return Extraction(
        contacts=contacts,
        organizations=values("organization"),
        locations=values("location"),
        tags=values("tag"),
        emails=values("email"),
        phones=values("phone"),
        dates=values("date"),
        notes=notes,
    )


def _contacts(
    clean: str, spans: list[tuple[int, int]], found: list[_Found]
) -> tuple[tuple[Contact, ...], set[int]]:
    """Contacts with context, and the indexes of the sentences used as context."""
    # "Met Sarah Johnson. Sarah loves hiking." is one person: a lone first
    # name that starts a fuller name found elsewhere is dropped.
    full_first = {f.value.split()[0].casefold() for f in found if len(f.value.split()) > 1}
    kept: list[_Found] = []
    seen: set[str] = set()
    for item in found:
        key = item.value.casefold()
        if key in seen or (len(item.value.split()) == 1 and key in full_first):
            continue
        seen.add(key)
        kept.append(item)
        if len(kept) >= MAX_ITEMS_PER_KIND:
            break

    contact_sentences = {item.sentence for item in found}
    covered: set[int] = set()
    contacts: list[Contact] = []
    for item in kept:
        if not 0 <= item.sentence < len(spans):
            contacts.append(Contact(item.value, None))
            continue
        first = item.sentence
        last = first
        # Continue through "She loves hiking." sentences that name nobody new.
        while (
            last + 1 < len(spans)
            and last + 1 not in contact_sentences
            and _starts_with_pronoun(clean, spans[last + 1])
        ):
            last += 1
        covered.update(range(first, last + 1))
        start, end = spans[first][0], spans[last][1]
        context = _window(clean[start:end], item.pos - start, CONTEXT_MAX_CHARS)
        if context.casefold().strip(" .!?") == item.value.casefold():
            contacts.append(Contact(item.value, None))
        else:
            contacts.append(Contact(item.value, context or None))
    return tuple(contacts), covered


def _starts_with_pronoun(clean: str, span: tuple[int, int]) -> bool:
    match = _TOKEN_RE.search(clean, span[0], span[1])
    return (
        match is not None
        and match.start() == span[0]
        and (match.group().casefold() in _PRONOUN_STARTS)
    )


def _notes(
    clean: str,
    content: str,
    spans: list[tuple[int, int]],
    covered: set[int],
    *,
    has_contacts: bool,
) -> tuple[str, ...]:
    """Sentences nobody's context holds; a short contact-free text as a whole.

    *content* is the text with e-mails, URLs, hashtags and phone numbers
    masked: "#hiking" alone or a bare number is not a note.
    """
    whole = _collapse(clean)
    if not has_contacts and len(whole) <= SHORT_NOTE_CHARS:
        return (whole,) if _meaningful(content) else ()
    notes: list[str] = []
    for index, (start, end) in enumerate(spans):
        if index in covered:
            continue
        if _meaningful(content[start:end]):
            notes.append(_trim(clean[start:end], NOTE_MAX_CHARS))
        if len(notes) >= MAX_NOTES:
            break
    return _dedupe(notes)


class RuleExtractor:
    """The default :class:`~enrich.extraction.model.Extractor`: rules and word lists."""

    name: str = "rules"

    def extract(self, text: str) -> Extraction:
        return _extract(text)


def default_extractor() -> Extractor:
    return RuleExtractor()
