"""What webhooks may reach: URLs checked when a subscription is made, addresses at
every attempt, and the retry schedule."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest

from bastion.automation.outbound import Sender, check_url, permitted
from bastion.automation.settings import WebhookSettings
from bastion.errors import ValidationFailed
from bastion.jobs.lease import backoff


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("127.0.0.1", False),
        ("10.0.0.5", False),
        ("172.16.3.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),  # noqa: S104 - an address to refuse, not to bind
        ("224.0.0.1", False),
        ("::1", False),
        ("fd00::1", False),
        ("fe80::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
    ],
)
def test_only_public_addresses_are_reached(address: str, allowed: bool) -> None:
    assert permitted(ipaddress.ip_address(address), ()) is allowed


def test_an_allowed_network_may_be_reached_though_private() -> None:
    internal = (ipaddress.ip_network("10.20.0.0/16"),)
    assert permitted(ipaddress.ip_address("10.20.1.2"), internal)
    assert not permitted(ipaddress.ip_address("10.21.1.2"), internal)


@pytest.mark.parametrize(
    ("url", "production", "message"),
    [
        ("https://hooks.example.com/in", True, None),
        ("http://hooks.example.com/in", False, None),
        ("http://hooks.example.com/in", True, "https://"),
        ("ftp://hooks.example.com/in", False, "http"),
        ("https://user:pw@hooks.example.com/", False, "user name"),
        ("https://hooks.example.com/#x", False, "fragment"),
        ("https://127.0.0.1/in", False, "private"),
        ("https://localhost/in", False, "this machine"),
        ("https://[fe80::1]/in", False, "private"),
        ("https://hooks.example.com:99999/", False, "valid URL"),
        ("https:///nohost", False, "host"),
        (42, False, "URL"),
    ],
)
def test_subscription_urls_are_checked(url: object, production: bool, message: str | None) -> None:
    settings = WebhookSettings()
    if message is None:
        assert check_url(url, settings, production=production) == url
        return
    with pytest.raises(ValidationFailed) as refused:
        check_url(url, settings, production=production)
    (error,) = refused.value.errors
    assert error.field == "url"
    assert message in error.message


def test_a_refused_address_is_never_connected_to() -> None:
    sender = Sender(WebhookSettings(connect_timeout_seconds=0.5, timeout_seconds=0.5))
    try:
        sent = sender.post("http://10.255.255.1:9/never", {}, b"{}")
    finally:
        sender.close()
    assert (sent.status_code, sent.error) == (None, "address-not-allowed")


def test_allow_networks_must_be_networks() -> None:
    assert WebhookSettings(allow_networks="127.0.0.1/32, 10.0.0.0/8").networks()[1].prefixlen == 8
    with pytest.raises(ValueError, match="CIDR"):
        WebhookSettings(allow_networks="not-a-network")


def test_retries_wait_twice_as_long_each_time_up_to_the_cap() -> None:
    waits = [backoff(n, base_seconds=30, cap_seconds=600) for n in range(1, 7)]
    assert waits == [timedelta(seconds=s) for s in (30, 60, 120, 240, 480, 600)]
    assert backoff(0, base_seconds=30, cap_seconds=600) == timedelta(0)
