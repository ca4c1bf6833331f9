"""The gateway serves only its tunnel, and a dead client leaks nothing (issue 17,
items 3 and 4), in real namespaces with the real CLI.

A stranger (Lab.add_stranger) sits on the client-gateway link and routes via the
gateway; the upstream host counts what reaches it with an nft table of its own.
"""

from __future__ import annotations

import json

import pytest

from tgenv import PORT, TunnelEnv, ping, wait_until
from tglab.lab import GW_LINK, UPSTREAM

pytestmark = pytest.mark.root

COUNT_TABLE = "tgtest_count"
UDP_PORT = 9999
SPOOF_SRC = "100.64.0.2"        # the paying client's tunnel address

SEND = r'''
import socket, sys, time
kind, src, dst, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sent = 0

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(int.from_bytes(b[i:i + 2], "big") for i in range(0, len(b), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF

if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(n):
        try:
            s.sendto(b"x" * 500, (dst, 9999)); sent += 1
        except OSError:
            pass
else:       # echo requests with a forged source, built by hand
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for i in range(n):
        icmp = bytearray([8, 0, 0, 0, 0x47, 0x54, 0, i & 0xFF]) + b"s" * 1000
        icmp[2:4] = csum(bytes(icmp)).to_bytes(2, "big")
        h = bytearray(20)
        h[0], h[8], h[9] = 0x45, 64, 1
        h[2:4] = (20 + len(icmp)).to_bytes(2, "big")
        h[12:16], h[16:20] = socket.inet_aton(src), socket.inet_aton(dst)
        h[10:12] = csum(bytes(h)).to_bytes(2, "big")
        try:
            s.sendto(bytes(h) + icmp, (dst, 0)); sent += 1
        except OSError:
            pass
time.sleep(0.5)
print(sent)
'''


def send(lab, ns, kind, dst=UPSTREAM, src="0.0.0.0", n=50) -> int:
    """Datagrams sent (the kernel refused the rest: a drop in the output path)."""
    return int(lab.python(ns, SEND, kind, src, dst, str(n)).stdout.split()[-1])


def count_at(lab, ns, iface):
    """(Re)create a table in ``ns`` counting, on arrival at ``iface``, UDP to UDP_PORT and echo requests."""
    lab.run(ns, "nft", "-f", "-", input=f"""table inet {COUNT_TABLE}
delete table inet {COUNT_TABLE}
table inet {COUNT_TABLE} {{
    counter n_udp {{ }}
    counter n_echo {{ }}
    counter n_any {{ }}
    chain in {{
        type filter hook prerouting priority -300; policy accept;
        iifname "{iface}" counter name "n_any"
        iifname "{iface}" udp dport {UDP_PORT} counter name "n_udp"
        iifname "{iface}" icmp type echo-request counter name "n_echo"
    }}
}}
""")


def counts(lab, ns) -> dict[str, int]:
    out = json.loads(lab.run(ns, "nft", "-j", "list", "counters", "table", "inet", COUNT_TABLE).stdout)
    return {c["counter"]["name"][2:]: c["counter"]["packets"] for c in out["nftables"] if "counter" in c}


