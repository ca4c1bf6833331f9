"""A market of gateways in real namespaces (topology.market: a client and three gateways on
one LAN, each with its own uplink to one upstream host): the cheapest is chosen, a price
change moves a destination only past the switch margin, a killed gateway's destinations
move on, a gateway that takes money and forwards nothing is abandoned, an advert whose key
never completes a handshake stays unverified and carries nothing."""

import subprocess
import time

import pytest

from market_helpers import POLICY, replies
from tglab.market_env import dump, wait_for
from tglab.topology import market_gateway

UP = market_gateway(1)["upstream"]           # the upstream host, reachable through any gateway
DEST = f"{UP}/32"


def ping(lab, count=5, interval=0.2):
    return lab.run("client", "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", UP,
                   check=False, timeout=count * (interval + 1) + 10)


def moved_events(env) -> list[dict]:
    return [e for e in env.request("client", "events") if e["kind"] == "destination_moved"]


@pytest.mark.root
def test_cheapest_is_chosen_and_a_price_change_moves_only_past_the_margin(market_lab, market):
    env = market({1: "0.5", 2: "0.6", 3: "0.8"}, client_extra=POLICY)
    assert wait_for(lambda: all(g["state"] == "up" for g in env.gateways()) and len(env.gateways()) == 3, 15), \
        dump(env.gateways())
    assert wait_for(lambda: env.carrier() == "gw1", 10), dump(env.gateways())
    assert replies(ping(market_lab).stdout), "no reply through the cheapest gateway"
    assert wait_for(lambda: env.carrier(DEST) == "gw1", 10), dump(env.gateways())
    # 0.7: gw2 (0.6) is cheaper, but by less than the 20 % margin: nothing moves
    env.set_price(1, "0.7")
    assert wait_for(lambda: env.by_label()["gw1"]["price_per_kb"] == env.by_label()["gw2"]["price_per_kb"] * 7 // 6, 10)
    ping(market_lab, count=15)                  # a few probe rounds later
    assert env.carrier(DEST) == "gw1" and env.carrier() == "gw1", dump(env.gateways())
    # 0.9: gw2 is cheaper by more than 20 %: the destination moves, traffic continues
    env.set_price(1, "0.9")
    assert wait_for(lambda: env.carrier(DEST) == "gw2", 15), dump(env.gateways())
    assert replies(ping(market_lab).stdout), "no reply after the move"
    why = [e for e in moved_events(env) if e["destination"] == DEST and "cheaper" in e["reason"]]
    assert why, dump(moved_events(env))


@pytest.mark.root
def test_kill9_of_the_serving_gateway_moves_its_destinations(market_lab, market):
    env = market({1: "0.5", 2: "0.6", 3: "0.8"}, client_extra=POLICY)
    assert wait_for(lambda: env.carrier() == "gw1" and len(env.gateways()) == 3, 15), dump(env.gateways())
    p = market_lab.popen("client", "ping", "-n", "-i", "0.05", "-c", "200", "-W", "1", UP,
                         stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    env.kill9("gw1")
    out, _ = p.communicate(timeout=30)
    got = replies(out)
    assert got and max(got) > 120, out[-2000:]          # replies resumed after the kill (seq ~60)
    gap = max(b - a for a, b in zip(got, got[1:])) * 0.05
    print(f"longest gap without replies: {gap:.2f} s")
    assert gap < 5, out[-2000:]
    assert env.carrier(DEST) == "gw2" and env.by_label()["gw1"]["state"] == "down", dump(env.gateways())


@pytest.mark.root
def test_a_gateway_that_takes_money_and_forwards_nothing_is_abandoned(market_lab, market):
    # gw1 is cheapest, but drops everything it would forward to its uplink
    market_lab.run("gw1", "nft", "-f", "-", input="table inet tgtest {\n chain out {\n  type filter hook forward priority 0;\n"
                   "  oifname \"veth-up\" drop\n }\n}\n")
    env = market({1: "0.5", 2: "0.6"}, client_extra=POLICY)
    assert wait_for(lambda: env.carrier() == "gw1" and len(env.gateways()) == 2, 15), dump(env.gateways())
    ping(market_lab, count=40, interval=0.2)
    gws = env.by_label()
    assert env.carrier(DEST) == "gw2", dump(gws)
    assert gws["gw1"]["record"]["unserved"] >= 1 and gws["gw1"]["verdict"], dump(gws)
    assert gws["gw1"]["record"]["paid"] <= 2, dump(gws)      # abandoned within its contract
    assert replies(ping(market_lab).stdout), "no reply through the next gateway"


@pytest.mark.root
def test_a_gateway_that_leases_another_tunnel_address_carries_with_that_source(market_lab, market):
    # gw2's pool differs: it leases 100.64.1.2, gw1 100.64.0.2; the TUN has the address of
    # whichever handshake completed first, the other's traffic is translated
    env = market({1: "0.5", 2: "0.6"}, client_extra=POLICY, pools={2: "100.64.1.1/24"})
    assert wait_for(lambda: env.carrier() == "gw1" and len(env.gateways()) == 2
                    and all(g["state"] == "up" for g in env.gateways()), 15), dump(env.gateways())
    other = [label for label, g in env.by_label().items() if g["address_ok"] is False]
    assert len(other) == 1, dump(env.gateways())
    own, leased = ("100.64.1.2", "100.64.0.2") if other == ["gw1"] else ("100.64.0.2", "100.64.1.2")

    def rules():
        return market_lab.run("client", "nft", "list", "table", "inet", "tunnelgate_sn_tg0", check=False).stdout

    assert replies(ping(market_lab).stdout), "no reply through the first gateway"
    if other == ["gw1"]:
        assert f"ip saddr set {leased}" in rules() and f"ip daddr set {own}" in rules(), rules()
    env.kill9("gw1")
    got = replies(ping(market_lab, count=30, interval=0.1).stdout)
    assert got and max(got) >= 25, dump(env.gateways())        # replies through gw2 after the kill
    assert env.carrier(DEST) == "gw2", dump(env.gateways())
    if other == ["gw2"]:
        assert f"ip saddr set {leased}" in rules() and f"ip daddr set {own}" in rules(), rules()
    env.tg("client", "down", "-c", str(env.client_conf))
    assert "tunnelgate_sn_tg0" not in market_lab.run("client", "nft", "list", "tables").stdout
