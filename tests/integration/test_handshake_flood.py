"""Handshakes under load (issue 20, item 3) in real namespaces: a client still
connects while spoofed initiations flood the gateway (they get cookies, no key
exchange); nothing that fails MAC1 is answered; the gateway port's nft guard
never drops the tunnel's own (GSO/GRO-sized) traffic."""

from __future__ import annotations

import base64
import json
import os

import pytest

from tgenv import PORT, ping
from tglab import flood
from tglab.lab import GW_LINK, UPSTREAM
from tunnelgate.session import RAND_BYTES, Initiator

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

PROBE = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
got = 0
for hexdg in sys.argv[3:]:
    s.sendto(bytes.fromhex(hexdg), (sys.argv[1], int(sys.argv[2])))
    try:
        s.recv(2048)
        got += 1
    except socket.timeout:
        pass
print(got)
'''


def valid_init(gw_public_b64: str) -> bytes:
    """An initiation as a client with a key of its own sends it (valid MAC1)."""
    client = Initiator(os.urandom(32), base64.b64decode(gw_public_b64))
    return client.begin(0.0, 1, os.urandom(RAND_BYTES), b"")


def guard_drops(lab) -> int:
    """Packets the gateway port's guard (nft chain port_guard) dropped."""
    out = json.loads(lab.run(lab.gw, "nft", "-j", "list", "ruleset").stdout)
    total = 0
    for item in out["nftables"]:
        rule = item.get("rule")
        if rule and rule["chain"] == "port_guard" and rule["table"].startswith("tunnelgate_"):
            total += sum(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
    return total


def test_client_connects_during_a_spoofed_initiation_flood_and_garbage_gets_no_reply(lab, env):
    env.serve()
    stranger = lab.add_stranger()
    flood.count_back(lab, stranger, PORT)
    init = valid_init(env.gw_public)
    flooder = flood.start_flood(lab, stranger, "replay", PORT, seconds=8, init=init)
    try:
        env.up()                            # its INIT may get a cookie first: it retries with MAC2
        assert ping(lab, lab.client).returncode == 0
    finally:
        out, err = flooder.communicate(timeout=40)
    assert flooder.returncode == 0, err
    gw = env.status("gw")["flood"]
    assert gw["cookie_sent"] > 0, gw        # the flood put the gateway under load
    assert env.status("gw")["peers"], "the client did not connect"

    # from the stranger's own address: garbage, and an INIT of the right type and
    # length with random content, once each: no answer to either
    garbage = os.urandom(100)
    random_init = init[:4] + os.urandom(len(init) - 4)
    got = lab.python(stranger, PROBE, GW_LINK, str(PORT), garbage.hex(), random_init.hex()).stdout
    assert int(got) == 0
    assert flood.back(lab, stranger) == 0       # nothing came back to the stranger's address at all


def test_port_guard_never_drops_the_tunnels_own_traffic(lab, env):
    files = lab.start_upstream({"20M.bin": 20_000_000})
    env.serve()
    env.up()
    assert ping(lab, lab.client).returncode == 0
    before = guard_drops(lab)
    got = lab.run(lab.client, "sh", "-c", f"curl -sS --max-time 60 http://{UPSTREAM}:8080/20M.bin | sha256sum",
                  timeout=90).stdout.split()[0]
    assert got == files["20M.bin"]
    up_file = env.dir / "upload.bin"
    up_file.write_bytes(os.urandom(20_000_000))
    lab.run(lab.client, "curl", "-sS", "--max-time", "60", "-o", "/dev/null", "--data-binary", f"@{up_file}",
            f"http://{UPSTREAM}:8080/upload", timeout=90)
    assert guard_drops(lab) == before
    # and the guard is there: a datagram too short for any kind is dropped by it
    stranger = lab.add_stranger()
    lab.python(stranger, PROBE, GW_LINK, str(PORT), "01")
    assert guard_drops(lab) == before + 1
