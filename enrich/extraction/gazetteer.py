"""Built-in word lists for the rule-based extractor.

Mostly a small gazetteer (world and US cities, US states, countries), plus the
lexicons the rules need to tell a name from an ordinary word: common English
words, common given names, months and weekdays, organisation and landmark
suffixes, and a handful of well-known organisations.

Everything here is plain data built once at import time: lookups are lower-case
keys (``casefold``) into frozensets or dicts, so the rules stay O(1) per token.
The lists are deliberately modest; a richer extractor (spaCy, a hosted model)
plugs in behind the same ``Extractor`` protocol when better recall is needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def wordset(blob: str) -> frozenset[str]:
    """Whitespace-separated words, case-folded."""
    return frozenset(w.casefold() for w in blob.split())


def _names(blob: str) -> tuple[str, ...]:
    """Comma-separated display names (names may contain spaces)."""
    return tuple(" ".join(name.split()) for name in blob.split(",") if name.strip())


def _display_map(entries: Iterable[str]) -> dict[str, str]:
    """Map the lookup key of each display name to the display name.

    The key is the name case-folded with periods dropped, so "St. Louis" is
    found from the tokens "st louis" (the tokenizer never keeps the period).
    """
    return {_key(entry): entry for entry in entries}


def _key(name: str) -> str:
    return " ".join(name.replace(".", " ").casefold().split())


# --- places ------------------------------------------------------------------

US_STATES: tuple[str, ...] = _names(
    """
    Alabama, Alaska, Arizona, Arkansas, California, Colorado, Connecticut, Delaware,
    Florida, Georgia, Hawaii, Idaho, Illinois, Indiana, Iowa, Kansas, Kentucky, Louisiana,
    Maine, Maryland, Massachusetts, Michigan, Minnesota, Mississippi, Missouri, Montana,
    Nebraska, Nevada, New Hampshire, New Jersey, New Mexico, New York, North Carolina,
    North Dakota, Ohio, Oklahoma, Oregon, Pennsylvania, Rhode Island, South Carolina,
    South Dakota, Tennessee, Texas, Utah, Vermont, Virginia, Washington, West Virginia,
    Wisconsin, Wyoming, District of Columbia
    """
)

US_CITIES: tuple[str, ...] = _names(
    """
    New York City, Los Angeles, Chicago, Houston, Phoenix, Philadelphia, San Antonio,
    San Diego, Dallas, San Jose, Austin, Jacksonville, Fort Worth, Columbus, Charlotte,
    San Francisco, Indianapolis, Seattle, Denver, Boston, El Paso, Nashville, Detroit,
    Oklahoma City, Portland, Las Vegas, Memphis, Louisville, Baltimore, Milwaukee,
    Albuquerque, Tucson, Fresno, Sacramento, Mesa, Kansas City, Atlanta, Omaha,
    Colorado Springs, Raleigh, Miami, Long Beach, Virginia Beach, Oakland, Minneapolis,
    Tulsa, Tampa, Arlington, New Orleans, Wichita, Cleveland, Bakersfield, Aurora, Anaheim,
    Honolulu, Santa Ana, Riverside, Corpus Christi, Lexington, Stockton, Henderson,
    Saint Paul, St. Paul, St. Louis, Saint Louis, Cincinnati, Pittsburgh, Greensboro,
    Anchorage, Plano, Lincoln, Orlando, Irvine, Newark, Durham, Chula Vista, Toledo,
    Fort Wayne, St. Petersburg, Laredo, Jersey City, Chandler, Madison, Lubbock,
    Scottsdale, Reno, Buffalo, Gilbert, Glendale, Winston-Salem, Chesapeake, Norfolk,
    Fremont, Irving, Richmond, Boise, Spokane, Baton Rouge, Tacoma, San Bernardino,
    Modesto, Des Moines, Fayetteville, Birmingham, Rochester, Grand Rapids, Huntsville,
    Salt Lake City, Tallahassee, Montgomery, Knoxville, Worcester, Providence, Brooklyn,
    Manhattan, Queens, Bronx, Hoboken, Berkeley, Palo Alto, Mountain View, Cupertino,
    Santa Monica, Pasadena, Boulder, Ann Arbor, Cambridge, Savannah, Charleston, Asheville,
    Burlington, Santa Fe, Key West, Napa, Sedona, Aspen, Miami Beach, Silicon Valley,
    Bay Area, Hollywood, Malibu, Princeton, New Haven, Hartford, Albany, Syracuse, Maui,
    Lake Tahoe, Eugene, Salem, Bend, Olympia, Bellevue, Redmond, Kirkland, Vancouver,
    Oakland, San Mateo, Sunnyvale, Santa Clara, Santa Barbara, Long Island,
    Fort Lauderdale, Boca Raton, Jackson, Little Rock, Cheyenne, Missoula, Bozeman, Juneau,
    Dayton, Akron, Provo, Ogden, Tempe, Flagstaff, Mobile, Tyler
    """
)

WORLD_CITIES: tuple[str, ...] = _names(
    """
    London, Paris, Berlin, Madrid, Barcelona, Rome, Milan, Venice, Florence, Naples,
    Lisbon, Porto, Amsterdam, Rotterdam, Brussels, Vienna, Prague, Budapest, Warsaw,
    Krakow, Munich, Hamburg, Frankfurt, Cologne, Zurich, Geneva, Copenhagen, Stockholm,
    Oslo, Helsinki, Reykjavik, Dublin, Edinburgh, Glasgow, Manchester, Liverpool, Oxford,
    Athens, Istanbul, Moscow, Kyiv, Kiev, Tokyo, Osaka, Kyoto, Seoul, Beijing, Shanghai,
    Hong Kong, Shenzhen, Taipei, Singapore, Bangkok, Hanoi, Ho Chi Minh City, Manila,
    Jakarta, Bali, Kuala Lumpur, Mumbai, Delhi, New Delhi, Bangalore, Bengaluru, Hyderabad,
    Chennai, Kolkata, Pune, Karachi, Lahore, Dhaka, Dubai, Abu Dhabi, Doha, Tel Aviv,
    Jerusalem, Cairo, Lagos, Nairobi, Johannesburg, Cape Town, Casablanca, Marrakech,
    Sydney, Melbourne, Brisbane, Perth, Auckland, Wellington, Toronto, Montreal, Ottawa,
    Calgary, Quebec City, Mexico City, Guadalajara, Cancun, Havana, Bogota, Medellin, Lima,
    Santiago, Buenos Aires, Sao Paulo, Rio de Janeiro, Caracas, Quito, Nice, Lyon,
    Marseille, Seville, Valencia, Stuttgart, Dusseldorf, Bruges, Antwerp, Salzburg,
    Belfast, Cardiff, Bristol, Leeds, Reykjavík, São Paulo, Bogotá, Medellín, Zürich,
    Kraków, Montréal, Reading, York, Hamilton, Victoria
    """
)

COUNTRIES: tuple[str, ...] = _names(
    """
    United States, America, Canada, Mexico, Brazil, Argentina, Chile, Peru, Colombia,
    United Kingdom, England, Scotland, Wales, Ireland, France, Germany, Spain, Portugal,
    Italy, Netherlands, Holland, Belgium, Switzerland, Austria, Sweden, Norway, Denmark,
    Finland, Iceland, Poland, Greece, Turkey, Russia, Ukraine, Israel, Egypt, Morocco,
    Nigeria, Kenya, South Africa, Ethiopia, Ghana, India, Pakistan, Bangladesh, China,
    Japan, Korea, South Korea, Taiwan, Vietnam, Thailand, Philippines, Indonesia, Malaysia,
    Australia, New Zealand, Czech Republic, Hungary, Romania, Croatia, Saudi Arabia, Qatar,
    Iran, Iraq, Cuba, Jamaica, Puerto Rico, Costa Rica, Nepal, Sri Lanka, Singapore,
    Europe, Asia, Africa, South America, North America, Latin America, Scandinavia, Chad,
    Jordan
    """
)

# All-caps abbreviations: only recognised when written in capitals, since "us",
# "la" and friends are ordinary words in lower case.
PLACE_ABBREVIATIONS: Mapping[str, str] = {
    "us": "US",
    "usa": "USA",
    "uk": "UK",
    "uae": "UAE",
    "la": "Los Angeles",
    "sf": "San Francisco",
    "dc": "Washington, D.C.",
    "nyc": "New York City",
    "philly": "Philadelphia",
}

PLACES: dict[str, str] = {
    **_display_map(US_STATES),
    **_display_map(US_CITIES),
    **_display_map(WORLD_CITIES),
    **_display_map(COUNTRIES),
    # Unambiguous lower-case forms people actually type.
    "nyc": "New York City",
    "philly": "Philadelphia",
}
"""Lookup key (case-folded, periods dropped, single spaces) -> display name."""

PLACE_NAMES: frozenset[str] = frozenset(PLACES.values())
"""The gazetteer as a set of display names."""

MAX_PLACE_WORDS = max(len(key.split()) for key in PLACES)

# Places that are also given names or ordinary words. In lower-case text they
# need a place cue ("in austin"); after a person cue ("met Austin") they are a
# person.
AMBIGUOUS_PLACES: frozenset[str] = wordset(
    """
    austin jackson victoria florence paris georgia virginia charlotte madison eugene
    lincoln jordan sydney dallas houston tyler aurora irvine salem providence cambridge
    oxford nice reading mobile buffalo phoenix china turkey chad denver
    washington henderson richmond chandler gilbert irving glendale montgomery raleigh
    durham savannah charleston burlington bend olympia lima santiago perth wellington
    florence valencia columbus arlington lexington orlando plano reno stockton mesa
    hollywood napa aspen america holland bristol cardiff hamilton york
    manhattan queens brooklyn bronx malibu sedona boulder porto
    """
)

# --- people --------------------------------------------------------------------

FIRST_NAMES: frozenset[str] = wordset(
    """
    aaron abby abigail adam adrian aisha alan albert alex alexa alexander alexandra alice
    alicia alison allison alyssa amanda amber amelia amir amit amy ana andrea andrew andy
    angela anita ann anna anne annie anthony antonio anya arjun arthur ashley audrey
    austin ava barbara ben benjamin beth betty bill billy bob bobby brad brandon brenda
    brian brittany bruce bryan caleb cameron carl carla carlos carmen carol caroline carrie
    casey catherine charles charlie charlotte chen chloe chris christina christine
    christopher cindy claire clara colin connor craig cynthia daisy dan daniel danielle
    david dean deborah debbie dennis derek diana diane diego dmitri dominic donald donna
    doug douglas dylan ed eddie edward elena eli elijah elizabeth ella ellen emily emma
    eric erica erin ethan eva evan fatima felix fernando fiona frank gabriel gabriela gary
    george grace greg gregory hannah harold harry hassan heather helen henry hiro hugo
    ian isaac isabel isabella ivan jack jackie jacob jake james jamie jane janet jared
    jasmine jason javier jay jean jeff jeffrey jen jenna jennifer jenny jeremy jerry jess
    jessica jill jim jimmy jin joan joe joel john johnny jon jonathan jordan jorge jose
    joseph josh joshua joy juan judy julia julian julie justin karen karl kate katherine
    kathy katie kayla keith kelly ken kenji kenneth kevin kim kimberly kyle laura lauren
    leah lee leo leon li liam lily linda lisa liz logan lucas lucy luis luke lynn madison
    maggie malik mandy manuel marco margaret maria mariana marie marina mario mark marta
    martin mary matt matthew max maya megan mei melissa mia michael michelle miguel mike
    mila min mohammed muhammad molly monica nadia nancy naomi natalie nathan neha neil
    nicholas nick nicole nina noah nora olivia omar oscar owen pablo pam pat patricia
    patrick paul paula pedro peter phil philip priya rachel rahul raj rajesh ravi ray
    rebecca richard rick rita rob robert roberto robin ron ronald rosa ruby russell ruth
    ryan sally sam samantha samuel sandra sara sarah scott sean sergei seth shannon sharon
    shawn sofia sophia sophie stacy stephanie stephen steve steven sue susan tanya tara
    taylor ted teresa terry thomas tim timothy tina todd tom tommy tony tracy travis
    tyler valerie vanessa victor victoria vikram vincent wei wendy william xavier yan
    yuki yusuf zach zachary zoe
    """
)

# Titles kept as part of a name ("Dr. Smith"); the tokenizer lets a period
# follow them without ending the name.
TITLES: frozenset[str] = wordset("dr mr mrs ms mx prof sir dame rev st mt fr")

# Lower-case particles allowed inside a capitalised name ("Ludwig van Beethoven").
NAME_PARTICLES: frozenset[str] = wordset("van von der den de del della da di du la le bin al")

# --- time words ------------------------------------------------------------------

MONTHS: frozenset[str] = wordset(
    """
    january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec
    """
)

WEEKDAYS: frozenset[str] = wordset(
    """
    monday tuesday wednesday thursday friday saturday sunday
    mondays tuesdays wednesdays thursdays fridays saturdays sundays
    """
)

# --- organisations -----------------------------------------------------------------

ORG_SUFFIXES: frozenset[str] = wordset(
    """
    inc incorporated llc ltd corp corporation co company companies group labs lab
    technologies technology tech systems solutions software partners ventures capital
    holdings bank university college institute school academy hospital clinic
    foundation association agency studios studio media consulting industries
    enterprises networks pharmaceuticals motors airlines church
    """
)

KNOWN_ORGS: dict[str, str] = _display_map(
    _names(
        """
        Google, Alphabet, Apple, Microsoft, Amazon, Meta, Facebook, Instagram, Netflix,
        Tesla, IBM, Intel, Nvidia, AMD, Oracle, Salesforce, Adobe, Twitter, LinkedIn,
        Spotify, Uber, Lyft, Airbnb, Stripe, Shopify, Slack, Zoom, Dropbox, Pinterest,
        Snapchat, TikTok, Samsung, Sony, Nike, Starbucks, Walmart, Costco, Target, Boeing,
        Disney, OpenAI, Anthropic, Deloitte, McKinsey, Goldman Sachs, JPMorgan,
        Morgan Stanley, Accenture, NASA, MIT, Stanford, Harvard, Yale, Berkeley, UCLA,
        Twilio, GitHub, Atlassian, Cisco, Dell, HP, Siemens, Toyota, Ford, Pfizer, Moderna,
        Verizon, Comcast, Whole Foods
        """
    )
)

# Known organisations that are also ordinary words ("an apple", "the target"):
# they need an organisation cue ("works at Apple") or capitals ("IBM").
AMBIGUOUS_ORGS: frozenset[str] = wordset(
    "apple amazon meta target slack zoom stripe dell ford shell gap visa oracle disney "
    "berkeley stanford harvard yale sony nike uber"
)

# --- ordinary words ------------------------------------------------------------------

# Function words: never (part of) a name, and they end a capitalised run.
STOPWORDS: frozenset[str] = wordset(
    """
    a an the and or but nor so yet if then than that this these those there here
    i me my mine myself we us our ours you your yours he him his she her hers they them
    their theirs it its it's i'm i've i'll i'd im ive youre he's she's they're we're
    who whom whose which what when where why how
    is am are was were be been being do does did done have has had having
    will would shall should can could may might must
    at in on of to for from with without by about into onto over under up down out off
    as per via after before during since until till near around between among
    not no yes ok okay just also too very really only even still again
    all any some each every both either neither few many much more most other another
    such own same
    """
)

# Common English words: a capitalised one is not taken for a name unless it is
# also a known given name. Also used to reject lower-case "names" after cues.
COMMON_WORDS: frozenset[str] = STOPWORDS | wordset(
    """
    about above across actually after afternoon again against ago ahead almost alone
    along already always amazing anniversary anyone anything anyway anywhere apartment
    app appointment area arrive arrived art ask asked asking awesome away baby back bad
    bar basically beach beautiful because become bed beer before began begin behind
    believe below best better big bike birthday bit book books boss bought box boy
    break breakfast bring brother brought brunch budget build building bus business busy
    buy call called calling calls came camp camping can't car card care career case cat
    catch catching caught center chat check child children church city class client
    clients close club coffee cold college colleague come comes coming company
    conference cool could couldn't couple course cousin coworker crazy cute dad date
    daughter day days deal dear definitely dentist design did didn't dinner doctor dog
    doing don't done door downtown drink drinks drive driving drove during early easy eat
    eating email emails end engineer enough evening event events ever every everybody
    everyone everything exactly excited family fan far fast father feel feeling felt
    few finally find fine finish first flight follow food forgot found free friday
    friend friends fun funny game garden gave get gets getting girl give glad go goes
    going gone good got great group guy guys gym had hair half hang happy hard hate
    have head health hear heard hello help here hey hi high hike hiking hobby holiday
    home hope hospital hot hotel hour hours house huge husband idea important interview
    it job just keep kid kids kind knew know last late later latest learn least leave
    left less let let's life like liked likes little live lives living long look
    looking lot lots love loved loves lunch made make making man manager many meet
    meeting meetings met mind mom money month months morning mother move moved moving
    mr much music name named need needs neighbor never new news next nice night nothing
    now number office often oh old once one online open order other others ours out
    outside own parent parents park part partner party people perfect person phone pick
    picked place plan plans play played playing plays please point pretty probably
    project quick quite ran rather read ready real really remember remind reminder
    restaurant right road room run running said same saw say says school see seeing seem
    seemed seen send sent set she'd shop shopping short should show sick side since sister
    small so some someone something sometimes son soon sorry spoke sport sports start
    started stay still stop store story street stuff sure take taking talk talked
    talking team tell thank thanks thing things think thought time tired today together
    told tomorrow tonight too took town training travel trip true try trying turn
    two type up upon use used usual vacation very visit visited wait walk want wanted
    wants was watch water way week weekend weeks well went were whole wife will wish
    with work worked working works world would wow yeah year years yesterday yet young
    again also alright around awesome birthday cafe check coffee cheers congrats dinner
    drinks great happy hey hi lol maybe merry nice ok okay omg please sure thanks thx
    ugh yay yes yo sweet super plus note notes todo task tasks list buy milk eggs bread
    grocery groceries sales marketing finance engineering product design legal support
    operations research hr it ops admin english spanish french german chinese japanese
    italian portuguese russian arabic hindi korean dutch greek american british canadian
    mexican indian asian european african lake river mountain mountains bridge airport
    station mall museum stadium theater theatre hall library university marathon race
    yoga tennis golf soccer football basketball baseball hockey chess guitar piano
    violin drums running swimming cycling climbing skiing surfing reading writing
    painting cooking baking photography gaming dancing singing fishing hunting travel
    startup startups company companies team teams apt dept intro quick chat sync
    standup demo call zoom meet catchup follow followup update updates great good best
    first second third last next new old big small little nice cool fun lunch
    welcome sunny rainy hot cold warm grab grabbed coffee tea beer wine pizza sushi
    tacos burgers dinner brunch class gym mom dad mum sis bro grandma grandpa uncle aunt
    wedding funeral baby shower graduation reunion christmas thanksgiving easter
    halloween hanukkah diwali weekend holiday holidays vacation summer winter spring fall
    autumn dear hello hiya heads up fyi btw asap pm am lunchtime noon midnight
    """
)

# Words that introduce a person ("met Sarah", "lunch with Mike", "call Priya").
PERSON_CUES: frozenset[str] = wordset(
    """
    met meet meeting meets with call called calling calls text texted texting ping pinged
    saw see seeing visit visited email emailed introduced thank thanked ask asked tell
    told remind invite invited hired interviewed friend buddy pal coworker colleague
    boss manager neighbor neighbour cousin roommate classmate mentor client customer
    girlfriend boyfriend wife husband partner brother sister son daughter uncle aunt
    named
    """
)

# Words after which "to" introduces a person ("talked to Sarah").
PERSON_TO_CUES: frozenset[str] = wordset(
    "talked talk talking spoke speak speaking spoken out introduced introduce hi hello "
    "wrote write replied reply respond responded sent send chatted chat"
)

# Words after which "to" introduces a place ("moved to Denver").
PLACE_TO_CUES: frozenset[str] = wordset(
    "moved move moving went go going goes flew fly flying drove drive driving trip "
    "flight travel traveling travelling headed heading back relocated relocating "
    "commute commuting returned return returning trips flights"
)

PLACE_CUES: frozenset[str] = wordset("in near around outside downtown visiting from at")

# "at Google", "from Google", "works for Google".
ORG_CUES: frozenset[str] = wordset("at from joined joining")
ORG_FOR_CUES: frozenset[str] = wordset(
    "works work worked working job jobs intern interning interned consulting consults"
)

# Landmark words that make a capitalised run a place ("Central Park").
LANDMARK_SUFFIXES: frozenset[str] = wordset(
    """
    park bridge street st avenue ave road rd boulevard blvd lane square plaza beach lake
    river mountain mountains valley airport station center centre mall museum stadium
    arena hotel island islands bay harbor harbour pier market gardens garden zoo
    """
)


def place_display(key: str) -> str | None:
    """Display name of a place from its lookup key, or None."""
    return PLACES.get(key)


def place_key(name: str) -> str:
    """The lookup key of a name: case-folded, periods dropped, single spaces."""
    return _key(name)
