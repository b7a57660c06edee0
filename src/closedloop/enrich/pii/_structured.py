"""Detectors of structured PII: regex first, then a validator (Luhn, mod-97, ipaddress, ...).

Every pattern is precompiled and free of nested unbounded quantifiers, so matching stays
linear in the length of the text.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator

import phonenumbers

from closedloop.enrich.pii._doc import Doc

__all__ = [
    "find_cards",
    "find_credentials",
    "find_dobs",
    "find_emails",
    "find_ibans",
    "find_ips",
    "find_phones",
    "find_secrets",
    "find_ssns",
    "iban_valid",
    "luhn_valid",
]

Hit = tuple[int, int, str]

_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}(?![\w-])"
)
_URL_CREDS = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{0,15}://([^\s/:@]{1,128}:[^\s/@]{1,256})@")
# (not after "00": "00441212345678" is an international phone number, whatever Luhn says)
_CARD = re.compile(r"(?<![\d+-])(?!00)\d(?:[ -]?\d){11,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?\b")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_SSN_BARE = re.compile(
    r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\W{0,5}(?:is\W{1,3})?(\d{9})\b"
)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
# A candidate: digits with separators, then an optional extension ("x4587", "ext. 12"); a
# "+" may follow a letter or a digit ("ana@example.org+14155550132"). A tab and " / " end a
# candidate: they separate values listed side by side, never the groups of one number.
_PHONE_CANDIDATE = re.compile(
    r"(?:(?<![\w+])|(?<=[^\W_])(?=\+))(\+?\(?\d(?:[\d().\-]|/(?! )| (?!/ )){5,22}\d)"
    r"(?:[ \t]{0,2}(?:x|ext\.?|extension|#)[ \t]{0,2}\d{1,6})?(?!\w)"
)
_PHONE_CUE = re.compile(
    r"\b(?:phone|call|tel|telephone|fax|mobile|cell|text|sms|whatsapp|number|reach|contact"
    r"|dial|office|messages? to)\b"
)
_PHONE_AFTER = re.compile(r"[ \t]{1,3}(?:office|fax|mobile|cell|home|work|phone|tel)\b")
_DIGIT_GROUP = re.compile(r"\d+")
_DATE_LIKE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}\b")
# a whole candidate shaped like a date: 1/23/1984, 23.01.84, 1984/01/23
_DATE_SHAPE = re.compile(
    r"(\d{1,2})([/.\-])(\d{1,2})\2(?:\d{2}|\d{4})|\d{4}([/.\-])\d{1,2}\4\d{1,2}"
)
_PHONE_REGIONS = ("US", "GB", "DE", "FR", "AU", "IN", "BR", "NL", "SE")
_SECRET_PREFIX = re.compile(
    r"(?:\bsk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,200}"
    r"|\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,200}"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,255}"
    r"|\bgithub_pat_[A-Za-z0-9_]{30,255}"
    r"|\bglpat-[A-Za-z0-9_\-]{20,64}"
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"
    r"|\bxox[abposr]-[A-Za-z0-9\-]{10,200}"
    r"|\bAIza[0-9A-Za-z_\-]{35}"
    r"|\beyJ[A-Za-z0-9_\-]{8,2000}\.eyJ[A-Za-z0-9_\-]{8,4000}\.[A-Za-z0-9_\-]{8,2000})"
)
# run only when an END line exists: each BEGIN would otherwise scan 8,000 characters in vain
_PEM = re.compile(
    r"-----BEGIN [A-Z ]{0,30}PRIVATE KEY-----[\s\S]{0,8000}?-----END [A-Z ]{0,30}PRIVATE KEY-----"
)
_SECRET_ASSIGN = re.compile(
    r"(?i)\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
    r"[\"']?\s{0,3}[:=]\s{0,3}[\"']?([^\s\"',;]{6,256})"
)
_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_=\-])[A-Za-z0-9+/_=\-]{24,512}(?![A-Za-z0-9+/_=\-])")
_DOB_CUE = re.compile(r"(?i)\b(?:born|d\.?o\.?b\.?|date of birth|birth ?date|birthday)\b")
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]{0,6}\.?"
_DATE = re.compile(
    r"(?i)\b(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}"
    r"|" + _MONTH + r" \d{1,2}(?:st|nd|rd|th)?,? \d{4}"
    r"|\d{1,2}(?:st|nd|rd|th)? (?:of )?" + _MONTH + r",? \d{4})\b"
)


_NEXT_GROUP = re.compile(r"[ -]\d")


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """Whether ``iban`` (spaces allowed) passes the ISO 13616 mod-97 check.

    >>> iban_valid("GB82 WEST 1234 5698 7654 32"), iban_valid("GB82WEST12345698765433")
    (True, False)
    """
    s = iban.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    moved = s[4:] + s[:4]
    try:
        number = "".join(str(int(ch, 36)) for ch in moved)
    except ValueError:
        return False
    return int(number) % 97 == 1


def _doc(text: str | Doc) -> Doc:
    return text if isinstance(text, Doc) else Doc(text)


def find_emails(text: str | Doc) -> Iterator[Hit]:
    doc = _doc(text)
    if "@" not in doc.text:
        return
    for m in _EMAIL.finditer(doc.text):
        yield m.start(), m.end(), "email"


def find_credentials(text: str | Doc) -> Iterator[Hit]:
    doc = _doc(text)
    if "@" not in doc.text or "://" not in doc.text:
        return
    for m in _URL_CREDS.finditer(doc.text):
        yield m.start(1), m.end(1), "credentials"


def find_cards(text: str | Doc) -> Iterator[Hit]:
    doc = _doc(text)
    if doc.digits < 12:
        return
    text = doc.text
    pos = 0
    while (m := _CARD.search(text, pos)) is not None:
        digits = m.group().replace(" ", "").replace("-", "")
        if 12 <= len(digits) <= 19 and luhn_valid(digits) and len(set(digits)) > 1:
            yield m.start(), m.end(), "card"
            pos = m.end()
        else:
            # "415-555-1164 4172 4273 6196 1104": a card may start at a later group
            nxt = _NEXT_GROUP.search(text, m.start() + 1, m.end())
            pos = m.end() if nxt is None else nxt.start() + 1


def find_ibans(text: str | Doc) -> Iterator[Hit]:
    doc = _doc(text)
    if doc.digits < 4:
        return
    text = doc.text
    pos = 0
    while (m := _IBAN.search(text, pos)) is not None:
        # the greedy match may run into a following group ("... 2047 17 3305"): the longest
        # valid prefix that ends at a group boundary wins
        ends = [m.end()] + [i for i in range(m.end() - 1, m.start(), -1) if text[i] == " "]
        end = next((e for e in ends if iban_valid(text[m.start() : e])), None)
        if end is not None:
            yield m.start(), end, "iban"
            pos = end
        else:
            # "2001:db8::fe56 DE82 1854 ...": an IBAN may start at a later group
            nxt = text.find(" ", m.start() + 1, m.end())
            pos = m.end() if nxt < 0 else nxt + 1


def find_ssns(text: str | Doc) -> Iterator[Hit]:
    doc = _doc(text)
    if doc.digits < 9:
        return
    for m in _SSN.finditer(doc.text):
        yield m.start(), m.end(), "ssn"
    if "ss" in doc.low or "social" in doc.low:
        for m in _SSN_BARE.finditer(doc.text):
            yield m.start(1), m.end(1), "ssn"


def find_ips(text: str | Doc) -> Iterator[Hit]:
    doc = _doc(text)
    text = doc.text
    if doc.digits < 4:
        return
    if text.count(".") >= 3:
        for m in _IPV4.finditer(text):
            try:
                ipaddress.IPv4Address(m.group())
            except ValueError:
                continue
            yield m.start(), m.end(), "ip"
    if text.count(":") >= 2:
        for m in _IPV6.finditer(text):
            if m.group().count(":") < 2 or len(m.group()) < 3:
                continue
            try:
                ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            yield m.start(), m.end(), "ip"


def find_phones(text: str | Doc) -> Iterator[Hit]:
    """Phone numbers: a candidate regex (extensions included), then rules on its shape.

    A candidate of 7 to 15 digits is a phone number when it is international (``+`` or
    ``00`` and a country calling code), follows or precedes a cue ("call", "phone", "fax",
    ...), or has three or more digit groups ("0494 92 82 32", "60-56-85-91"). Other
    candidates of ten to twelve digits, grouped or with a trunk ``0``, must be a valid number
    of one of a few regions (``phonenumbers``, the slow path). An extension (``x4587``,
    ``ext. 12``) is kept in the span.

    >>> [text for text in ("+1-903-140-4508x769", "call 668 5702", "in 1977 or 2024")
    ...  if list(find_phones(text))]
    ['+1-903-140-4508x769', 'call 668 5702']
    """
    doc = _doc(text)
    if doc.digits < 7:
        return
    text = doc.text
    slow = _SlowChecks()
    pos = 0
    while (m := _PHONE_CANDIDATE.search(text, pos)) is not None:
        pos = m.end()
        start, cand = m.start(), m.group(1)
        if _is_phone(doc, cand, start, m.end(), slow):
            yield start, m.end(), "phone"
            continue
        # "+1 415-555-1164 4172 4273 6196 1104": a phone number run on into another number
        # (a card, a list): the longest leading groups that make a valid number
        ends: list[int] = []  # where each prefix of 7 to 15 digits ends, in the candidate
        n_digits = 0
        for g in _DIGIT_GROUP.finditer(cand):
            n_digits += g.end() - g.start()
            if n_digits > 15:
                break
            if n_digits >= 7:
                ends.append(g.end())
        for end in reversed(ends[:-1] if ends and ends[-1] == len(cand) else ends):
            if slow.check(cand[:end], _valid_head):
                yield start, start + end, "phone"
                pos = start + end
                break


def _is_phone(doc: Doc, cand: str, start: int, end: int, slow: _SlowChecks) -> bool:
    """The rules of :func:`find_phones` for one whole candidate."""
    digits = sum(ch.isdigit() for ch in cand)
    if not 7 <= digits <= 15 or _DATE_LIKE.match(cand) or _is_date(cand):
        return False
    if cand.startswith(("+", "00")):
        head = cand.lstrip("+(0 ") if cand[0] == "+" else cand[2:].lstrip("( ")
        cc = _DIGIT_GROUP.match(head)
        if cc is not None and digits >= 8 and _calling_code(cc.group()):
            return True
    cued = (
        _PHONE_CUE.search(doc.low, max(0, start - 40), start) is not None
        or _PHONE_AFTER.match(doc.low, end) is not None
    )
    found = _DIGIT_GROUP.findall(cand)
    groups = len(found)
    if (
        cued
        or (groups >= 3 and _grouped_like_a_phone(cand))
        or (groups == 2 and cand[0] == "(")  # "(022) 12345": an area code
        # "030 123456": a national trunk prefix, then the subscriber number
        or (groups == 2 and found[0][0] == "0" and len(found[1]) >= 5 and digits >= 8)
    ):
        return True
    if 10 <= digits <= 12 and (1 < groups <= 3 or cand[0] == "0"):
        # one bare run of digits is an id or an account number more often than a phone
        return slow.check(cand, _valid_somewhere)
    return False


class _SlowChecks:
    """phonenumbers validations of one text: each distinct candidate checked once, and at
    most ``_SLOW_CHECKS`` of them (~50 µs a region each): the cost stays bounded, and a
    text that repeats a candidate gets the same answer every time (so redacting twice
    changes nothing)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done: dict[str, bool] = {}

    def check(self, cand: str, valid: Callable[[str], bool]) -> bool:
        got = self.done.get(cand)
        if got is None:
            got = len(self.done) < _SLOW_CHECKS and valid(cand)
            self.done[cand] = got
        return got


