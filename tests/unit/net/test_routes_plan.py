"""Route planning, the setup record and the nft ruleset text: no root needed."""

from __future__ import annotations

import json

import pytest

from tunnelgate.net import nft, setup


def test_split_routes_keeps_original_default():
    assert setup.split_routes(["0.0.0.0/0"]) == ["0.0.0.0/1", "128.0.0.0/1"]
    assert setup.split_routes(["::/0"]) == ["::/1", "8000::/1"]
    assert setup.split_routes(["10.1.2.3/8", "10.0.0.0/8", "2001:db8::1/32"]) == ["10.0.0.0/8", "2001:db8::/32"]
    with pytest.raises(setup.NetError, match="bad route"):
        setup.split_routes(["10.0.0.0/33"])


def test_record_is_atomic_json_and_dedupes(tmp_path):
    path = tmp_path / "sub" / "net.json"
    rec = setup._Recorder(path)
    item = {"kind": "route", "role": "tunnel", "dst": "10.0.0.0/8", "dev": "tg0", "gateway": None}
    rec.add(item)
    rec.add(dict(item))
    data = json.loads(path.read_text())
    assert data["items"] == [item] and data["version"] == 1
    assert not list(path.parent.glob("*.tmp"))
    rec.remove(item)
    assert setup.read_record(path)["items"] == []


def test_teardown_without_record_is_noop(tmp_path):
    setup.teardown(tmp_path / "missing.json")


def test_corrupt_record_is_a_clear_error(tmp_path):
    p = tmp_path / "net.json"
    p.write_text("{not json")
    with pytest.raises(setup.NetError, match="unreadable"):
        setup.teardown(p)


def test_gateway_ruleset_text():
    text = nft.gateway_ruleset("tgs0", "100.64.0.1/10", "eth0")
    assert text.startswith("table inet tunnelgate_tgs0 {")
    assert 'ip saddr 100.64.0.0/10 oifname "eth0" masquerade' in text
    assert 'iifname != "tgs0" oifname "tgs0" ct state established,related accept' in text
    assert 'iifname != "tgs0" oifname "tgs0" drop' in text
    # forged tunnel sources from any other interface never reach conntrack
    assert 'iifname != { "tgs0", "lo" } ip saddr 100.64.0.0/10 drop' in text
    # only what came out of the TUN (marked in forward) is masqueraded
    assert 'iifname "tgs0" oifname "eth0" meta mark set meta mark | 0x00100000 accept' in text
    assert 'meta mark & 0x00100000 == 0x00100000 ip saddr 100.64.0.0/10 oifname "eth0" masquerade' in text
    # other forwarding out of the uplink is dropped only where the gateway switched forwarding on
    assert 'oifname "eth0" drop' not in text
    assert 'meta nfproto ipv4 oifname "eth0" drop' in nft.gateway_ruleset("tgs0", "100.64.0.1/10", "eth0",
                                                                           exclusive=("ipv4",))
    assert "ip6 saddr fd00::/64" in nft.gateway_ruleset("tgs0", "fd00::1/64", "eth0")
    dual = nft.gateway_ruleset("tgs0", ["100.64.0.0/24", "fd64::/64"], "eth0")
    assert 'ip saddr 100.64.0.0/24 oifname "eth0" masquerade' in dual
    assert 'ip6 saddr fd64::/64 oifname "eth0" masquerade' in dual
    with pytest.raises(nft.NetError):
        nft.gateway_ruleset("tgs0", "100.64.0.0/10", 'eth0" accept; flush ruleset; "')
    with pytest.raises(nft.NetError):
        nft.table_name("bad name")


def test_killswitch_ruleset_text():
    text = nft.killswitch_ruleset("tg0", ["0.0.0.0/0", "10.0.0.0/8"], [("198.18.1.1", 51900)],
                                  ["192.168.1.0/24"])
    assert text.startswith("table inet tunnelgate_ks_tg0 {")
    out = text.split("chain forward")[0]
    lines = [l.strip() for l in out.splitlines()]
    accept = lines.index("ip daddr 198.18.1.1 udp dport 51900 accept")
    assert lines.index('oifname { "lo", "tg0" } accept') < accept
    assert accept < lines.index("ip daddr 192.168.1.0/24 accept") < lines.index("meta nfproto ipv4 drop")
    assert "ip daddr 10.0.0.0/8 drop" in lines and "meta nfproto ipv6 drop" not in lines
    assert "icmpv6" not in text                     # no IPv6 route: IPv6 is not the tunnel's
    six = nft.killswitch_ruleset("tg0", ["::/0"], [("2001:db8::1", 51900)])
    assert "ip6 daddr 2001:db8::1 udp dport 51900 accept" in six and "meta nfproto ipv6 drop" in six
    assert "nd-neighbor-solicit" in six
    for bad in (("tg0", ["0.0.0.0/0"], [("gw.example", 1)]), ("tg0", ["0.0.0.0/0"], [("198.18.1.1", 0)]),
                ('tg0" accept; flush ruleset; "', ["0.0.0.0/0"], [])):
        with pytest.raises(nft.NetError):
            nft.killswitch_ruleset(*bad)
