"""Address leases in real namespaces (issue 20, item 2): strangers cannot lock paying
clients out of the gateway's address pool, and a restart does not make it permanent.

Strangers are driven by a small Python process in a namespace (session.Initiator, no
TUN), from several source addresses and paced, so a per-source handshake rate limit does
not stop them."""

from __future__ import annotations

import json

import pytest

from tgenv import PORT, TG, TunnelEnv, ping, wait_until
from tglab.lab import GW_LINK

pytestmark = pytest.mark.root

SOURCES = [f"198.18.1.{100 + i}" for i in range(10)]     # extra addresses on the client's link

# argv: gateway public key, keys, per-source rate, sources (comma-separated), seconds each
# key keeps sending (0: throwaway, never confirms its handshake). Prints one JSON line:
# answered handshakes and the addresses the gateway gave.
STRANGERS = r'''
import base64, json, os, socket, sys, time
from tunnelgate import keys, session as sess
from tunnelgate.wire import KEEPALIVE
gw = base64.b64decode(sys.argv[1]); n = int(sys.argv[2]); rate = float(sys.argv[3])
sources = sys.argv[4].split(","); stay = float(sys.argv[5]); dst = (sys.argv[6], int(sys.argv[7]))
socks = []
for src in sources:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0)); s.settimeout(0.02)
    socks.append(s)
answered, addresses, gap = 0, [], 1.0 / (rate * len(socks))
for i in range(n):
    s = socks[i % len(socks)]
    init = sess.Initiator(keys.generate(), gw, sess.Timing())
    s.sendto(init.begin(time.monotonic(), time.time_ns(), os.urandom(sess.RAND_BYTES)), dst)
    deadline, until = time.monotonic() + (2.0 if stay else gap), None
    while time.monotonic() < (until or deadline):
        try:
            got = init.receive(s.recv(2048), time.monotonic())
        except socket.timeout:
            got = None
        if got is not None and got[0] == sess.HANDSHAKE_DONE:
            answered += 1
            addresses.append(json.loads(got[1])["address"])
            if not stay:
                break
            until = time.monotonic() + stay
        if until is not None:      # a live client: authenticated datagrams while it stays
            s.sendto(init.seal(KEEPALIVE, b"", time.monotonic()), dst)
            time.sleep(0.2)
    if not stay:
        time.sleep(max(0.0, gap - 0.001))
for s in socks:          # late answers to throwaways
    try:
        while True:
            s.recv(2048); answered += 1
    except OSError:
        pass
print(json.dumps({"answered": answered, "addresses": addresses}))
'''


def strangers(lab, env, n: int, rate: float = 20.0, stay: float = 0.0, ns: str | None = None,
              sources: list[str] = SOURCES) -> dict:
    timeout = n * (stay + 3) + 60 if stay else n / (rate * len(sources)) + 60
    out = lab.python(ns or lab.client, STRANGERS, env.gw_public, str(n), str(rate), ",".join(sources),
                     str(stay), GW_LINK, str(PORT), timeout=timeout)
    return json.loads(out.stdout.splitlines()[-1])


def add_sources(lab) -> None:
    for a in SOURCES:
        lab.run(lab.client, "ip", "addr", "add", f"{a}/24", "dev", "veth0")


def leases(env) -> dict:
    return env.status("gw")["leases"]


def paid(env, which: str, conf=None, ns=None) -> bool:
    ns = ns or (env.lab.gw if which == "gw" else env.lab.client)
    conf = conf or (env.gw_conf if which == "gw" else env.client_conf)
    st = json.loads(env.lab.run(ns, *TG, "status", "-c", str(conf), "--json").stdout)
    return any(c["state"] == "PAID" for c in st["market"]["contracts"])


def test_sixteen_keys_in_turn_all_get_an_address_from_a_28(lab):
    """The issue measured the last three of 16 keys refused on a /28 (13 leases)."""
    env = TunnelEnv(lab, gateway_extra="")
    try:
        text = env.gw_conf.read_text().replace('address = "100.64.0.1/24"', 'address = "100.64.0.1/28"')
        env.gw_conf.write_text(text)
        env.serve()
        got = strangers(lab, env, 16, stay=3.0, sources=["198.18.1.2"])
        assert got["answered"] == 16, env.logs()
        assert len(got["addresses"]) == 16
        st = leases(env)
        assert st["pool"] == 13 and st["used"] == 13 and st["reclaimed"] >= 3, st
        # and a real client after them still gets an address and a tunnel
        env.up()
        assert wait_until(lambda: ping(lab, lab.client, count=1).returncode == 0, 30) is not None, env.logs()
    finally:
        env.close()


def test_a_thousand_throwaway_keys_lock_no_paying_client_out_even_after_a_restart(lab):
    env = TunnelEnv(lab)
    try:
        add_sources(lab)
        env.serve()
        got = strangers(lab, env, 1000)
        assert got["answered"] >= 253, got                 # the /24 filled up with strangers
        assert leases(env)["used"] == 253
        # a new client with a paid contract (dummy backend) comes up at once and gets service
        env.up()
        took = wait_until(lambda: ping(lab, lab.client, count=1).returncode == 0, 30)
        assert took is not None, env.logs()
        print(f"strangers: {got['answered']} of 1000 answered; the paying client's ping {took:.1f} s after up")
        assert wait_until(lambda: paid(env, "gw"), 20) is not None, env.logs()

        # the leases survive a restart as they were; a second paying client still gets in
        before = leases(env)
        env.tg(lab.gw, "down", "-c", str(env.gw_conf))
        env.serve()
        after = leases(env)
        assert after["used"] == before["used"] == 253 and after["reclaimed"] >= before["reclaimed"]
        strangers(lab, env, 300)
        stranger = lab.add_stranger()
        second = env.dir / "client2.toml"
        text = env.client_conf.read_text()
        from tunnelgate import keys
        keys.write_private(env.dir / "cl2.key", keys.generate())
        second.write_text(text.replace('"cl.key"', '"cl2.key"').replace('state_dir = "cl"', 'state_dir = "cl2"'))
        try:
            lab.run(stranger, *TG, "up", "-c", str(second), timeout=30)
            assert wait_until(lambda: ping(lab, stranger, count=1).returncode == 0, 30) is not None, env.logs()
            assert wait_until(lambda: paid(env, "client", second, stranger), 20) is not None
            # the first client's lease was never taken: it is back, on the same address
            assert wait_until(lambda: ping(lab, lab.client, count=1).returncode == 0, 30) is not None
        finally:
            lab.run(stranger, *TG, "down", "-c", str(second), check=False)
    finally:
        env.close()
