"""The SSRF guard: webhooks reach public addresses only, and exactly the address checked.

:meth:`SsrfGuard.check` parses a URL (with httpx's parser, the one that sends the request),
resolves its host and refuses it when ANY address is not public: loopback, private,
link-local, multicast, reserved, unspecified, shared (100.64.0.0/10), anything else
:mod:`ipaddress` does not call global, and the cloud metadata services (by address and by
name). IPv6 forms that embed an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible
``::a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``, Teredo) are judged by the IPv4
address they carry. Numeric hosts in the BSD forms (``2130706433``, ``0x7f.1``, ``127.1``) are
read with :func:`socket.inet_aton`, as the C resolver reads them, before any name lookup.

The allowlist (``Settings.webhook_allow``: addresses or CIDR networks) lets a non-public
address through only when the endpoint itself was created with ``allow_private``: both the
operator (the allowlist) and the endpoint's owner (the flag) must opt in. Metadata addresses are
never allowed, allowlisted or not.

:class:`PinnedTransport` defeats DNS rebinding: it connects to the address that was checked,
whatever the name resolves to a moment later, while the Host header, TLS SNI and certificate
check still use the URL's host name. Redirects are never followed (the sender treats a 3xx as a
failed attempt), so a receiver cannot bounce a delivery to an internal address.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import httpcore
import httpx

from closedloop.errors import ConfigError

__all__ = [
    "IPAddress",
    "PinnedTransport",
    "Resolver",
    "SsrfGuard",
    "Target",
    "UnresolvableHost",
    "UnsafeURL",
    "blocked_reason",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``(host, port) -> addresses``: the system resolver, or one a test injects.
Resolver = Callable[[str, int], Sequence[str]]

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "fd00:ec2::254",  # AWS IPv6
    )
)
METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_COMPAT = ipaddress.ip_network("::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeURL(ConfigError):
    """A webhook URL is malformed or reaches an address that is not public."""

    field: str | None = "url"


class UnresolvableHost(UnsafeURL):
    """A webhook URL's host name does not resolve (now)."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (:func:`socket.getaddrinfo`, TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, 6to4, NAT64, Teredo)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if (ip in _COMPAT and int(ip) > 1) or ip in _NAT64:  # not :: and ::1, judged as they are
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be reached by a webhook (``None``: it is a public address)."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "a scoped (link-local) IPv6 address"
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        for inner in _embedded_v4(ip):
            why = blocked_reason(inner)
            if why is not None:
                return f"an IPv6 form of {inner}, {why}"
    checks = (
        (ip.is_unspecified, "an unspecified"),
        (ip.is_loopback, "a loopback"),
        (ip.is_link_local, "a link-local"),
        (ip.is_multicast, "a multicast"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED, "a shared (carrier-grade NAT)"),
        (ip.is_private, "a private"),
        (ip.is_reserved, "a reserved"),
        (not ip.is_global, "a not globally routable"),
    )
    for hit, what in checks:
        if hit:
            return f"{what} address"
    return None


