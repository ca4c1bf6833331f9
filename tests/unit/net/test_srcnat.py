"""The client's per-gateway source translation ruleset (net/nft.srcnat_ruleset)."""

import pytest

from tunnelgate.net.nft import NetError, srcnat_ruleset


def test_destinations_of_other_gateways_leave_with_their_lease_and_answers_come_back():
    text = srcnat_ruleset("tg0", ["100.64.0.2", "fd64::2"], [
        ("198.18.21.2/32", "100.64.0.2"), ("198.18.22.2/32", "100.64.1.2"),
        ("0.0.0.0/0", "100.64.1.2"), ("::/0", "fd64:1::2")])
    lines = [l.strip() for l in text.splitlines()]
    out = lines[lines.index('oifname != "tg0" accept') + 1:]
    # a host destination of the TUN's own gateway is left alone before the default's rule
    assert out[:4] == ["ip daddr 198.18.21.2/32 accept",
                       "ip daddr 198.18.22.2/32 ip saddr 100.64.0.2 ip saddr set 100.64.1.2 accept",
                       "ip saddr 100.64.0.2 ip saddr set 100.64.1.2 accept",
                       "ip6 saddr fd64::2 ip6 saddr set fd64:1::2 accept"]
    # one way back per leased address, before conntrack (priority raw)
    assert 'iifname "tg0" ip daddr 100.64.1.2 ip daddr set 100.64.0.2' in lines
    assert 'iifname "tg0" ip6 daddr fd64:1::2 ip6 daddr set fd64::2' in lines
    assert sum("daddr set" in l for l in lines) == 2 and "priority raw" in text
    # after NAT (srcnat, 100), so what a relay forwards into the TUN is translated too
    assert "type filter hook postrouting priority 110; policy accept;" in lines
    assert "hook output" not in text


def test_a_family_without_an_own_address_or_a_bad_interface_is_refused():
    with pytest.raises(NetError):
        srcnat_ruleset("tg0", ["100.64.0.2"], [("::/0", "fd64:1::2")])
    with pytest.raises(NetError):
        srcnat_ruleset("tg0; drop", ["100.64.0.2"], [])