def _valid_head(head: str) -> bool:
    """Whether the leading groups of a long candidate are a valid number on their own."""
    if head.startswith("00"):
        head = "+" + head[2:]
    if head.startswith("+"):
        try:
            return phonenumbers.is_valid_number(phonenumbers.parse(head, None))
        except phonenumbers.NumberParseException:
            return False
    return sum(ch.isdigit() for ch in head) >= 10 and _valid_somewhere(head)


_SLOW_CHECKS = 32  # phonenumbers validations per text, at most


def _is_date(cand: str) -> bool:
    m = _DATE_SHAPE.fullmatch(cand)
    if m is None:
        return False
    if m.group(1) is None:
        return True
    a, b = int(m.group(1)), int(m.group(3))
    return 1 <= min(a, b) <= 12 and 1 <= max(a, b) <= 31


def _calling_code(digits: str) -> bool:
    """Whether ``digits`` starts with an assigned country calling code (1 to 3 digits)."""
    codes = phonenumbers.COUNTRY_CODE_TO_REGION_CODE
    return any(int(digits[:n]) in codes for n in (1, 2, 3) if len(digits) >= n)


def _grouped_like_a_phone(cand: str) -> bool:
    """Three or more groups, none of them a lone digit after the first ("1 2 3 4 5 6 7" is
    a list, "1-800-555-0132" a phone)."""
    groups = _DIGIT_GROUP.findall(cand)
    return all(len(g) >= 2 for g in groups[1:])


