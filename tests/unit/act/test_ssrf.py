"""The SSRF guard, offline: host names resolve through an injected resolver."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from closedloop.act.webhooks.ssrf import SsrfGuard, UnresolvableHost, UnsafeURL, blocked_reason

NAMES = {
    "localtest.example": ["127.0.0.1"],
    "mixed.example": ["93.184.216.34", "10.1.2.3"],
    "public.example": ["93.184.216.34"],
    "v6.example": ["2606:4700::1111", "::1"],
}


def resolver(host: str, port: int) -> Sequence[str]:
    if host not in NAMES:
        raise OSError(f"{host}: name not known (test resolver)")
    return NAMES[host]


def guard(*allow: str) -> SsrfGuard:
    return SsrfGuard(allow, resolver=resolver)


REFUSED = [
    "http://127.0.0.1",
    "http://127.0.0.1:8080/hook",
    "http://2130706433",
    "http://0177.0.0.1",
    "http://0x7f000001",
    "http://0x7f.1",
    "http://127.1",
    "http://127.0.0.1.",
    "http://[::1]",
    "http://[::ffff:127.0.0.1]",
    "http://[::ffff:7f00:1]",
    "http://[::127.0.0.1]",
    "http://[64:ff9b::a00:1]",
    "http://[2002:a9fe:a9fe::]",
    "http://169.254.169.254/latest/meta-data",
    "http://[fd00:ec2::254]",
    "http://metadata.google.internal",
    "http://METADATA.google.internal./computeMetadata/v1/",
    "http://10.0.0.1",
    "http://192.168.1.1",
    "http://172.16.0.1",
    "http://100.64.0.1",
    "http://0.0.0.0",
    "http://[::]",
    "http://[fe80::1]",
    "http://[fe80::1%25eth0]",
    "http://[fc00::1]",
    "http://224.0.0.1",
    "http://240.0.0.1",
    "http://localtest.example",
    "http://mixed.example",
    "http://v6.example",
    "ftp://x",
    "file:///etc/passwd",
    "gopher://127.0.0.1:25/",
    "http://evil.com@127.0.0.1",
    "http://",
    "not a url",
]


@pytest.mark.parametrize("url", REFUSED)
def test_the_guard_refuses_urls_that_reach_non_public_addresses(url: str) -> None:
    with pytest.raises(UnsafeURL) as caught:
        guard().check(url)
    assert caught.value.field == "url"
    assert not isinstance(caught.value, UnresolvableHost)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://2130706433", "127.0.0.1"),
        ("http://0x7f000001", "127.0.0.1"),
        ("http://127.1", "127.0.0.1"),
        ("http://[::ffff:7f00:1]", "127.0.0.1"),
        ("http://localtest.example", "127.0.0.1"),
        ("http://mixed.example", "10.1.2.3"),
    ],
)
def test_the_refusal_names_the_address_actually_reached(url: str, address: str) -> None:
    with pytest.raises(UnsafeURL, match=address.replace(".", r"\.")):
        guard().check(url)


def test_metadata_is_refused_even_when_allowlisted() -> None:
    with pytest.raises(UnsafeURL, match="metadata"):
        guard("169.254.0.0/16").check("http://169.254.169.254/", allow_private=True)


@pytest.mark.parametrize(
    "url", ["http://93.184.216.34", "https://public.example/hook?x=1", "http://[2606:4700::1111]"]
)
def test_public_addresses_are_allowed(url: str) -> None:
    target = guard().check(url)
    assert target.address.is_global


def test_an_allowlisted_address_needs_the_endpoints_allow_private_flag() -> None:
    with pytest.raises(UnsafeURL, match="allow_private"):
        guard("127.0.0.1").check("http://127.0.0.1:9/")
    target = guard("127.0.0.1").check("http://127.0.0.1:9/", allow_private=True)
    assert str(target.address) == "127.0.0.1" and target.port == 9
    assert guard("10.0.0.0/8").check("http://mixed.example", allow_private=True).port == 80


def test_allow_private_without_the_allowlist_reaches_nothing_private() -> None:
    with pytest.raises(UnsafeURL):
        guard().check("http://127.0.0.1", allow_private=True)
    with pytest.raises(UnsafeURL):
        guard("127.0.0.1").check("http://10.0.0.1", allow_private=True)


def test_the_decimal_form_of_an_allowlisted_address_is_the_same_address() -> None:
    target = guard("127.0.0.1").check("http://2130706433:8000/", allow_private=True)
    assert str(target.address) == "127.0.0.1" and target.host == "2130706433"


def test_a_name_that_does_not_resolve_is_reported_as_such() -> None:
    with pytest.raises(UnresolvableHost, match="does not resolve"):
        guard().check("https://nowhere.example/")


def test_a_bad_allowlist_entry_names_the_setting() -> None:
    with pytest.raises(Exception, match="webhook_allow") as caught:
        SsrfGuard(["not-an-address"])
    assert getattr(caught.value, "field", None) == "webhook_allow"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "IPv6 form of 10.0.0.1"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "shared"),
        ("8.8.8.8", None),
    ],
)
def test_blocked_reason_says_why(address: str, reason: str | None) -> None:
    import ipaddress

    why = blocked_reason(ipaddress.ip_address(address))
    assert (why is None) if reason is None else (why is not None and reason in why)
