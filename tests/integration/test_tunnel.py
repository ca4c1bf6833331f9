"""The tunnel end to end: real namespaces, TUN devices, UDP, the real CLI."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from datagram_capture import capture_datagrams
from tgenv import PORT, TunnelEnv, ping, wait_until
from tglab.lab import GW_LINK, UPSTREAM, UPSTREAM6
from tglab.configs import TUNNEL6

pytestmark = pytest.mark.root


def routes(lab, ns):
    return [lab.run(ns, "ip", *fam, "route", "show", "table", "all").stdout for fam in ((), ("-6",))] + \
           [lab.run(ns, "ip", "rule", "show").stdout]


def test_ping_download_upload(lab, env):
    files = lab.start_upstream({"50M.bin": 50_000_000})
    env.serve()
    env.up()
    assert env.status("client")["address"] == "100.64.0.2/24"
    r = ping(lab, lab.client)
    assert r.returncode == 0, r.stdout + r.stderr
    got = lab.run(lab.client, "sh", "-c", f"curl -sS --max-time 60 http://{UPSTREAM}:8080/50M.bin | sha256sum",
                  timeout=90).stdout.split()[0]
    assert got == files["50M.bin"]

    up_file = env.dir / "upload.bin"
    up_file.write_bytes(bytes(range(256)) * 80_000 + b"tail")
    import hashlib
    want = hashlib.sha256(up_file.read_bytes()).hexdigest()
    reply = lab.run(lab.client, "curl", "-sS", "--max-time", "60", "--data-binary", f"@{up_file}",
                    f"http://{UPSTREAM}:8080/upload", timeout=90).stdout
    assert json.loads(reply)["sha256"] == want

    gw = env.status("gw")
    assert gw["peers"][0]["address"] == "100.64.0.2"
    assert gw["stats"]["rx_bytes"] > 20_000_000 and gw["stats"]["tx_bytes"] > 50_000_000


def test_no_reach_without_tunnel_and_down_restores_routes(lab, env):
    lab.start_upstream({})
    before = routes(lab, lab.client)
    env.serve()
    # the gateway forwards now, yet the upstream host cannot answer the client's own address:
    # only traffic that came through the tunnel (and was masqueraded) gets through
    assert ping(lab, lab.client, count=2).returncode != 0
    env.up()
    assert ping(lab, lab.client).returncode == 0
    during = routes(lab, lab.client)
    assert "0.0.0.0/1" in during[0] and "128.0.0.0/1" in during[0]
    assert f"{GW_LINK} via" in during[0] or f"{GW_LINK} dev" in during[0]
    env.tg(lab.client, "down", "-c", str(env.client_conf))
    assert routes(lab, lab.client) == before
    assert ping(lab, lab.client, count=2).returncode != 0
    gw_tables = lab.run(lab.gw, "nft", "list", "tables").stdout
    assert "tunnelgate" in gw_tables
    env.tg(lab.gw, "down", "-c", str(env.gw_conf))
    assert "tunnelgate" not in lab.run(lab.gw, "nft", "list", "tables").stdout
    assert lab.run(lab.gw, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"


def test_client_crash_then_up_cleans_leftovers(lab, env):
    before = routes(lab, lab.client)
    env.serve()
    env.up()
    env.kill9("client")
    # a dead client leaves its routes; the next `up` cleans them first and works
    env.up()
    assert ping(lab, lab.client, dst="100.64.0.1").returncode == 0
    env.tg(lab.client, "down", "-c", str(env.client_conf))
    assert routes(lab, lab.client) == before


def test_gateway_restart_resumes_within_5s(lab, env):
    lab.start_upstream({})
    env.serve()
    env.up()
    assert ping(lab, lab.client).returncode == 0
    pinger = lab.popen(lab.client, "ping", "-n", "-i", "0.2", UPSTREAM)
    try:
        time.sleep(0.5)
        env.kill9("gw")
        env.serve()
        took = wait_until(lambda: ping(lab, lab.client, count=1, wait=0.3).returncode == 0, timeout=5)
        assert took is not None, "traffic did not resume within 5 s of the gateway's restart\n" + env.logs()
    finally:
        pinger.kill()
    st = env.status("client")
    assert st["connected"] and st["address"] == "100.64.0.2/24"  # same address: stable per key


def send_udp(lab, ns, payload: bytes):
    lab.run(ns, "python3", "-c",
            "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.sendto(bytes.fromhex(sys.argv[1]), ('{GW_LINK}', {PORT}))", payload.hex())


def test_replayed_and_tampered_datagrams_are_dropped_and_spoofing_blocked(lab, env):
    lab.start_upstream({})
    env.serve()
    env.up()
    datagrams = capture_datagrams(lab, lab.client, "veth0", 3, lambda: ping(lab, lab.client, count=3))
    data = [d for d in datagrams if d[0] == 3]
    assert data, f"no data datagram captured: {[d[:1] for d in datagrams]}"
    before = env.status("gw")
    send_udp(lab, lab.client, data[0])                      # replay
    # one bit of the (authenticated) counter: a fresh counter, so it reaches the MAC check
    flipped = bytearray(data[-1])
    flipped[14] ^= 0x10
    send_udp(lab, lab.client, bytes(flipped))
    time.sleep(0.5)
    after = env.status("gw")
    s0, s1 = before["session_stats"], after["session_stats"]
    assert s1.get("replay", 0) == s0.get("replay", 0) + 1
    assert s1.get("bad_mac", 0) == s0.get("bad_mac", 0) + 1
    assert after["stats"].get("rx_packets") == before["stats"].get("rx_packets")

    # a second address on the client's TUN: the gateway must not forward its packets
    lab.run(lab.client, "ip", "addr", "add", "100.64.0.99/32", "dev", "tg0")
    r = ping(lab, lab.client, count=2, extra=("-I", "100.64.0.99"))
    assert r.returncode != 0
    assert env.status("gw")["stats"].get("drop_spoofed", 0) >= 2
    assert ping(lab, lab.client, count=1).returncode == 0   # the real address still works


def test_ipv6_in_a_dual_stack_tunnel_and_only_from_the_given_address(lab):
    lab.start_upstream({})
    env = TunnelEnv(lab, routes=("0.0.0.0/0", "::/0"), address6=TUNNEL6)
    try:
        env.serve()
        env.up()
        assert env.status("client")["address6"] == "fd64:7467::2/64"
        gw = env.status("gw")
        assert gw["address6"] == TUNNEL6 and gw["peers"][0]["address6"] == "fd64:7467::2"
        # the upstream has no route to fd64::/64: a reply means the gateway masqueraded
        r = ping(lab, lab.client, dst=UPSTREAM6, count=2)
        assert r.returncode == 0, r.stdout + r.stderr
        # the TUN's own multicast listener reports (ff02::16) stay on the client
        assert env.status("client")["stats"].get("drop_link_local6", 0) >= 1
        assert env.status("gw")["stats"].get("drop_spoofed", 0) == 0
        # a second IPv6 address on the client's TUN: its packets are not forwarded
        lab.run(lab.client, "ip", "addr", "add", "fd64:7467::99/128", "dev", "tg0", "nodad")
        r = ping(lab, lab.client, dst=UPSTREAM6, count=2, extra=("-I", "fd64:7467::99"))
        assert r.returncode != 0
        assert env.status("gw")["stats"].get("drop_spoofed", 0) >= 2
    finally:
        print(env.logs())
        env.close()


def test_ipv6_routed_to_an_ipv4_only_gateway_never_leaves_the_client(lab):
    lab.start_upstream({})
    env = TunnelEnv(lab, routes=("0.0.0.0/0", "::/0"))
    try:
        env.serve()
        env.up()
        assert env.status("client")["address6"] is None
        assert ping(lab, lab.client, count=1).returncode == 0
        # no IPv6 address on the TUN: ping6 needs a source, so give one the gateway never gave
        lab.run(lab.client, "ip", "addr", "add", "fd64:7467::2/64", "dev", "tg0", "nodad")
        assert ping(lab, lab.client, dst=UPSTREAM6, count=2).returncode != 0
        cl, gw = env.status("client"), env.status("gw")
        assert cl["stats"].get("drop_ipv6_off", 0) >= 2
        assert gw["stats"].get("drop_ipv6_off", 0) == 0 and gw["stats"].get("drop_spoofed", 0) == 0
        assert all(not c["destination"].startswith("2001:") for c in cl["market"]["contracts"])
    finally:
        print(env.logs())
        env.close()


def test_client_follows_a_gateway_whose_address_changes_during_a_download(lab):
    """The gateway listens on every address; its link address changes from 198.18.1.1 to
    198.18.1.3 in the middle of a download. Its datagrams now come from the new address:
    the client follows them (authenticated), routes the new endpoint and the download
    completes intact."""
    files = lab.start_upstream({"30M.bin": 30_000_000})
    env = TunnelEnv(lab, listen="0.0.0.0")
    try:
        env.serve()
        env.up()
        curl = lab.popen(lab.client, "sh", "-c",
                         f"curl -sS --max-time 60 --limit-rate 5M http://{UPSTREAM}:8080/30M.bin | sha256sum",
                         stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        # renumbered: (deleting a primary address after adding a second one would take
        # the second one with it unless promote_secondaries is set)
        lab.run(lab.gw, "sh", "-c", f"ip addr del {GW_LINK}/24 dev veth-c && "
                                    "ip addr add 198.18.1.3/24 dev veth-c")
        out, _ = curl.communicate(timeout=90)
        assert out.split()[0] == files["30M.bin"]
        assert env.status("client")["gateway"] == f"198.18.1.3:{PORT}"
        assert ping(lab, lab.client, count=2).returncode == 0
    finally:
        print(env.logs())
        env.close()
