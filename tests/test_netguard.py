"""The SSRF guard: internal addresses are refused after DNS, unless an operator allows them."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket

import pytest
from aiohttp.abc import AbstractResolver

from leadpost import netguard
from leadpost.config import ActionConfig
from leadpost.exceptions import ConfigError, UnsafeTargetError
from leadpost.hook import LeadPostHook
from leadpost.netguard import GuardedResolver, allowed_networks, check_address, resolve_and_check

LEAD = {"id": 1, "email": "ana@example.com"}
NOTHING_ALLOWED: tuple = ()


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.10", "private"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.10.1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::5", "unique-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", ("private", "reserved")),  # Python versions file 240/4 differently
        ("100.64.0.1", "not globally routable"),
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped IPv6 reaches the IPv4 host
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ],
)
def test_internal_addresses_are_refused_with_a_message_that_says_how_to_allow(ip, reason):
    with pytest.raises(UnsafeTargetError) as info:
        check_address("crm.internal", ip, allowed=NOTHING_ALLOWED)
    message = str(info.value)
    assert "'crm.internal'" in message
    assert str(ipaddress.ip_address(ip.split("%")[0])) in message
    reasons = reason if isinstance(reason, tuple) else (reason,)
    assert any(f"a {r} address" in message for r in reasons)
    assert "AIRFLOW__LEADPOST__ALLOWED_NETWORKS=" in message
    assert "[leadpost] allowed_networks" in message


@pytest.mark.parametrize("ip", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(ip):
    check_address("example.com", ip, allowed=NOTHING_ALLOWED)


def test_an_allowed_network_opens_exactly_that_network():
    allowed = netguard.parse_networks("10.1.2.0/24")
    check_address("crm.internal", "10.1.2.3", allowed=allowed)
    with pytest.raises(UnsafeTargetError, match=re.escape("10.1.3.1")):
        check_address("crm.internal", "10.1.3.1", allowed=allowed)


def test_metadata_needs_an_exact_entry_not_a_wide_network():
    with pytest.raises(UnsafeTargetError, match="cloud metadata"):
        check_address("meta", "169.254.169.254", allowed=netguard.parse_networks("169.254.0.0/16"))
    check_address("device", "169.254.9.9", allowed=netguard.parse_networks("169.254.0.0/16"))
    check_address("meta", "169.254.169.254", allowed=netguard.parse_networks("169.254.169.254/32"))


def test_allowed_networks_follow_the_airflow_config_at_call_time(monkeypatch):
    assert allowed_networks() == (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))
    monkeypatch.setenv("AIRFLOW__LEADPOST__ALLOWED_NETWORKS", " 10.0.0.0/8 , 192.168.7.7 ")
    assert allowed_networks() == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.7.7/32"))
    monkeypatch.setenv("AIRFLOW__LEADPOST__ALLOWED_NETWORKS", "")
    assert allowed_networks() == ()
    with pytest.raises(UnsafeTargetError):
        check_address("localhost", "127.0.0.1")


def test_a_bad_cidr_in_the_config_is_a_config_error(monkeypatch):
    monkeypatch.setenv("AIRFLOW__LEADPOST__ALLOWED_NETWORKS", "10.0.0.0/8,not-a-network")
    with pytest.raises(ConfigError, match="'not-a-network' is not a network"):
        allowed_networks()


def test_localhost_is_refused_after_resolution_unless_allowed(monkeypatch):
    # The test setting allows loopback: localhost resolves and passes.
    addresses = resolve_and_check("localhost", 80)
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    monkeypatch.setenv("AIRFLOW__LEADPOST__ALLOWED_NETWORKS", "")
    with pytest.raises(UnsafeTargetError, match=r"'localhost': it resolves to .* loopback"):
        resolve_and_check("localhost", 80)


def test_literal_ip_hosts_are_checked_too():
    assert resolve_and_check("127.0.0.1", 80) == ["127.0.0.1"]
    assert resolve_and_check("[::1]", 80) == ["::1"]
    with pytest.raises(UnsafeTargetError, match=re.escape("10.0.0.1")):
        resolve_and_check("10.0.0.1", 80)
    with pytest.raises(UnsafeTargetError, match=re.escape("169.254.169.254")):
        resolve_and_check("169.254.169.254", 80, allowed=NOTHING_ALLOWED)


class _RebindingDNS(AbstractResolver):
    """A DNS server that answers a public address first and an internal one afterwards."""

    def __init__(self) -> None:
        self.answers = ["93.184.216.34", "10.0.0.1"]

    async def resolve(self, host, port=0, family=socket.AF_INET):
        ip = self.answers.pop(0)
        return [{"hostname": host, "host": ip, "port": port, "family": family, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


def test_guarded_resolver_checks_every_resolution_so_rebinding_fails():
    resolver = GuardedResolver(resolver=_RebindingDNS(), allowed=NOTHING_ALLOWED)

    async def twice():
        first = await resolver.resolve("rebind.example", 443)
        assert first[0]["host"] == "93.184.216.34"
        await resolver.resolve("rebind.example", 443)

    with pytest.raises(UnsafeTargetError, match=re.escape("'rebind.example': it resolves to 10.0.0.1")):
        asyncio.run(twice())


def test_guarded_resolver_reads_the_config_when_not_given_a_list(monkeypatch):
    async def resolve():
        resolver = GuardedResolver()
        try:
            return await resolver.resolve("localhost", 80)
        finally:
            await resolver.close()

    assert asyncio.run(resolve())
    monkeypatch.setenv("AIRFLOW__LEADPOST__ALLOWED_NETWORKS", "")
    with pytest.raises(UnsafeTargetError, match="localhost"):
        asyncio.run(resolve())


# --- through the hook, against the real receiver ------------------------------------------------


def _hook(url: str) -> LeadPostHook:
    action = ActionConfig(id="crm", url=url, fields={"email": "email"}, timeout_s=2)
    return LeadPostHook(action, action_key="t.crm")


def test_hook_refuses_localhost_when_not_allowed_and_nothing_reaches_the_receiver(receiver, monkeypatch):
    port = receiver.url.rsplit(":", 1)[1]
    hook = _hook(f"http://localhost:{port}/hook")
    assert hook.send_one(LEAD).outcome.ok  # allowed by the test setting
    receiver.reset()
    monkeypatch.setenv("AIRFLOW__LEADPOST__ALLOWED_NETWORKS", "")
    with pytest.raises(UnsafeTargetError, match="'localhost'"):
        _hook(f"http://localhost:{port}/hook").send_one(LEAD)
    with pytest.raises(UnsafeTargetError, match=re.escape("127.0.0.1")):
        _hook(f"{receiver.url}/hook").send_one(LEAD)
    assert receiver.requests == []


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/crm"])
def test_hook_refuses_metadata_and_private_targets_before_connecting(url):
    with pytest.raises(UnsafeTargetError, match="AIRFLOW__LEADPOST__ALLOWED_NETWORKS"):
        _hook(url).send_one(LEAD)


def test_hook_send_raises_unsafe_target_instead_of_returning_an_outcome(receiver, monkeypatch):
    port = receiver.url.rsplit(":", 1)[1]
    hook = _hook(f"http://localhost:{port}/x")
    monkeypatch.setenv("AIRFLOW__LEADPOST__ALLOWED_NETWORKS", "")

    async def go():
        async with hook.async_client(4) as client:
            return await client.send(hook.build_request(LEAD))

    with pytest.raises(UnsafeTargetError):
        asyncio.run(go())
    assert receiver.requests == []