def _literal(host: str) -> IPAddress | None:
    """``host`` as an address when it is one, in any form the C resolver would accept."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # inet_aton reads the BSD numeric forms (decimal, octal, hex, fewer than four parts) the
    # way getaddrinfo does; only characters of those forms are passed to it.
    if host and all(c in "0123456789abcdefABCDEFxX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _network(entry: str) -> Network:
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        raise ConfigError(
            f"webhook_allow: {entry!r} is not an address or a CIDR network (e.g. 10.0.0.5 or "
            "10.0.0.0/24)",
            field="webhook_allow",
        ) from None


@dataclass(frozen=True, kw_only=True)
class Target:
    """A checked URL: the host name to present and the address to connect to."""

    url: str
    host: str
    port: int
    address: IPAddress
    addresses: tuple[IPAddress, ...]


class SsrfGuard:
    """Check webhook URLs (see the module docstring).

    Parameters
    ----------
    allow
        Addresses or CIDR networks that endpoints created with ``allow_private`` may reach.
    resolver
        ``(host, port) -> addresses``; :func:`system_resolver` by default.
    """

    def __init__(self, allow: Iterable[str] = (), *, resolver: Resolver | None = None) -> None:
        self.allow: tuple[Network, ...] = tuple(_network(e) for e in allow)
        self.resolver: Resolver = resolver or system_resolver

    def _allowed(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.allow)

    def parse(self, url: str) -> tuple[httpx.URL, str, int]:
        """Parse ``url`` (http or https with a host); the URL, its host and its port."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise UnsafeURL(
                f"url: {exc}; give an http(s) URL such as https://example.com/hook"
            ) from None
        if parsed.scheme not in _DEFAULT_PORTS:
            raise UnsafeURL(
                f"url: the scheme must be http or https, not {parsed.scheme or 'none'!r}"
            )
        host = parsed.raw_host.decode("ascii").lower()
        if not host:
            raise UnsafeURL("url: the URL has no host; give e.g. https://example.com/hook")
        return parsed, host, parsed.port or _DEFAULT_PORTS[parsed.scheme]

    def check(self, url: str, *, allow_private: bool = False) -> Target:
        """The checked target of ``url``; raises :class:`UnsafeURL` (field ``url``) when it may
        not be reached, :class:`UnresolvableHost` when its name does not resolve."""
        parsed, host, port = self.parse(url)
        bare = host.rstrip(".")
        if bare in METADATA_HOSTS:
            raise UnsafeURL(f"url: {host} is a cloud metadata service; webhooks may not reach it")
        literal = _literal(bare.partition("%")[0] if ":" in bare else bare)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                found = self.resolver(bare, port)
            except (OSError, UnicodeError) as exc:
                raise UnresolvableHost(f"url: the host {host} does not resolve ({exc})") from None
            addresses = []
            for a in found:
                ip = ipaddress.ip_address(a.partition("%")[0])
                if ip not in addresses:
                    addresses.append(ip)
            if not addresses:
                raise UnresolvableHost(f"url: the host {host} resolves to no address")
        for ip in addresses:
            why = blocked_reason(ip)
            if why is None:
                continue
            if ip in METADATA_ADDRESSES or not (allow_private and self._allowed(ip)):
                hint = (
                    ""
                    if ip in METADATA_ADDRESSES
                    else "; to reach it, list it in CLOSEDLOOP_WEBHOOK_ALLOW and create the "
                    "endpoint with allow_private"
                )
                raise UnsafeURL(f"url: {host} resolves to {ip}, {why}{hint}")
        return Target(
            url=str(parsed), host=host, port=port, address=addresses[0], addresses=tuple(addresses)
        )


class _PinnedBackend(httpcore.SyncBackend):
    """Connects to the checked address whatever name the connection pool asks for."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        if host.lower() != self.target.host or port != self.target.port:
            raise httpcore.ConnectError(f"refusing to connect to unchecked {host}:{port}")
        return super().connect_tcp(
            str(self.target.address), port, timeout, local_address, socket_options
        )


class PinnedTransport(httpx.HTTPTransport):
    """An httpx transport that reaches only ``target.address`` (TLS still verifies the host
    name), ignores proxy settings of the environment and keeps no connection alive.

    ``ssl_context`` replaces the system's trust store (e.g. a private CA).
    """

    def __init__(self, target: Target, *, ssl_context: ssl.SSLContext | None = None) -> None:
        context = ssl_context or httpx.create_ssl_context(trust_env=False)
        super().__init__(verify=context, trust_env=False)
        # httpx's transport takes no network backend, so its pool is replaced by one with the
        # pinned backend (same TLS context; the rest of httpx's transport, exception mapping
        # included, stays as it is).
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=1,
            max_keepalive_connections=0,
            network_backend=_PinnedBackend(target),
        )