def test_gateway_forwards_and_masquerades_only_its_tunnel(lab, env):
    env.serve()
    env.up()
    assert ping(lab, lab.client).returncode == 0          # the tunnel works
    stranger = lab.add_stranger()
    # the stranger is a real neighbour: the gateway answers it on the link
    assert ping(lab, stranger, dst=GW_LINK, count=1).returncode == 0
    count_at(lab, lab.up, "veth0")
    count_at(lab, lab.client, "tg0")
    gw_before = env.status("gw")["stats"]

    # 1. plain traffic routed via the gateway is not forwarded upstream
    assert send(lab, stranger, "udp") == 50
    # 2. echo requests forged with the client's tunnel address are not masqueraded,
    #    so no answer goes down the client's tunnel (billed to its contract)
    assert send(lab, stranger, "icmp", src=SPOOF_SRC) == 50
    # 3. nothing from the link is forwarded into a client's tunnel
    lab.run(stranger, "ip", "route", "add", "100.64.0.0/10", "via", GW_LINK)
    assert send(lab, stranger, "udp", dst=SPOOF_SRC) == 50

    up, cl = counts(lab, lab.up), counts(lab, lab.client)
    assert up["udp"] == 0 and up["echo"] == 0, up
    assert cl["any"] == 0, cl
    gw_after = env.status("gw")["stats"]
    assert gw_after["tx_bytes"] - gw_before["tx_bytes"] < 10_000, (gw_before, gw_after)

    # the client's own traffic still goes through, counted where it arrives
    assert ping(lab, lab.client, count=2).returncode == 0
    assert counts(lab, lab.up)["echo"] >= 2
    assert send(lab, lab.client, "udp", n=5) == 5
    assert wait_until(lambda: counts(lab, lab.up)["udp"] == 5, timeout=5) is not None


def snapshot(lab, ns) -> dict:
    return {"routes": [lab.run(ns, "ip", *fam, "route", "show", "table", "all").stdout for fam in ((), ("-6",))],
            "rules": lab.run(ns, "ip", "rule", "show").stdout,
            "nft": lab.run(ns, "nft", "list", "ruleset").stdout,
            "links": lab.run(ns, "ip", "-br", "link").stdout}


def test_killed_client_leaks_nothing_and_down_restores_the_host(lab, env):
    # counted where the client's plain traffic would appear: on the link, at the gateway
    # (which since this fix would not forward it upstream anyway)
    count_at(lab, lab.gw, "veth-c")
    before = snapshot(lab, lab.client)
    env.serve()
    env.up()
    assert ping(lab, lab.client).returncode == 0
    seen = counts(lab, lab.gw)

    env.kill9("client")
    # its TUN and routes are gone: without the kill switch this leaves in plain via the link
    assert ping(lab, lab.client, count=3).returncode != 0
    send(lab, lab.client, "udp", n=20)
    after = counts(lab, lab.gw)
    assert (after["udp"], after["echo"]) == (seen["udp"], seen["echo"]), "traffic left the dead client in plain"
    # the connected link (the gateway's LAN) stays reachable: it never went through the tunnel
    assert ping(lab, lab.client, dst=GW_LINK, count=1).returncode == 0

    out = env.tg(lab.client, "down", "-c", str(env.client_conf)).stdout
    assert "removed routes and rules" in out
    assert snapshot(lab, lab.client) == before
    # and plain routing is back: the same packets appear on the link again
    send(lab, lab.client, "udp", n=3)
    assert wait_until(lambda: counts(lab, lab.gw)["udp"] == seen["udp"] + 3, timeout=5) is not None


def test_next_up_after_a_crash_replaces_the_kill_switch_and_down_removes_it(lab, env):
    before = snapshot(lab, lab.client)
    env.serve()
    env.up()
    env.kill9("client")
    env.up()
    assert ping(lab, lab.client).returncode == 0
    assert env.status("client")["kill_switch"] is True
    assert "kill sw.  on" in env.tg(lab.client, "status", "-c", str(env.client_conf)).stdout
    ruleset = lab.run(lab.client, "nft", "list", "ruleset").stdout
    assert ruleset.count("table inet tunnelgate_ks_tg0") == 1
    env.tg(lab.client, "down", "-c", str(env.client_conf))
    assert snapshot(lab, lab.client) == before


def test_kill_switch_off_in_the_config(lab):
    e = TunnelEnv(lab, client_extra="kill_switch = false")      # lands in [network]
    try:
        e.serve()
        e.up()
        assert ping(lab, lab.client).returncode == 0
        assert e.status("client")["kill_switch"] is False
        assert "tunnelgate_ks" not in lab.run(lab.client, "nft", "list", "ruleset").stdout
    finally:
        e.close()