def _valid_somewhere(cand: str) -> bool:
    for region in _PHONE_REGIONS:
        try:
            number = phonenumbers.parse(cand, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return True
    return False


# Literal parts of the _SECRET_PREFIX matches with a "-" or "_" in them: cheap gates.
_SECRET_HINTS = (
    *("sk-", "_live_", "_test_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    *("glpat-", "xox"),
)
_DOB_HINTS = ("born", "birth", "dob", "d.o", "do.b")


def _secret_hint(text: str) -> bool:
    """Whether ``text`` holds the literal part of any _SECRET_PREFIX pattern."""
    if ("-" in text or "_" in text) and any(p in text for p in _SECRET_HINTS):
        return True
    return "AKIA" in text or "ASIA" in text or "AIza" in text or "eyJ" in text


def shannon(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


IDENTIFIER = re.compile(
    r"(?<![0-9A-Za-z_-])(?:"
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])(?:[0-9a-f]{64}|[0-9a-f]{40}|[0-9a-f]{32}|[0-9a-f]{16})"
    r")(?![0-9A-Za-z_-])"
)
"""UUIDs, and lower-case hex of 16, 32, 40 or 64 digits (span and trace ids, hashes): random by
design, and the ids an app joins on. Nothing inside one is PII (a card or a phone number
read out of its digits is a coincidence), and none is taken for a secret."""


def find_secrets(text: str | Doc) -> Iterator[Hit]:
    """API keys: known prefixes, ``password=...`` assignments and high-entropy tokens."""
    doc = _doc(text)
    text = doc.text
    if _secret_hint(text):
        for m in _SECRET_PREFIX.finditer(text):
            yield m.start(), m.end(), "secret"
    if "PRIVATE KEY-----" in text and "-----END" in text:
        for m in _PEM.finditer(text):
            yield m.start(), m.end(), "secret"
    low = doc.low
    if "pass" in low or "pwd" in low or "secret" in low or "token" in low or "key" in low:
        for m in _SECRET_ASSIGN.finditer(text):
            yield m.start(1), m.end(1), "secret"
    if not doc.digits or max(map(len, text.split()), default=0) < 24:
        return  # a high-entropy token has a digit, and 24 characters without a space
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if IDENTIFIER.fullmatch(tok):
            # UUIDs, trace and span ids, hashes: random by design, and the ids an app joins
            # on; a secret of this shape is caught by its prefix or its assignment instead.
            continue
        has_digit = any(ch.isdigit() for ch in tok)
        has_upper = any(ch.isupper() for ch in tok)
        has_lower = any(ch.islower() for ch in tok)
        if has_digit and (has_upper or has_lower) and shannon(tok) >= 3.8:
            if not tok.isdigit():
                yield m.start(), m.end(), "secret"


def find_dobs(text: str | Doc) -> Iterator[Hit]:
    """Dates of birth: a date within 40 characters after born / DOB / birthday."""
    doc = _doc(text)
    if not doc.digits or not any(k in doc.low for k in _DOB_HINTS):
        return
    text = doc.text
    for cue in _DOB_CUE.finditer(doc.low):
        stop = cue.end() + 60
        tag = text.find("<", cue.end(), stop)  # an earlier pass's replacement ends the window
        m = _DATE.search(text, cue.end(), stop if tag == -1 else tag)
        if m is not None and m.start() - cue.end() <= 40:
            yield m.start(), m.end(), "dob"
