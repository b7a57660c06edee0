"""Each entity type on hand-made positives and near-misses."""

from __future__ import annotations

import pytest

from closedloop.enrich.pii import PiiRedactor
from closedloop.enrich.pii._structured import iban_valid, luhn_valid

REDACTOR = PiiRedactor()


def entities(text: str) -> list[tuple[str, str]]:
    return [(s.entity, s.value) for s in REDACTOR.find(text)]


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        ("write to ana.lopez+bills@example.co.uk today", "email", "ana.lopez+bills@example.co.uk"),
        ("call me at (415) 555-0132 tonight", "phone", "(415) 555-0132"),
        ("my mobile is +44 7700 900123", "phone", "+44 7700 900123"),
        ("card 4111 1111 1111 1111 expires", "card", "4111 1111 1111 1111"),
        ("pay with 5555-5555-5555-4444", "card", "5555-5555-5555-4444"),
        ("IBAN GB82 WEST 1234 5698 7654 32 please", "iban", "GB82 WEST 1234 5698 7654 32"),
        ("iban de89370400440532013000", "iban", "de89370400440532013000"),
        # a hex group just before it must not swallow its start, nor a group after it its end
        ("peer ::fe56 DE82 1854 6711 0754 2047 17 ok", "iban", "DE82 1854 6711 0754 2047 17"),
        ("to DE89 3704 0044 0532 0130 00 1234 today", "iban", "DE89 3704 0044 0532 0130 00"),
        ("blocked from 203.0.113.42 again", "ip", "203.0.113.42"),
        ("v6 peer 2001:db8::8a2e:370:7334 seen", "ip", "2001:db8::8a2e:370:7334"),
        ("SSN 078-05-1120 on file", "ssn", "078-05-1120"),
        ("my social security number is 078051120", "ssn", "078051120"),
        ("key sk-proj-abcDEF1234567890abcdefXYZ ok", "secret", "sk-proj-abcDEF1234567890abcdefXYZ"),
        (
            "token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 ok",
            "secret",
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
        ),
        ("aws AKIAIOSFODNN7EXAMPLE key", "secret", "AKIAIOSFODNN7EXAMPLE"),
        ("slack xoxb-123456789012-abcdefABCDEF ok", "secret", "xoxb-123456789012-abcdefABCDEF"),
        ("password=hunter2!x in the log", "secret", "hunter2!x"),
        (
            "blob Zx8Qp2Lm9Rt4Vw7Ky1Nb6Hc3Jd5Fg0Ae in the log",
            "secret",
            "Zx8Qp2Lm9Rt4Vw7Ky1Nb6Hc3Jd5Fg0Ae",
        ),
        ("fetch https://bob:hunter2@db.example.com/x", "credentials", "bob:hunter2"),
        ("I was born on 12/03/1985 in a small town", "dob", "12/03/1985"),
        ("DOB: March 3, 1990", "dob", "March 3, 1990"),
        ("My name is Maria Gonzalez and I need help", "person", "Maria Gonzalez"),
        ("Please ask Dr. Okonkwo about it", "person", "Okonkwo"),
        ("Jennifer Walsh will call back", "person", "Jennifer Walsh"),
        ("ship it to 1600 Pennsylvania Avenue NW", "address", "1600 Pennsylvania Avenue"),
        ("PSC 1234, Box 5678\nAPO AE 09876", "address", "PSC 1234, Box 5678\nAPO AE 09876"),
        ("We moved here from Toronto last year", "location", "Toronto"),
        ("She flew to Reykjavik on Monday", "location", "Reykjavik"),
    ],
)
def test_finds_each_entity_type(text: str, entity: str, value: str) -> None:
    assert (entity, value) in entities(text)


@pytest.mark.parametrize(
    ("text", "entity"),
    [
        ("card 4111 1111 1111 1112 expires", "card"),  # fails Luhn
        ("order 1234567890123 shipped", "card"),  # fails Luhn
        ("IBAN GB82 WEST 1234 5698 7654 33", "iban"),  # fails mod-97
        ("version 999.1.2.3 released", "ip"),
        ("at 12:30:45 sharp", "ip"),
        ("ticket 000-12-3456", "ssn"),  # area 000 is never issued
        ("see https://example.com/docs", "credentials"),
        ("the meeting is on 12/03/1985", "dob"),  # a date, but not a birth date
        ("commit deadbeefdeadbeefdeadbeefdeadbeef", "secret"),  # low entropy
        ("Capitalized words like Wisdom and Discipline are not names.", "person"),
        ("How do I check my balance on my credit card?", "person"),
        ("How do I check my balance on my credit card?", "location"),
        ("room 12 is free", "address"),
        ("we ship in 5 to 7 business days", "address"),  # a range, not "28245 Puruntie 82"
        ("about 1 in 10 users", "address"),
        ("founded in 1977", "phone"),
    ],
)
def test_ignores_near_misses(text: str, entity: str) -> None:
    assert entity not in [e for e, _ in entities(text)]


def test_luhn_and_iban_checksums() -> None:
    assert luhn_valid("4012888888881881")
    assert not luhn_valid("4012888888881882")
    assert iban_valid("FR14 2004 1010 0505 0001 3M02 606")
    assert not iban_valid("FR14 2004 1010 0505 0001 3M02 607")
    assert not iban_valid("XX")


def test_find_returns_sorted_non_overlapping_spans_with_their_values() -> None:
    text = "Mail jo@ex.io, card 4111111111111111, ip 10.1.2.3"
    spans = REDACTOR.find(text)
    assert [s.entity for s in spans] == ["email", "card", "ip"]
    assert all(text[s.start : s.end] == s.value for s in spans)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


def test_url_credentials_keep_the_host() -> None:
    assert REDACTOR.redact_text("postgres://app:s3cr3t@db:5432/x") == (
        "postgres://<CREDENTIALS>@db:5432/x"
    )
