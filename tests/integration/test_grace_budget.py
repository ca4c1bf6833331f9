"""A client that accepts and never pays (dummy wallet with nothing in it) gets at most the
gateway's grace budgets forwarded in total, counted on the upstream host (an nft counter in
the up namespace), not by the daemon: across 20 destinations at once, and across 10 fresh
keys one after another (protocol/grace.py)."""
import json
import time

import pytest

from tgenv import TG, TunnelEnv, wait_until
from tunnelgate import keys

pytestmark = pytest.mark.root

GRACE_KB, STRANGERS_KB_PER_MIN = 100, 200
GATEWAY = (f"[pricing]\ngrace_kb = {GRACE_KB}\ngrace_time_s = 8\n"
           f"strangers_kb_per_min = {STRANGERS_KB_PER_MIN}\n")
BROKE = '[payment]\nbackend = "dummy"\nbalance_msat = 0\n'
DESTS = [f"198.18.2.{10 + i}" for i in range(20)]
PKT = 1200
# a contract's last slice may be passed by one packet each way before it stops
SLACK = 2 * 1500

SENDER = """
import socket, sys, time
dests, seconds, rate = sys.argv[1].split(","), float(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = bytes(%d)
end, sent = time.monotonic() + seconds, 0
while time.monotonic() < end:                    # bounded: `seconds`, `rate` datagrams a second
    for d in dests:
        try:
            s.sendto(payload, (d, 9))
            sent += 1
        except OSError:
            pass
    time.sleep(len(dests) / rate)
print(sent)
""" % PKT


def upstream(lab) -> None:
    """20 destination addresses on the up host, and a counter of what reaches them."""
    dev = lab.run(lab.up, "sh", "-c", "ip -o -4 addr show | awk '/198.18.2.2\\//{print $2; exit}'").stdout.strip()
    for d in DESTS:
        lab.run(lab.up, "ip", "addr", "add", f"{d}/32", "dev", dev)
    rules = ("table inet tggrace {\n  chain pre { type filter hook prerouting priority -300; policy accept;\n"
             f"    ip daddr {{ {', '.join(DESTS)} }} counter\n  }}\n}}\n")
    lab.run(lab.up, "nft", "-f", "-", input=rules)


def upstream_bytes(lab) -> int:
    out = json.loads(lab.run(lab.up, "nft", "-j", "list", "table", "inet", "tggrace").stdout)
    for item in out["nftables"]:
        for e in item.get("rule", {}).get("expr", []):
            if "counter" in e:
                return int(e["counter"]["bytes"])
    raise AssertionError("no nft counter in the up namespace")


def send(lab, ns, dests, seconds, rate=400):
    r = lab.run(ns, "python3", "-c", SENDER, ",".join(dests), str(seconds), str(rate), timeout=seconds + 20)
    return int(r.stdout)


def tunnel_up(lab, env, ns, conf) -> None:
    lab.run(ns, *TG, "up", "-c", str(conf), timeout=30)
    assert wait_until(lambda: "tg" in lab.run(ns, "ip", "-o", "link").stdout, 10) is not None


def test_never_paying_client_gets_one_grace_across_20_destinations(lab):
    env = TunnelEnv(lab, gateway_extra=GATEWAY, client_extra=BROKE)
    try:
        upstream(lab)
        env.serve()
        env.up()
        time.sleep(1)
        sent = send(lab, lab.client, DESTS, 12)          # all 20 at once, well past the grace time
        time.sleep(1)
        got = upstream_bytes(lab)
        print(f"never-paying client, 20 destinations: sent {sent * PKT} B, upstream saw {got} B "
              f"(grace {GRACE_KB} KB)")
        assert sent * PKT > 20 * GRACE_KB * 1000             # enough offered to take 20 graces
        assert 0 < got <= GRACE_KB * 1000 + 20 * SLACK, env.logs()
        g = env.status("gw")["market"]["grace"]
        assert g["per_peer_kb"] == GRACE_KB and g["strangers_kb_per_min"] == STRANGERS_KB_PER_MIN
    finally:
        env.close()


def test_ten_fresh_never_paying_keys_share_the_strangers_budget(lab):
    env = TunnelEnv(lab, gateway_extra=GATEWAY, client_extra=BROKE)
    try:
        upstream(lab)
        env.serve()
        text = env.client_conf.read_text()
        start = time.monotonic()
        for i in range(10):
            conf = env.dir / f"fresh{i}.toml"
            keys.write_private(env.dir / f"fresh{i}.key", keys.generate())
            conf.write_text(text.replace('"cl.key"', f'"fresh{i}.key"').replace('state_dir = "cl"',
                                                                                f'state_dir = "fresh{i}"'))
            lab.run(lab.client, *TG, "up", "-c", str(conf), timeout=30)
            try:
                send(lab, lab.client, DESTS[:2], 3)
            finally:
                lab.run(lab.client, *TG, "down", "-c", str(conf), check=False, timeout=30)
        elapsed = time.monotonic() - start
        time.sleep(1)
        got = upstream_bytes(lab)
        budget = STRANGERS_KB_PER_MIN * 1000 * (1 + elapsed / 60)     # a minute's worth + refill
        print(f"10 fresh never-paying keys in {elapsed:.0f} s: upstream saw {got} B "
              f"(strangers' budget {budget:.0f} B; one grace each would be {10 * GRACE_KB * 1000} B)")
        assert 0 < got <= budget + 20 * SLACK, env.logs()
        assert budget < 10 * GRACE_KB * 1000          # the test means something: keys cannot add up
        st = env.status("gw")["market"]["grace"]
        assert st["strangers_used_kb_last_min"] > 0
    finally:
        env.close()
