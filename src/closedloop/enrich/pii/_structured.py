"""Detectors of structured PII: regex first, then a validator (Luhn, mod-97, ipaddress, ...).

Every pattern is precompiled and free of nested unbounded quantifiers, so matching stays
linear in the length of the text.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Iterator

import phonenumbers

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
_CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){11,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,4})?\b")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])")
_SSN_BARE = re.compile(
    r"(?i)\b(?:ssn|social security(?: number| no\.?)?)\W{0,5}(?:is\W{1,3})?(\d{9})\b"
)
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")
_PHONE_CANDIDATE = re.compile(r"(?<![\w+])\+?\(?\d[\d \t().\-/]{5,22}\d(?!\w)")
_PHONE_CUE = re.compile(
    r"(?i)\b(?:phone|call|tel|telephone|fax|mobile|cell|text|sms|whatsapp|number|reach|contact"
    r"|dial|office|messages? to)\b"
)
_PHONE_AFTER = re.compile(r"(?i)[ \t]{1,3}(?:office|fax|mobile|cell|home|work|phone|tel)\b")
_DIGIT_GROUP = re.compile(r"\d+")
_DATE_LIKE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}\b")
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
    r"|\beyJ[A-Za-z0-9_\-]{8,2000}\.eyJ[A-Za-z0-9_\-]{8,4000}\.[A-Za-z0-9_\-]{8,2000}"
    r"|-----BEGIN [A-Z ]{0,30}PRIVATE KEY-----[\s\S]{0,8000}?-----END [A-Z ]{0,30}PRIVATE KEY-----)"
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


def find_emails(text: str) -> Iterator[Hit]:
    for m in _EMAIL.finditer(text):
        yield m.start(), m.end(), "email"


def find_credentials(text: str) -> Iterator[Hit]:
    for m in _URL_CREDS.finditer(text):
        yield m.start(1), m.end(1), "credentials"


def find_cards(text: str) -> Iterator[Hit]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group())
        if 12 <= len(digits) <= 19 and luhn_valid(digits) and len(set(digits)) > 1:
            yield m.start(), m.end(), "card"


def find_ibans(text: str) -> Iterator[Hit]:
    for m in _IBAN.finditer(text):
        if iban_valid(m.group()):
            yield m.start(), m.end(), "iban"


def find_ssns(text: str) -> Iterator[Hit]:
    for m in _SSN.finditer(text):
        yield m.start(), m.end(), "ssn"
    for m in _SSN_BARE.finditer(text):
        yield m.start(1), m.end(1), "ssn"


def find_ips(text: str) -> Iterator[Hit]:
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


def find_phones(text: str) -> Iterator[Hit]:
    """Phone numbers: a cheap candidate regex, then ``phonenumbers.PhoneNumberMatcher``.

    A candidate must be a valid number of one of a few regions, or a possible one when it
    starts with ``+`` or follows a cue such as "call" or "phone".
    """
    for m in _PHONE_CANDIDATE.finditer(text):
        cand = m.group()
        digits = sum(ch.isdigit() for ch in cand)
        if not 7 <= digits <= 15 or _DATE_LIKE.match(cand):
            continue
        cued = (
            cand.startswith("+")
            or _PHONE_CUE.search(text, max(0, m.start() - 40), m.start()) is not None
            or _PHONE_AFTER.match(text, m.end()) is not None
        )
        groups = len(_DIGIT_GROUP.findall(cand))
        if not cued and groups < 3 and digits < 10:
            continue  # "675 62314": a house number and a postcode, not a phone
        # three or more digit groups ("0494 92 82 32", "60-56-85-91") read as a phone number
        possible = cued or groups >= 3
        leniency = phonenumbers.Leniency.POSSIBLE if possible else phonenumbers.Leniency.VALID
        regions = ("US",) if cand.startswith("+") else _PHONE_REGIONS
        for region in regions:
            found = False
            for pm in phonenumbers.PhoneNumberMatcher(cand, region, leniency=leniency, max_tries=5):
                yield m.start() + pm.start, m.start() + pm.end, "phone"
                found = True
            if found:
                break


def shannon(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def find_secrets(text: str) -> Iterator[Hit]:
    """API keys: known prefixes, ``password=...`` assignments and high-entropy tokens."""
    for m in _SECRET_PREFIX.finditer(text):
        yield m.start(), m.end(), "secret"
    for m in _SECRET_ASSIGN.finditer(text):
        yield m.start(1), m.end(1), "secret"
    for m in _TOKEN.finditer(text):
        tok = m.group()
        has_digit = any(ch.isdigit() for ch in tok)
        has_upper = any(ch.isupper() for ch in tok)
        has_lower = any(ch.islower() for ch in tok)
        if has_digit and (has_upper or has_lower) and shannon(tok) >= 3.8:
            if not tok.isdigit():
                yield m.start(), m.end(), "secret"


def find_dobs(text: str) -> Iterator[Hit]:
    """Dates of birth: a date within 40 characters after born / DOB / birthday."""
    for cue in _DOB_CUE.finditer(text):
        m = _DATE.search(text, cue.end(), cue.end() + 60)
        if m is not None and m.start() - cue.end() <= 40:
            yield m.start(), m.end(), "dob"
