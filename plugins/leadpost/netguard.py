"""SSRF guard: actions may only reach public addresses, unless an operator allows a network.

An action URL is written by whoever edits the triggers file, and the request carries
credentials. So every address a target resolves to is checked *after* DNS resolution —
loopback, private, link-local, unique-local, multicast, reserved and cloud-metadata
addresses are refused unless they fall inside ``[leadpost] allowed_networks``
(``AIRFLOW__LEADPOST__ALLOWED_NETWORKS``, comma-separated CIDRs).

:class:`GuardedResolver` plugs the same check into aiohttp, so every resolution the
connection pool makes is filtered (a DNS answer that changes between checks — DNS
rebinding — is still refused). aiohttp never asks a resolver about literal IP hosts, so
callers check those with :func:`check_address` before connecting.

Cloud-metadata addresses (169.254.169.254, fd00:ec2::254, 100.100.100.200) are only
allowed by a network naming exactly that address (``/32`` or ``/128``): allowing
``169.254.0.0/16`` for a device network must not open the metadata service.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from leadpost.exceptions import ConfigError, UnsafeTargetError

if TYPE_CHECKING:
    from aiohttp.abc import ResolveResult

__all__ = [
    "METADATA_ADDRESSES",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "allowed_networks",
    "check_address",
    "parse_networks",
    "resolve_and_check",
    "unsafe_reason",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean…
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, not globally routable
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix embeds an IPv4 address
_CONFIG_NAME = "[leadpost] allowed_networks (env AIRFLOW__LEADPOST__ALLOWED_NETWORKS)"


@functools.lru_cache(maxsize=32)
def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Parse comma-separated CIDRs (a bare address means that single address).

    :param text: e.g. ``"10.1.2.0/24, 127.0.0.1/32"``.
    :raises ConfigError: naming the entry that is not a network.
    """
    networks: list[IPNetwork] = []
    problems: list[str] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            problems.append(f"{_CONFIG_NAME}: {entry!r} is not a network; use CIDRs such as 10.0.0.0/8")
    if problems:
        raise ConfigError(problems)
    return tuple(networks)


def allowed_networks() -> tuple[IPNetwork, ...]:
    """The networks the operator allowed, read from the Airflow config on every call (env wins)."""
    from airflow.configuration import conf

    return parse_networks(conf.get("leadpost", "allowed_networks", fallback="") or "")


def unsafe_reason(ip: IPAddress) -> str | None:
    """Why an address may not be reached by default, or ``None`` when it is a public address.

    :param ip: the resolved address.
    """
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 reaches the IPv4 host: judge the IPv4 address.
        embedded = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            return unsafe_reason(embedded)
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address) and ip in ipaddress.IPv6Network("fc00::/7"):
        return "unique-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if ip in _SHARED or not ip.is_global:
        return "not globally routable"
    return None


def _is_allowed(ip: IPAddress, reason: str, allowed: Iterable[IPNetwork]) -> bool:
    for net in allowed:
        if ip.version != net.version or ip not in net:
            continue
        if reason != "cloud metadata" or net.prefixlen == net.max_prefixlen:
            return True
    return False


def check_address(host: str, ip: str, *, allowed: Iterable[IPNetwork] | None = None) -> None:
    """Refuse ``ip`` (what ``host`` resolved to) unless it is public or inside an allowed network.

    :param host: the host name of the URL, for the message.
    :param ip: the resolved address (an IPv6 zone ``%eth0`` is accepted).
    :param allowed: the allowed networks; ``None`` reads :func:`allowed_networks`.
    :raises UnsafeTargetError: naming the host, the address, why, and how to allow it.
    """
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        raise UnsafeTargetError(f"refusing to connect to {host!r}: {ip!r} is not an IP address") from None
    reason = unsafe_reason(address)
    if reason is None:
        return
    if _is_allowed(address, reason, allowed_networks() if allowed is None else allowed):
        return
    single = f"{address}/{address.max_prefixlen}"
    raise UnsafeTargetError(
        f"refusing to connect to {host!r}: it resolves to {address}, a {reason} address. "
        f"If this endpoint is meant to be reachable, add its network to {_CONFIG_NAME}, "
        f"e.g. AIRFLOW__LEADPOST__ALLOWED_NETWORKS={single}"
    )


def _literal_ip(host: str) -> str | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    return text


def resolve_and_check(host: str, port: int, *, allowed: Iterable[IPNetwork] | None = None) -> list[str]:
    """Resolve ``host`` (blocking) and check every address; return the addresses.

    A host with any unsafe address is refused as a whole: a name that points at both a
    public and an internal address is not one to trust.

    :param host: host name or literal IP.
    :param port: the port (passed to ``getaddrinfo``).
    :param allowed: the allowed networks; ``None`` reads :func:`allowed_networks`.
    :raises UnsafeTargetError: when an address is not allowed.
    :raises OSError: when the name does not resolve.
    """
    nets = tuple(allowed_networks() if allowed is None else allowed)
    literal = _literal_ip(host)
    if literal is not None:
        check_address(host, literal, allowed=nets)
        return [literal]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for ip in addresses:
        check_address(host, ip, allowed=nets)
    return addresses


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that refuses unsafe answers; give it to ``TCPConnector(resolver=...)``.

    :param resolver: the resolver doing the lookups (default: aiohttp's ``DefaultResolver``).
    :param allowed: fixed allowed networks; ``None`` reads the Airflow config on each resolution.
    """

    def __init__(
        self, *, resolver: AbstractResolver | None = None, allowed: Iterable[IPNetwork] | None = None
    ) -> None:
        self._resolver = resolver if resolver is not None else DefaultResolver()
        self._allowed = None if allowed is None else tuple(allowed)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        nets = allowed_networks() if self._allowed is None else self._allowed
        for result in results:
            check_address(host, result["host"], allowed=nets)
        return results

    async def close(self) -> None:
        await self._resolver.close()
