"""Phone formats, name and place rules of the PII redactor, on hand-checked examples."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from closedloop.enrich.pii import PiiRedactor
from closedloop.enrich.pii._doc import Doc
from closedloop.enrich.pii._names import find_locations, find_persons
from closedloop.enrich.pii._structured import find_phones

REDACTOR = PiiRedactor()
REGIONS = ("US", "GB", "DE", "FR", "NL", "SE", "NO", "DK", "FI", "IT", "ES", "PT", "BR", "IN")
REGIONS += ("AU", "CA", "CH", "AT", "BE", "PL", "HU", "CZ", "IE", "NZ", "JP", "MX", "ZA", "TN")


def entities(text: str) -> list[tuple[str, str]]:
    return [(s.entity, s.value) for s in REDACTOR.find(text)]


def phones(text: str) -> list[str]:
    return [v for e, v in entities(text) if e == "phone"]


def _formats(region: str) -> list[str]:
    number = phonenumbers.example_number(region)
    assert number is not None
    fmt = phonenumbers.PhoneNumberFormat
    intl = phonenumbers.format_number(number, fmt.INTERNATIONAL)
    e164 = phonenumbers.format_number(number, fmt.E164)
    national = phonenumbers.format_number(number, fmt.NATIONAL)
    return [intl, e164, "00" + e164[1:], intl.replace(" ", "."), f"{national} x123"]


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("template", ["Call me at {} please.", "Fax: {}", "{} mobile"])
def test_phone_numbers_of_many_regions_and_formats_are_found_whole(
    region: str, template: str
) -> None:
    for number in _formats(region):
        text = template.format(number)
        assert phones(text) == [number], text


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("Fax: 345-899-3560x4587", "345-899-3560x4587"),
        ("Desk: (898)666-3621x0135", "(898)666-3621x0135"),
        ("reach me on 259.735.7502 ext. 459", "259.735.7502 ext. 459"),
        ("no message on my registered 905-674-3793. Please check", "905-674-3793"),
        ("no message on my registered 024 971 50 30. Please check", "024 971 50 30"),
        ("the new number is (022) 12345 now", "(022) 12345"),
        ("write down 030 123456 for the office", "030 123456"),
        ("+46 (0)8 928 571 38 fax", "+46 (0)8 928 571 38"),
    ],
)
def test_phone_extensions_and_national_formats(text: str, number: str) -> None:
    assert phones(text) == [number]


@pytest.mark.parametrize(
    "text",
    [
        "It's like that since 1/23/1984",
        "meeting on 23.01.1984 at noon",
        "founded in 1977",
        "page 1 2 3 4 5 6 7",
        "ZIP 94107-1234",
        "order 123456789 shipped",
        "card 348336950008010 is lost",  # 15 bare digits: an id, not a phone
    ],
)
def test_phone_near_misses(text: str) -> None:
    assert phones(text) == []


def test_a_number_with_a_zero_first_digit_is_no_card() -> None:
    assert entities("Call me at 00441212345678") == [("phone", "00441212345678")]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Hanne I. Kreutzmann from Can Capital is the keynote speaker", "Hanne I. Kreutzmann"),
        ("Csanád P Gere lives at 3178 Damvergi Street, Nicosia", "Csanád P Gere"),
        ("It's under my partner's name John A. Leiva", "John A. Leiva"),
        ("i lost my card. my name is lena andersson.", "lena andersson"),
        ("eva kleist lives at 255 hersnapvej 18", "eva kleist"),
        ("follow up with patricia desrosiers in a couple of months.", "patricia desrosiers"),
        ("her maiden name is nyberg", "nyberg"),
        ("Ubul: What a wife.\nNicole: Remember me?", "Ubul"),
        ("Dzhambek is from Civic Impulse LLC", "Dzhambek"),
        ("The Exorcist (1973), directed by William Friedkin.", "William Friedkin"),
    ],
)
def test_person_names(text: str, name: str) -> None:
    assert ("person", name) in entities(text)


@pytest.mark.parametrize(
    "text",
    [
        "the corner of Beiteveien 2 and Sieda Radial",  # a street: first name + suffix
        "these early shows on Marina Fort Street were important",
        "Since 1958 the satellites were made by Lockheed Martin, and Boeing",
        "Look for apps like Google Ads or Apple Search Ads.",
        "It is a UNESCO World Heritage Site.",
        "I am unaware of anything called the restrainer.",
        "I am not a native English speaker.",
        "Note: the office is closed.\nPhone: none",
        "Dusino San Michele, AT 31295",
        "I will grab a jean jacket and an angel investor",
    ],
)
def test_person_near_misses(text: str) -> None:
    assert "person" not in [e for e, _ in entities(text)], entities(text)


@pytest.mark.parametrize(
    ("text", "place"),
    [
        ("She lives in Cite Belle Vue now", "Cite Belle Vue"),
        ("We drove up to Lake Tahoe last week", "Lake Tahoe"),
        ("i moved to toronto last year", "toronto"),
        ("The office is in Rio de Janeiro.", "Rio de Janeiro"),
    ],
)
def test_places(text: str, place: str) -> None:
    assert ("location", place) in entities(text)


@given(st.text(max_size=200))
def test_finders_read_a_string_and_a_doc_alike(text: str) -> None:
    for finder in (find_phones, find_persons, find_locations):
        assert list(finder(text)) == list(finder(Doc(text)))


def test_doc_keeps_offsets_when_lowercasing_changes_length() -> None:
    doc = Doc("İstanbul'da Ali Veli 555 0132")
    assert len(doc.low) == len(doc.text)
    assert [tok for _, _, tok in doc.caps] == ["İstanbul'da", "Ali", "Veli"]
    assert doc.digits == 7


def test_a_private_key_block_is_one_secret() -> None:
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    assert entities(f"here: {key} done") == [("secret", key)]


@pytest.mark.parametrize("unit", ["1 ", "1-", "a@b.io ", "Ab ", "-----BEGIN PRIVATE KEY-----"])
def test_dense_soups_give_disjoint_sorted_spans(unit: str) -> None:
    text = unit * 3_000
    spans = REDACTOR.find(text)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))
    assert all(text[s.start : s.end] == s.value for s in spans)
